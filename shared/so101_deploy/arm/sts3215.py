"""The Feetech STS3215 as software sees it: control table, sign-magnitude fields, packets.

Shared by the software bus (:mod:`so101_deploy.arm.emulator`), the ``scservo_sdk`` client
(:mod:`so101_deploy.arm.servo_bus`) and the tests, so all three agree on one description of the servo.

Wire format (Feetech protocol "0", Dynamixel-1.0-like, little-endian words on STS):
instruction ``FF FF ID LEN INST P1..Pn CHK`` and status ``FF FF ID LEN ERR P1..Pn CHK`` with
``LEN = n + 2`` and ``CHK = ~(ID + LEN + INST|ERR + sum(P)) & 0xFF``.

Register names follow LeRobot's ``STS_SMS_SERIES_CONTROL_TABLE`` so a calibration or a log
line reads the same in both projects.  Position is 4096 steps per turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

MODEL_NUMBER = 777  # STS3215
STEPS_PER_TURN = 4096
MAX_STEP = STEPS_PER_TURN - 1
BROADCAST_ID = 0xFE
MAX_SERVO_ID = 0xFD
DEFAULT_BAUDRATE = 1_000_000

# instructions (RESET 0x06 = factory reset, which scservo_sdk 1.0.0 has no constant for)
PING, READ, WRITE, REG_WRITE, ACTION, RESET = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
SYNC_READ, SYNC_WRITE = 0x82, 0x83

# status (ERR) byte bits = the Status register (addr 65): 0x01 voltage, 0x02 angle sensor, 0x04 overheat,
# 0x08 overcurrent, 0x20 overload; the SDK rejects ERR > 0x7F.  servo_bus.STATUS_BITS names them all.
ERR_VOLTAGE, ERR_ANGLE, ERR_OVERHEAT, ERR_OVERCURRENT, ERR_OVERLOAD = 0x01, 0x02, 0x04, 0x08, 0x20
ERR_MAX = 0x7F

# Baud_Rate register (addr 6) index <-> bit/s as LeRobot 0.6.1 has it (STS_SMS_SERIES_BAUDRATE_TABLE).
# Feetech's own tables (sms_sts.py, feetech-cli) say 5 = 76800, 6 = 57600, 7 = 38400: LeRobot's 5-7 differ,
# harmless at the 1 Mbps default.  The software bus follows LeRobot's table.
LEROBOT_BAUDRATE_TABLE = {1_000_000: 0, 500_000: 1, 250_000: 2, 128_000: 3, 115_200: 4, 57_600: 5, 38_400: 6,
                          19_200: 7}
BAUDRATE_OF_INDEX = {index: baud for baud, index in LEROBOT_BAUDRATE_TABLE.items()}
FEETECH_BAUDRATE_OF_INDEX = {0: 1_000_000, 1: 500_000, 2: 250_000, 3: 128_000, 4: 115_200, 5: 76_800, 6: 57_600,
                             7: 38_400}

OPERATING_MODES = {0: "position", 1: "velocity", 2: "PWM", 3: "step"}

EEPROM_END = 40  # addresses < 40 are EEPROM (persisted only while Lock == 0)
TABLE_END = 87  # one past the last address (86); reads/writes beyond it are not answered


@dataclass(frozen=True)
class Register:
    name: str
    address: int
    size: int  # bytes, 1 or 2
    sign_bit: int | None = None  # sign-magnitude fields: index of the sign bit
    read_only: bool = False
    default: int = 0  # factory value of an STS3215 (12 V follower), raw (encoded) form


_REGISTERS = (
    Register("Firmware_Major_Version", 0, 1, read_only=True, default=3),
    Register("Firmware_Minor_Version", 1, 1, read_only=True, default=10),
    Register("Model_Number", 3, 2, read_only=True, default=MODEL_NUMBER),
    Register("ID", 5, 1, default=1),
    Register("Baud_Rate", 6, 1, default=0),
    Register("Return_Delay_Time", 7, 1, default=250),
    Register("Response_Status_Level", 8, 1, default=1),
    Register("Min_Position_Limit", 9, 2, default=0),
    Register("Max_Position_Limit", 11, 2, default=MAX_STEP),
    Register("Max_Temperature_Limit", 13, 1, default=70),
    Register("Max_Voltage_Limit", 14, 1, default=140),
    Register("Min_Voltage_Limit", 15, 1, default=40),
    Register("Max_Torque_Limit", 16, 2, default=1000),
    Register("Phase", 18, 1, default=12),
    Register("Unloading_Condition", 19, 1, default=44),
    Register("LED_Alarm_Condition", 20, 1, default=47),
    Register("P_Coefficient", 21, 1, default=32),
    Register("D_Coefficient", 22, 1, default=32),
    Register("I_Coefficient", 23, 1, default=0),
    Register("Minimum_Startup_Force", 24, 2, default=16),
    Register("CW_Dead_Zone", 26, 1, default=1),
    Register("CCW_Dead_Zone", 27, 1, default=1),
    Register("Protection_Current", 28, 2, default=310),
    Register("Angular_Resolution", 30, 1, default=1),
    Register("Homing_Offset", 31, 2, sign_bit=11, default=0),
    Register("Operating_Mode", 33, 1, default=0),
    Register("Protective_Torque", 34, 1, default=20),
    Register("Protection_Time", 35, 1, default=200),
    Register("Overload_Torque", 36, 1, default=80),
    Register("Velocity_closed_loop_P_proportional_coefficient", 37, 1, default=10),
    Register("Over_Current_Protection_Time", 38, 1, default=200),
    Register("Velocity_closed_loop_I_integral_coefficient", 39, 1, default=200),
    Register("Torque_Enable", 40, 1, default=0),
    Register("Acceleration", 41, 1, default=0),
    Register("Goal_Position", 42, 2, sign_bit=15, default=0),
    Register("Goal_Time", 44, 2, default=0),
    Register("Goal_Velocity", 46, 2, sign_bit=15, default=0),
    Register("Torque_Limit", 48, 2, default=1000),
    Register("Lock", 55, 1, default=1),
    Register("Present_Position", 56, 2, sign_bit=15, read_only=True),
    Register("Present_Velocity", 58, 2, sign_bit=15, read_only=True),
    Register("Present_Load", 60, 2, sign_bit=10, read_only=True),
    Register("Present_Voltage", 62, 1, read_only=True, default=120),
    Register("Present_Temperature", 63, 1, read_only=True, default=30),
    Register("Async_Write_Flag", 64, 1, read_only=True),
    Register("Status", 65, 1, read_only=True),
    Register("Moving", 66, 1, read_only=True),
    Register("Present_Goal", 67, 2, sign_bit=15, read_only=True),
    Register("Present_Current", 69, 2, sign_bit=15, read_only=True),
    Register("Goal_Position_2", 71, 2, read_only=True),
    Register("Moving_Velocity", 80, 1, default=1),
    Register("Moving_Velocity_Threshold", 80, 1, default=1),
    Register("DTs", 81, 1, default=50),
    Register("Velocity_Unit_factor", 82, 1, default=1),
    Register("Hts", 83, 1, default=20),
    Register("Maximum_Velocity_Limit", 84, 1, default=254),
    Register("Maximum_Acceleration", 85, 1, default=254),
    Register("Acceleration_Multiplier", 86, 1, default=0),
)

REGISTERS: dict[str, Register] = {r.name: r for r in _REGISTERS}
# first name wins for aliases sharing an address (80)
REGISTER_AT: dict[int, Register] = {}
for _r in _REGISTERS:
    REGISTER_AT.setdefault(_r.address, _r)
del _r


def register(name: str) -> Register:
    try:
        return REGISTERS[name]
    except KeyError:
        raise KeyError(f"unknown STS3215 register {name!r}; known: {sorted(REGISTERS)}") from None


# --- sign-magnitude ----------------------------------------------------------------------------

def encode_sign_magnitude(value: int, sign_bit: int) -> int:
    """Signed int -> the servo's sign-magnitude form (sign in bit ``sign_bit``, magnitude below it)."""
    value = int(value)
    max_magnitude = (1 << sign_bit) - 1
    if abs(value) > max_magnitude:
        raise ValueError(f"magnitude {abs(value)} exceeds {max_magnitude} (sign bit {sign_bit})")
    return ((1 << sign_bit) | -value) if value < 0 else value


