"""A software bus of STS3215 servos behind a pseudo-terminal (run by ``so101-deploy emulate-bus``).

The real ``scservo_sdk`` (and LeRobot) open the pty's slave side like a USB adapter and talk to it
unchanged.  Each servo is an :class:`~so101_deploy.arm.emulated_servo.EmulatedServo` (the STS3215
control table, motion, torque, Homing_Offset, Lock, Operating_Mode, RESET as documented there); six
(ids 1-6) by default, any ids with ``ids`` / ``--ids`` (``--ids 1``: one factory servo, what LeRobot's
``lerobot-setup-motors`` expects to find).  The bus answers PING, READ, WRITE, REG_WRITE/ACTION,
RESET, SYNC_READ and SYNC_WRITE as the firmware does:

* SYNC_READ replies come back in the order of the ID list, all at once (well inside the SDK's ~34 ms
  window); broadcast instructions get no reply except PING (replies in id order); nothing is echoed;
  Response_Status_Level 0 answers only PING and READ; bad checksums are dropped silently.
* A write of ID is answered from the old ID (the reply leaves before the change, as on the servo);
  a write of Baud_Rate is answered at the old speed.
* Baud rate: a servo hears a packet only when the port speed the client set on the pty equals its
  Baud_Rate register, read with LeRobot's table (:data:`~so101_deploy.arm.sts3215.LEROBOT_BAUDRATE_TABLE`:
  0 1M, 1 500k, 2 250k, 3 128k, 4 115200, 5 57600, 6 38400, 7 19200; Feetech's own table has
  76800/57600/38400 at 5-7).  The speed is the pty's termios (``TCGETS2`` on the emulator's own slave
  fd: the termios of a tty is shared by all its fds, so this is what pyserial set, non-standard rates
  such as 128000/250000 included; Linux only -- where the speed cannot be read the check is off and
  ``baud_check`` says so).  A pty carries bytes at any speed, so a mismatch is modelled as the
  servo hearing nothing (no reply, no action), not as garbled bytes.
* Return_Delay_Time (unit 2 us, factory 250 = 0.5 ms; LeRobot writes 0): the reply is sent that
  long after the request (one delay per request: a SYNC_READ or broadcast PING waits the first
  responder's delay, then sends all replies).

Not modelled: the wire itself (timing per byte, half-duplex collisions, two servos with one ID --
the first one answers), garbled bytes at a wrong speed, Operating_Mode 1-3 (rejected, see
:mod:`.emulated_servo`), multi-turn mode (Phase bit 4), real current/temperature/voltage (constant
unless a fault is injected), the torque cut of Unloading_Condition, EEPROM wear, firmware 0x08/0x0A
instructions, a RESET that also resets the ID.

Fault injection (constructor args, :meth:`EmulatedBus.set_faults`, CLI flags), active from
``faults_after_s`` after start, by the servo's current ID: ``drop_rate`` (a reply is lost),
``corrupt_rate`` (a reply's checksum is wrong), ``silent_ids`` (those servos neither answer nor act),
``overload_ids`` (Status bit 5 in every reply and Present_Load high), ``status_bits`` ({id: bits}:
any other Status bits -- voltage 0x01, angle 0x02, overheat 0x04, overcurrent 0x08 -- in every reply;
CLI ``--voltage-id/--angle-id/--overheat-id``).  Randomness is seeded (``seed``) so a run reproduces.

``log_path``: one JSON line per accepted register write
``{"t": unix_s, "id", "address", "name", "value" (decoded, signed), "inst"}`` -- sync writes and the
registers a RESET changed (``"inst": "reset"``) too; a rejected write (Operating_Mode other than 0)
is a line with ``"rejected": reason``.  ``id`` is the servo's ID when the packet arrived.

In-process use (the simulated arm): ``EmulatedBus(link, calibration, external_motion=True)``;
the simulator reads :meth:`EmulatedBus.goal_steps` / :meth:`EmulatedBus.torque_enabled` and
feeds back :meth:`EmulatedBus.set_present_steps`.  Their keys are the servos' IDs at start (their
places on the bus), which an ID write does not change.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import select
import struct
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Iterable, Mapping

from so101_deploy.arm import sts3215 as sts
from so101_deploy.arm.calibration import Calibration
from so101_deploy.arm.emulated_servo import EmulatedServo

DEFAULT_IDS = (1, 2, 3, 4, 5, 6)
DEFAULT_MAX_SPEED_SPS = 3000.0  # ~ the STS3215's no-load speed (45 rpm)

_RESPONSE_LEVEL = sts.REGISTERS["Response_Status_Level"]
_RETURN_DELAY = sts.REGISTERS["Return_Delay_Time"]
_TCGETS2 = 0x802C542A  # Linux x86/ARM: _IOR('T', 0x2A, struct termios2), 44 bytes; c_ospeed at offset 40
_B_CONSTANTS = {getattr(termios, f"B{b}"): b for b in (1_000_000, 500_000, 115_200, 57_600, 38_400, 19_200, 9600,
                                                        4800) if hasattr(termios, f"B{b}")}


def pty_baudrate(fd: int) -> int | None:
    """The speed (bit/s) set on the tty behind ``fd`` (any fd of it: termios is per tty), or None when
    it cannot be read (not Linux, or a non-standard rate without TCGETS2)."""
    try:
        buf = fcntl.ioctl(fd, _TCGETS2, bytes(44))
        return struct.unpack_from("I", buf, 40)[0]
    except OSError:
        pass
    try:
        return _B_CONSTANTS.get(termios.tcgetattr(fd)[5])
    except termios.error:
        return None


def _check_bits(status_bits: Mapping[int, int]) -> dict[int, int]:
    out = {}
    for i, bits in status_bits.items():
        if not 0 <= int(bits) <= sts.ERR_MAX:
            raise ValueError(f"EmulatedBus: status bits of id {i} must be in 0..{sts.ERR_MAX:#x} (the SDK rejects "
                             f"more), got {bits:#x}")
        out[int(i)] = int(bits)
    return out


class EmulatedBus:
    """Six (by default) emulated STS3215 on one pty; thread-safe accessors for a simulator."""

    def __init__(self, link_path: str | os.PathLike | None = None, calibration: Calibration | str | None = None,
                 external_motion: bool = False, ids: Iterable[int] = DEFAULT_IDS,
                 max_speed_sps: float = DEFAULT_MAX_SPEED_SPS, drop_rate: float = 0.0, corrupt_rate: float = 0.0,
                 silent_ids: Iterable[int] = (), overload_ids: Iterable[int] = (), seed: int = 0,
                 faults_after_s: float = 0.0, log_path: str | os.PathLike | None = None,
                 initial_steps: Mapping[int, float] | None = None, status_bits: Mapping[int, int] | None = None):
        for name, rate in (("drop_rate", drop_rate), ("corrupt_rate", corrupt_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"EmulatedBus: {name} must be a probability in [0, 1], got {rate}")
        if max_speed_sps <= 0:
            raise ValueError(f"EmulatedBus: max_speed_sps must be > 0, got {max_speed_sps}")
        self.link_path = Path(link_path) if link_path else None
        self.external_motion = external_motion
        self.max_speed_sps = float(max_speed_sps)
        self.drop_rate, self.corrupt_rate = float(drop_rate), float(corrupt_rate)
        self.silent_ids, self.overload_ids = set(silent_ids), set(overload_ids)
        self.status_bits = _check_bits(status_bits or {})
        self.faults_after_s = float(faults_after_s)
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self.servos: dict[int, EmulatedServo] = {}
        if isinstance(calibration, (str, os.PathLike)):
            calibration = Calibration.load(calibration)
        for i in ids:
            self.servos[i] = EmulatedServo(i)
        if calibration is not None:
            # what LeRobot writes to the motors at calibration: offsets and range limits (persisted)
            for m in calibration.motors:
                s = self.servos.get(m.id)
                if s is None:
                    continue
                s.set("Homing_Offset", m.homing_offset)
                s.set("Min_Position_Limit", m.range_min)
                s.set("Max_Position_Limit", m.range_max)
                s.persisted_eeprom = bytes(s.mem[: sts.EEPROM_END])
                s.set_present((m.range_min + m.range_max) / 2.0)  # rest at mid-range (0 rad)
                s.target = s.present()
        for i, steps in (initial_steps or {}).items():
            self.servos[i].set_present(steps)
            self.servos[i].target = self.servos[i].present()
        self._log_path = Path(log_path) if log_path else None
        self._log = None
        self._master = self._slave = -1
        self.port: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._t_last = time.monotonic()
        self._t_start = time.monotonic()
        self.counters = {"packets": 0, "bad_checksum": 0, "dropped": 0, "corrupted": 0, "writes": 0,
                         "rejected": 0, "wrong_baud": 0}
        self.baud_check = False  # True once the pty's speed could be read (see module doc)

    # --- life cycle ---------------------------------------------------------------------------------
    def start(self) -> "EmulatedBus":
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # raw before the client opens it; the slave fd stays open (no EIO)
        self.port = os.ttyname(self._slave)
        if self.link_path is not None:
            if self.link_path.is_symlink() or self.link_path.exists():
                if not self.link_path.is_symlink():
                    raise FileExistsError(f"{self.link_path} exists and is not a symlink; refusing to replace it")
                self.link_path.unlink()  # a stale link from an earlier run
            self.link_path.parent.mkdir(parents=True, exist_ok=True)
            self.link_path.symlink_to(self.port)
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self._log_path, "a", buffering=1)
        self._t_last = self._t_start = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="emulated-sts3215-bus", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1
        if self.link_path is not None and self.link_path.is_symlink() and self.port and \
                os.readlink(self.link_path) == self.port:
            self.link_path.unlink()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "EmulatedBus":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def path(self) -> str:
        """What a client opens: the link if one was asked for, else the pty's slave name."""
        return str(self.link_path) if self.link_path is not None else str(self.port)

    # --- simulator / test API (thread-safe) ---------------------------------------------------------
    def goal_steps(self) -> dict[int, int]:
        """The position each servo is driving to (present frame; equals present while torque is off)."""
        with self._lock:
            self._advance()
            return {i: int(round(s.target)) for i, s in self.servos.items()}

    def torque_enabled(self) -> dict[int, bool]:
        with self._lock:
            return {i: s.torque_on for i, s in self.servos.items()}

    def set_present_steps(self, steps: Mapping[int, float]) -> None:
        """Move the joints (``external_motion``: the simulator is the physics)."""
        with self._lock:
            for i, v in steps.items():
                self.servos[i].set_present(v)

    def register(self, servo_id: int, name: str) -> int:
        with self._lock:
            self._advance()
            s = self.servos[servo_id]
            s.refresh_read_only()
            return s.get(name)

    def plug(self, ids: Iterable[int] = (1,)) -> None:
        """Unplug every servo and plug in fresh factory ones with these IDs (as a person does between
        the steps of ``lerobot-setup-motors``)."""
        with self._lock:
            self.servos = {i: EmulatedServo(i) for i in ids}

    def set_faults(self, *, drop_rate: float | None = None, corrupt_rate: float | None = None,
                   silent_ids: Iterable[int] | None = None, overload_ids: Iterable[int] | None = None,
                   status_bits: Mapping[int, int] | None = None) -> None:
        """Change the faults (None keeps one); ``status_bits`` {id: bits} replaces the injected Status bits."""
        with self._lock:
            if status_bits is not None:
                self.status_bits = _check_bits(status_bits)
            if drop_rate is not None:
                self.drop_rate = float(drop_rate)
            if corrupt_rate is not None:
                self.corrupt_rate = float(corrupt_rate)
            if silent_ids is not None:
                self.silent_ids = set(silent_ids)
            if overload_ids is not None:
                self.overload_ids = set(overload_ids)

    # --- protocol -----------------------------------------------------------------------------------
    def _faults_active(self) -> bool:
        return time.monotonic() - self._t_start >= self.faults_after_s

    def _advance(self) -> None:
        now = time.monotonic()
        dt, self._t_last = now - self._t_last, now
        faults = self._faults_active()
        for s in self.servos.values():
            bits = self.status_bits.get(s.id, 0) if faults else 0
            s.overload = faults and (s.id in self.overload_ids or bool(bits & sts.ERR_OVERLOAD))
            s.fault_bits = bits & ~sts.ERR_OVERLOAD
            if not self.external_motion:
                s.advance(dt, self.max_speed_sps)
            elif not s.torque_on:
                s.target = s.present()

    def _hears(self, s: EmulatedServo, port_baud: int | None) -> bool:
        if port_baud is not None and s.baudrate != port_baud:
            self.counters["wrong_baud"] += 1  # this servo missed a packet sent at another speed
            return False
        return not (s.id in self.silent_ids and self._faults_active())

    def _servo(self, servo_id: int, port_baud: int | None = None) -> EmulatedServo | None:
        """The servo that listens to ``servo_id`` (ids can be rewritten) at this port speed (None: any),
        unless it is silenced."""
        for s in self.servos.values():
            if s.id == servo_id:
                return s if self._hears(s, port_baud) else None
        return None

    def _reply(self, s: EmulatedServo, params=(), reply_id: int | None = None) -> bytes:
        s.refresh_read_only()
        servo_id = s.id if reply_id is None else reply_id
        pkt = bytearray(sts.status(servo_id, s.mem[sts.REGISTERS["Status"].address], params))
        if self._faults_active():
            if self.drop_rate and self._rng.random() < self.drop_rate:
                self.counters["dropped"] += 1
                return b""
            if self.corrupt_rate and self._rng.random() < self.corrupt_rate:
                self.counters["corrupted"] += 1
                pkt[-1] ^= 0x5A
        return bytes(pkt)

    def _log_writes(self, servo_id: int, writes, inst: str, rejected=()) -> None:
        self.counters["writes"] += len(writes)
        self.counters["rejected"] += len(rejected)
        if self._log is None:
            return
        t = time.time()
        for address, name, value in writes:
            self._log.write(json.dumps({"t": t, "id": servo_id, "address": address, "name": name,
                                        "value": value, "inst": inst}) + "\n")
        for address, name, value, why in rejected:
            self._log.write(json.dumps({"t": t, "id": servo_id, "address": address, "name": name,
                                        "value": value, "inst": inst, "rejected": why}) + "\n")

    def _write(self, s: EmulatedServo, address: int, data: bytes, inst: str) -> None:
        servo_id = s.id
        writes = s.write(address, data)
        self._log_writes(servo_id, writes, inst, s.rejected)

    def handle(self, pkt: sts.Packet, port_baud: int | None = None) -> bytes:
        """One instruction packet -> the bytes the bus sends back (possibly none).  ``port_baud``: the
        speed the packet came at (None: every servo hears it)."""
        return self._handle(pkt, port_baud)[0]

    def _handle(self, pkt: sts.Packet, port_baud: int | None) -> tuple[bytes, float]:
        """-> (reply bytes, seconds to wait before sending them: the Return_Delay_Time)."""
        with self._lock:
            self.counters["packets"] += 1
            if not pkt.checksum_ok:
                self.counters["bad_checksum"] += 1
                return b"", 0.0
            self._advance()
            inst, p = pkt.code, pkt.params
            if pkt.servo_id == sts.BROADCAST_ID:
                return self._broadcast(inst, p, port_baud)
            s = self._servo(pkt.servo_id, port_baud)
            if s is None:
                return b"", 0.0
            delay = s.mem[_RETURN_DELAY.address] * 2e-6
            reply_id = s.id  # the reply leaves before an ID write takes effect
            answers_all = s.mem[_RESPONSE_LEVEL.address] != 0
            if inst == sts.PING:
                return self._reply(s), delay
            if inst == sts.READ:
                if len(p) != 2 or p[0] >= sts.TABLE_END:
                    return b"", 0.0
                s.refresh_read_only()
                end = min(p[0] + p[1], sts.TABLE_END)
                return self._reply(s, bytes(s.mem[p[0]:end])), delay
            if inst in (sts.WRITE, sts.REG_WRITE):
                if len(p) < 2 or p[0] >= sts.TABLE_END:
                    return b"", 0.0
                if inst == sts.WRITE:
                    self._write(s, p[0], p[1:], "write")
                else:
                    s.pending = (p[0], bytes(p[1:]))
                    s.mem[sts.REGISTERS["Async_Write_Flag"].address] = 1
                return (self._reply(s, reply_id=reply_id) if answers_all else b""), delay
            if inst == sts.ACTION:
                self._action(s)
                return (self._reply(s, reply_id=reply_id) if answers_all else b""), delay
            if inst == sts.RESET:
                self._log_writes(reply_id, s.factory_reset(), "reset")
                return (self._reply(s, reply_id=reply_id) if answers_all else b""), delay
            return b"", 0.0  # unknown instruction: ignored, like the firmware

    def _action(self, s: EmulatedServo) -> None:
        if s.pending is not None:
            address, data = s.pending
            s.pending = None
            s.mem[sts.REGISTERS["Async_Write_Flag"].address] = 0
            self._write(s, address, data, "action")

    def _broadcast(self, inst: int, p: bytes, port_baud: int | None) -> tuple[bytes, float]:
        listening = [s for s in self.servos.values() if self._hears(s, port_baud)]
        if inst == sts.PING:  # the one broadcast that is answered; staggered by id -> id order
            responders = sorted(listening, key=lambda s: s.id)
            delay = responders[0].mem[_RETURN_DELAY.address] * 2e-6 if responders else 0.0
            return b"".join(self._reply(s) for s in responders), delay
        if inst == sts.ACTION:
            for s in listening:
                self._action(s)
        elif inst == sts.RESET:
            for s in listening:
                servo_id = s.id
                self._log_writes(servo_id, s.factory_reset(), "reset")
        elif inst == sts.WRITE and len(p) >= 2:
            for s in listening:
                self._write(s, p[0], p[1:], "write")
        elif inst == sts.SYNC_WRITE and len(p) >= 2:
            address, size = p[0], p[1]
            body = p[2:]
            for k in range(0, len(body) - size, size + 1):
                s = self._servo(body[k], port_baud)
                if s is not None:
                    self._write(s, address, body[k + 1: k + 1 + size], "sync_write")
        elif inst == sts.SYNC_READ and len(p) >= 2:
            address, size = p[0], p[1]
            if address >= sts.TABLE_END:
                return b"", 0.0
            out, delay = [], None
            for servo_id in p[2:]:  # replies in the order of the ID list
                s = self._servo(servo_id, port_baud)
                if s is None:
                    continue  # a gap: the SDK times out waiting for this id
                if delay is None:
                    delay = s.mem[_RETURN_DELAY.address] * 2e-6
                s.refresh_read_only()
                out.append(self._reply(s, bytes(s.mem[address: min(address + size, sts.TABLE_END)])))
            return b"".join(out), delay or 0.0
        return b"", 0.0

    # --- pty loop -----------------------------------------------------------------------------------
    def port_baudrate(self) -> int | None:
        """The speed the client set on the pty (bit/s), None when it cannot be read or no pty is open."""
        return pty_baudrate(self._slave) if self._slave >= 0 else None

    def _serve(self) -> None:
        reader = sts.PacketReader()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                time.sleep(0.01)
                continue
            port_baud = self.port_baudrate()
            self.baud_check = port_baud is not None
            for pkt in reader.feed(data):
                reply, delay_s = self._handle(pkt, port_baud)
                if reply:
                    if delay_s > 0:
                        time.sleep(delay_s)
                    try:
                        os.write(self._master, reply)
                    except OSError:
                        pass