def decode_sign_magnitude(raw: int, sign_bit: int) -> int:
    """The servo's sign-magnitude form -> signed int (bits above the sign bit are ignored)."""
    raw = int(raw)
    magnitude = raw & ((1 << sign_bit) - 1)
    return -magnitude if (raw >> sign_bit) & 1 else magnitude


def encode_value(reg: Register, value: int) -> int:
    """A register's signed/unsigned value -> the raw integer stored in its bytes."""
    if reg.sign_bit is not None:
        return encode_sign_magnitude(value, reg.sign_bit)
    value = int(value)
    if not 0 <= value < (1 << (8 * reg.size)):
        raise ValueError(f"{reg.name}: {value} does not fit in {reg.size} unsigned byte(s)")
    return value


def decode_value(reg: Register, raw: int) -> int:
    return decode_sign_magnitude(raw, reg.sign_bit) if reg.sign_bit is not None else int(raw)


def to_bytes(raw: int, size: int) -> list[int]:
    """Little-endian bytes of a raw register value (STS/SMS byte order)."""
    return [(int(raw) >> (8 * i)) & 0xFF for i in range(size)]


def from_bytes(data) -> int:
    return sum(int(b) << (8 * i) for i, b in enumerate(data))


# --- packets -----------------------------------------------------------------------------------

def checksum(body) -> int:
    """``~(ID + LEN + INST/ERR + params) & 0xFF`` over the bytes after the FF FF header."""
    return ~sum(body) & 0xFF


def build_packet(servo_id: int, code: int, params=()) -> bytes:
    """An instruction (code = instruction) or status (code = ERR byte) packet with its checksum."""
    params = list(params)
    body = [servo_id & 0xFF, len(params) + 2, code & 0xFF] + params
    return bytes([0xFF, 0xFF] + body + [checksum(body)])


def instruction(servo_id: int, inst: int, params=()) -> bytes:
    return build_packet(servo_id, inst, params)


def status(servo_id: int, error: int, params=()) -> bytes:
    if not 0 <= error <= 0x7F:
        raise ValueError(f"status ERR byte must be 0..0x7F (the SDK rejects more), got {error:#x}")
    return build_packet(servo_id, error, params)


@dataclass(frozen=True)
class Packet:
    servo_id: int
    code: int  # instruction (instruction packets) or ERR byte (status packets)
    params: bytes
    checksum_ok: bool

    @property
    def raw(self) -> bytes:
        return build_packet(self.servo_id, self.code, self.params)


class PacketReader:
    """Reassembles packets from a byte stream (a serial port delivers them in arbitrary chunks).

    Syncs on ``FF FF``; a LEN < 2 drops the header and resyncs, like the servo firmware.  Packets
    with a bad checksum are returned with ``checksum_ok=False`` so the caller decides (the servo
    drops them silently).
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Packet]:
        self._buf.extend(data)
        while True:
            start = self._buf.find(b"\xff\xff")
            if start < 0:
                # keep a trailing FF: it may be the first half of a header
                del self._buf[: max(0, len(self._buf) - 1)]
                return
            # FF FF FF ...: the header is the last pair of a run of FFs (an ID is never 0xFF)
            while start + 2 < len(self._buf) and self._buf[start + 2] == 0xFF:
                start += 1
            del self._buf[:start]
            if len(self._buf) < 4:
                return
            length = self._buf[3]
            if length < 2:
                del self._buf[:2]
                continue
            total = length + 4
            if len(self._buf) < total:
                return
            pkt = bytes(self._buf[:total])
            del self._buf[:total]
            body = pkt[2:-1]
            yield Packet(pkt[2], pkt[4], pkt[5:-1], checksum(body) == pkt[-1])

    def pending(self) -> int:
        return len(self._buf)


def parse_packets(data: bytes) -> list[Packet]:
    """All complete packets in ``data`` (a convenience for tests and tools)."""
    return list(PacketReader().feed(data))
