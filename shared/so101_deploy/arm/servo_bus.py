"""The SO-101's six STS3215 through ``scservo_sdk`` (feetech-servo-sdk 1.0.0), in radians.

:class:`ServoBus` opens the serial port at 1 Mbps, checks that servos 1-6 answer with model 777
(handshake), configures them as LeRobot's ``SO101Follower`` does, sync-reads the present state
(with retries; every failed attempt counted by kind), sync-writes goal positions, and switches
torque.  Angles go through :class:`~so101_deploy.arm.calibration.Calibration`.

Robustness beyond the stock SDK:

* The stock ``PortHandler.clearPort`` only flushes output, so the rest of a failed SYNC_READ's
  replies would be taken as answers to the next request; :class:`PortHandler` also discards
  pending input (as Feetech's newer SDK does).
* A SYNC_READ stops at the first servo that does not answer; the attempts of one read are merged
  (each servo's data is kept from the attempt that got it) so one lost reply does not lose the
  whole arm.  A servo that misses ``absent_after`` reads in a row is taken out of the sync read
  (it would cost a ~35 ms timeout on every read) and probed again every ``probe_interval_s``;
  its last value is reported as stale (``Reading.missing_ids``).
* The reply window is LeRobot's 50 ms instead of the stock 34 ms.
* The SDK busy-polls the port while waiting for a reply; empty polls sleep 0.1 ms instead.
* Torque release first broadcasts Torque_Enable=0 (one packet reaches every servo, no reply to
  lose), then writes and confirms it per servo.
* Every exchange of the start-up (ping, configure writes and reads) is retried with a short
  backoff; an exception inside ``scservo_sdk`` (an ``IndexError`` on a stale or short reply) counts
  as a failed try, and the last error is named when all tries failed.
* The status byte of every servo read (the Status register, which the servo also sends as the ERR
  byte of each reply) is decoded into named bits (:data:`STATUS_BITS`: voltage, angle, overheat,
  current, overload): ``Reading.status_errors``.
* A port that stops working (unplugged adapter, stopped emulator) raises :class:`ServoPortError`,
  so the caller can tell it from a servo that does not answer.
"""

from __future__ import annotations

import collections
import contextlib
import termios
import time
from dataclasses import dataclass, field

import numpy as np
import scservo_sdk as scs
import serial

from so101_deploy.arm import sts3215 as sts
from so101_deploy.arm.sdk_port import REPLY_WINDOW_MS, PortHandler
from so101_deploy.arm.calibration import Calibration
from so101_deploy.core.messages import JOINT_NAMES, N_JOINTS

READ_START = sts.REGISTERS["Present_Position"].address  # 56
READ_LENGTH = sts.REGISTERS["Status"].address + 1 - READ_START  # 56..65: position .. Status (10 bytes)
GOAL = sts.REGISTERS["Goal_Position"]

# LeRobot SO101Follower.configure() values (v0.6.1)
CONFIGURE_ALL = (("Return_Delay_Time", 0), ("Maximum_Acceleration", 254), ("Acceleration", 254))
CONFIGURE_PID = (("Operating_Mode", 0), ("P_Coefficient", 16), ("I_Coefficient", 0), ("D_Coefficient", 32))
CONFIGURE_GRIPPER = (("Max_Torque_Limit", 500), ("Protection_Current", 250), ("Overload_Torque", 25))
PHASE_MULTI_TURN_BIT = 0x10
RETRY_BACKOFF_S = 0.02  # the first pause between two tries of a start-up exchange; doubles, at most 0.2 s
RETRY_BACKOFF_MAX_S = 0.2

# The Status register (address 65) = the ERR byte of every reply: bit 0 input voltage, bit 1 angle
# (magnetic encoder), bit 2 overheat, bit 3 over-current, bit 5 overload (the SDK's ERRBIT_* and the
# Feetech memory table agree; bits 4, 6 and 7 are reserved).  Reserved bits are reported as "bit<n>".
STATUS_BITS = {"voltage": 0x01, "angle": 0x02, "overheat": 0x04, "current": 0x08, "overload": 0x20}


def decode_status(byte: int) -> list[str]:
    """The names of the bits set in a status byte, lowest bit first (``[]`` when the servo is fine)."""
    names = {bit: name for name, bit in STATUS_BITS.items()}
    return [names.get(1 << n, f"bit{n}") for n in range(8) if byte & (1 << n)]


class ServoBusError(RuntimeError):
    """The bus cannot be used: port missing, servos not answering, wrong model, a write not acknowledged."""


class ServoPortError(ServoBusError):
    """The port itself does not work (any more): unplugged, the emulator stopped, or not open."""


@dataclass
class Reading:
    """One read of the arm.  ``steps``/``positions_rad`` hold the last known value of missing servos."""

    steps: np.ndarray  # (6,) int64, Present_Position
    positions_rad: np.ndarray  # (6,)
    load: np.ndarray  # (6,) Present_Load, 0.1 % PWM, signed
    status: dict[int, int]  # id -> Status register (error bits), servos read in this read only
    missing_ids: list[int]  # servos with no fresh data in this read
    overload_ids: list[int]
    attempts: int
    failed_attempts: int
    read_ms: float
    stamp_s: float  # time.monotonic() at the end of the read
    fresh: np.ndarray = field(default_factory=lambda: np.ones(N_JOINTS, bool))  # (6,) per joint

    @property
    def ok(self) -> bool:
        return not self.missing_ids

    @property
    def status_errors(self) -> dict[int, list[str]]:
        """id -> the names of its status bits set (:data:`STATUS_BITS`), servos with any bit set only."""
        return {i: decode_status(s) for i, s in sorted(self.status.items()) if s}


class ServoBus:
    def __init__(self, port: str, calibration: Calibration, baudrate: int = sts.DEFAULT_BAUDRATE,
                 read_retries: int = 2, write_retries: int = 3, absent_after: int = 5,
                 probe_interval_s: float = 0.5, reply_window_ms: float = REPLY_WINDOW_MS,
                 retry_backoff_s: float = RETRY_BACKOFF_S):
        if read_retries < 0 or write_retries < 0:
            raise ValueError("ServoBus: retries must be >= 0")
        if not 1.0 <= reply_window_ms <= 1000.0:
            raise ValueError(f"ServoBus: reply_window_ms must be in [1, 1000] ms, got {reply_window_ms}")
        self.reply_window_ms = float(reply_window_ms)
        self.port_name = str(port)
        self.calibration = calibration
        self.ids = [int(i) for i in calibration.ids]
        self.names = dict(zip(self.ids, JOINT_NAMES))
        self.baudrate = baudrate
        self.read_retries = read_retries
        self.write_retries = write_retries
        self.absent_after = absent_after
        self.probe_interval_s = probe_interval_s
        self.retry_backoff_s = float(retry_backoff_s)
        self.errors = collections.Counter()  # kind -> count, e.g. "read_timeout", "read_corrupt"
        self.reads = 0
        self._port: PortHandler | None = None
        self._ph = scs.PacketHandler(0)  # protocol 0: STS/SMS, little-endian words
        self._last_steps = np.zeros(N_JOINTS, np.int64)
        self._have_steps = np.zeros(N_JOINTS, bool)
        self._miss_streak = dict.fromkeys(self.ids, 0)
        self._absent: dict[int, float] = {}  # id -> time of the next probe
        self._sync_read: scs.GroupSyncRead | None = None
        self._sync_ids: list[int] = []

    # --- connection -------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._port is not None and self._port.is_open

    def connect(self, handshake: bool = True) -> None:
        port = PortHandler(self.port_name)
        port.reply_window_ms = self.reply_window_ms
        try:
            opened = port.openPort() and port.setBaudRate(self.baudrate)
        except Exception as e:  # noqa: BLE001 - pyserial raises SerialException/OSError/ValueError
            raise ServoPortError(f"cannot open servo bus port {self.port_name!r}: {e} (is the adapter plugged in, "
                                f"or `so101-deploy emulate-bus --link {self.port_name}` running?)") from None
        if not opened:
            raise ServoPortError(f"cannot open servo bus port {self.port_name!r} at {self.baudrate} bit/s")
        self._port = port
        self._sync_read, self._sync_ids = None, []  # a new port: nothing of the old one carries over
        self._miss_streak = dict.fromkeys(self.ids, 0)
        self._absent.clear()
        if handshake:
            try:
                self.handshake()
            except Exception:
                self.close(release_torque=False)
                raise

    @contextlib.contextmanager
    def _port_errors(self, what: str):
        """An unplugged adapter (or a stopped emulator) surfaces as OSError/termios/serial errors."""
        try:
            yield
        except (OSError, termios.error, serial.SerialException) as e:
            self.errors["port_error"] += 1
            raise ServoPortError(f"servo bus {self.port_name}: {what} failed, the port does not work any more "
                                f"({e}) -- unplugged or powered off?") from None

    def _idle_port(self) -> PortHandler:
        if self._port is None or not self._port.is_open:
            raise ServoPortError(f"servo bus {self.port_name!r} is not open (call connect() first)")
        self._port.is_using = False  # an exchange cut short (signal) must not leave the SDK "busy"
        return self._port

    def _backoff(self, failed_tries: int) -> None:
        """The pause before the next try of an exchange that failed ``failed_tries`` times (>= 1)."""
        if self.retry_backoff_s > 0:
            time.sleep(min(self.retry_backoff_s * 2 ** (failed_tries - 1), RETRY_BACKOFF_MAX_S))

    def _exchange(self, what: str, call, tries: int, result_at: int, kind: str, size: int | None = None):
        """``call(port)`` (one scservo_sdk exchange returning a tuple whose item ``result_at`` is the
        COMM result, and whose first item is the data when ``size`` is given) up to ``tries`` times
        with the backoff, until it succeeds.

        Returns ``(result, None)`` or ``(None, last error text)``.  A port error raises
        :class:`ServoPortError` at once (retrying a dead port is pointless); any other exception inside
        the SDK (an ``IndexError`` on a short or stale reply) counts as a failed try."""
        last = "no try"
        for n in range(tries):
            if n:
                self._backoff(n)
            try:
                with self._port_errors(what):
                    out = call(self._idle_port())
            except ServoBusError:
                raise
            except Exception as e:  # noqa: BLE001 - the SDK indexes replies without checking their length
                self.errors["sdk_error"] += 1
                last = f"{type(e).__name__} inside scservo_sdk: {e}"
                continue
            result = out[result_at]
            if result == scs.COMM_SUCCESS and (size is None or len(out[0]) == size):
                return out, None
            self.errors[kind] += 1
            last = self._ph.getTxRxResult(result) if result != scs.COMM_SUCCESS else \
                f"{len(out[0])} of {size} bytes in the reply"
        return None, last

    def handshake(self) -> None:
        """Ping servos 1-6 (PING + model read, retried with a backoff); raise naming every missing or
        wrong servo."""
        missing, wrong, last_error = [], [], ""
        tries = self.write_retries + 1
        for i in self.ids:
            out, last = self._exchange("pinging", lambda port, i=i: self._ph.ping(port, i), tries, 1, "ping_failed")
            model = out[0] if out is not None else None
            if out is None:
                missing.append(f"{self.names[i]} (id {i})")
                last_error = last
            elif model != sts.MODEL_NUMBER:
                wrong.append(f"{self.names[i]} (id {i}) is model {model}")
        if missing or wrong:
            parts = []
            if missing:
                parts.append(f"no answer from {', '.join(missing)} after {tries} tries (last: {last_error})")
            if wrong:
                parts.append(f"expected STS3215 (model {sts.MODEL_NUMBER}) but {', '.join(wrong)}")
            raise ServoBusError(f"servo bus {self.port_name}: {'; '.join(parts)} -- check power, cabling and ids "
                                f"(LeRobot `lerobot-setup-motors`)")

    def close(self, release_torque: bool = True) -> list[int]:
        """Optionally release torque, then close the port.  Returns ids whose release was not confirmed."""
        unconfirmed: list[int] = []
        if self.is_open:
            try:
                if release_torque:
                    unconfirmed = self.set_torque(False)
            finally:
                try:
                    self._port.closePort()
                except Exception:  # noqa: BLE001 - a dead port still counts as closed
                    pass
        self._port = None
        return unconfirmed

    # --- register access ---------------------------------------------------------------------------
    def write_register(self, servo_id: int, name: str, value: int, retries: int | None = None) -> int:
        """Write one register (with retries); returns the servo's status byte; raises if never acknowledged."""
        reg = sts.register(name)
        raw = sts.encode_value(reg, value)
        tries = (self.write_retries if retries is None else retries) + 1
        write = self._ph.write1ByteTxRx if reg.size == 1 else self._ph.write2ByteTxRx
        out, last = self._exchange(f"writing {name}", lambda port: write(port, servo_id, reg.address, raw), tries, 0,
                                   "write_failed")
        if out is not None:
            return out[1]
        raise ServoBusError(f"{self.names.get(servo_id, servo_id)} (id {servo_id}): write {name}={value} not "
                            f"acknowledged after {tries} tries: {last}")

    def read_register(self, servo_id: int, name: str, retries: int | None = None) -> int:
        reg = sts.register(name)
        tries = (self.write_retries if retries is None else retries) + 1
        out, last = self._exchange(f"reading {name}", lambda port: self._ph.readTxRx(port, servo_id, reg.address,
                                                                                     reg.size), tries, 1,
                                   "read_failed", size=reg.size)
        if out is not None:
            return sts.decode_value(reg, sts.from_bytes(out[0]))
        raise ServoBusError(f"{self.names.get(servo_id, servo_id)} (id {servo_id}): read {name} failed after "
                            f"{tries} tries: {last}")

    def configure(self, ids: list[int] | None = None) -> None:
        """LeRobot's SO101Follower configuration of ``ids`` (default: all), torque left OFF on them
        (the caller enables it after setting Goal_Position to the present pose).  Every write and
        read is retried with the backoff."""
        ids = list(self.ids) if ids is None else [i for i in self.ids if i in set(ids)]
        for i in ids:
            self.write_register(i, "Torque_Enable", 0)
            self.write_register(i, "Lock", 0)  # EEPROM writes below persist only with Lock 0
        for i in ids:
            for name, value in CONFIGURE_ALL:
                self.write_register(i, name, value)
            phase = self.read_register(i, "Phase")
            if phase & PHASE_MULTI_TURN_BIT:  # multi-turn feedback gives positions > 4095
                self.write_register(i, "Phase", phase & ~PHASE_MULTI_TURN_BIT)
        for i in ids:
            for name, value in CONFIGURE_PID:
                self.write_register(i, name, value)
        gripper = self.calibration.motor("gripper").id
        if gripper in ids:
            for name, value in CONFIGURE_GRIPPER:  # LeRobot: avoid burning the gripper motor
                self.write_register(gripper, name, value)
        for i in ids:
            self.write_register(i, "Lock", 1)

    # --- torque -------------------------------------------------------------------------------------
    def set_torque(self, enabled: bool, retries: int | None = None) -> list[int]:
        """Torque on (Torque_Enable 1, Lock 1) or off (broadcast 0, then per servo 0 and Lock 0).

        Returns the ids that did not acknowledge (never raises when releasing).  ``retries``: per
        write (default ``write_retries``; a servo taken out as absent gets none when releasing)."""
        failed: list[int] = []
        if not enabled:
            try:  # one broadcast packet reaches every listening servo even when replies are lost
                port = self._idle_port()
                self._ph.write1ByteTxOnly(port, scs.BROADCAST_ID, sts.REGISTERS["Torque_Enable"].address, 0)
                port.is_using = False
            except Exception:  # noqa: BLE001 - keep going to the per-servo writes
                self.errors["torque_broadcast_failed"] += 1
        for i in self.ids:
            try:
                if enabled:
                    self.write_register(i, "Torque_Enable", 1, retries=retries)
                    self.write_register(i, "Lock", 1, retries=retries)
                else:
                    n = 0 if i in self._absent else retries
                    self.write_register(i, "Torque_Enable", 0, retries=n)
                    self.write_register(i, "Lock", 0, retries=n)
            except ServoBusError:
                failed.append(i)
            except Exception:  # noqa: BLE001 - a dead port must not stop the release of the others
                self.errors["torque_write_error"] += 1
                failed.append(i)
        if failed and enabled:
            raise ServoBusError(f"torque on not acknowledged by ids {failed}")
        return failed

    def torque_enabled(self) -> dict[int, bool]:
        return {i: self.read_register(i, "Torque_Enable") == 1 for i in self.ids}

    # --- goals --------------------------------------------------------------------------------------
    def write_goal_steps(self, steps: np.ndarray) -> None:
        """SYNC_WRITE Goal_Position (6,) steps (no reply by protocol)."""
        steps = np.asarray(steps)
        if steps.shape != (N_JOINTS,) or not np.all((steps >= 0) & (steps <= sts.MAX_STEP)):
            raise ServoBusError(f"goal steps must be ({N_JOINTS},) in 0..{sts.MAX_STEP}, got {steps}")
        group = scs.GroupSyncWrite(self._idle_port(), self._ph, GOAL.address, GOAL.size)
        for i, s in zip(self.ids, steps):
            group.addParam(i, sts.to_bytes(sts.encode_value(GOAL, int(s)), GOAL.size))
        with self._port_errors("writing goals"):
            result = group.txPacket()
        self._port.is_using = False
        if result != scs.COMM_SUCCESS:
            self.errors["write_failed"] += 1
            raise ServoBusError(f"goal sync write failed: {self._ph.getTxRxResult(result)}")

    def write_goal_rad(self, goal_rad: np.ndarray) -> np.ndarray:
        """Goal angles (6,) rad -> steps (rounded, inside the calibrated range) -> SYNC_WRITE; returns the steps."""
        steps = self.calibration.rad_to_steps(goal_rad)
        self.write_goal_steps(steps)
        return steps

    # --- reading ------------------------------------------------------------------------------------
    def _group(self, ids: list[int]) -> scs.GroupSyncRead:
        if self._sync_read is None or ids != self._sync_ids or self._sync_read.port is not self._port:
            self._sync_read = scs.GroupSyncRead(self._port, self._ph, READ_START, READ_LENGTH)
            for i in ids:
                self._sync_read.addParam(i)
            self._sync_ids = list(ids)
        return self._sync_read

    def read(self) -> Reading:
        """Sync-read position..Status of all servos (1 + read_retries attempts, merged)."""
        with self._port_errors("reading"):
            return self._read()

    def _read(self) -> Reading:
        t0 = time.monotonic()
        self._idle_port()
        now = t0
        probe = [i for i, due in self._absent.items() if now >= due]
        ids = [i for i in self.ids if i not in self._absent]
        fresh: dict[int, list[int]] = {}
        blamed: set[int] = set()  # the servo each failed attempt stopped at
        timed_out: set[int] = set()  # ... when it stopped because that servo was silent (not garbled)
        attempts = failed = 0
        pending = list(ids)
        for _ in range(self.read_retries + 1):
            if not pending:
                break
            attempts += 1
            group = self._group(pending)
            for i in pending:
                group.data_dict[i] = []  # data of earlier reads must never pass as fresh
            self._idle_port()
            try:
                result = group.txRxPacket()
            except (OSError, termios.error, serial.SerialException):
                raise  # the port: read() turns it into ServoPortError
            except Exception:  # noqa: BLE001 - the SDK indexes replies without checking them: a garbled read
                self.errors["sdk_error"] += 1
                result = scs.COMM_RX_CORRUPT
            for i in pending:
                data = group.data_dict.get(i) or []
                if len(data) >= READ_LENGTH:
                    fresh[i] = list(data[:READ_LENGTH])
            if result == scs.COMM_SUCCESS:
                break
            failed += 1
            self.errors["read_timeout" if result == scs.COMM_RX_TIMEOUT else
                        "read_corrupt" if result == scs.COMM_RX_CORRUPT else "read_failed"] += 1
            remaining = [i for i in pending if i not in fresh]
            if not remaining:
                break
            # the SDK stops at the first servo that fails: retry the others first, that one last
            culprit = remaining[0]
            if culprit in blamed and len(remaining) == 1:
                if result == scs.COMM_RX_TIMEOUT:
                    timed_out.add(culprit)
                break  # the same servo failed twice and nobody else is waiting
            blamed.add(culprit)
            if result == scs.COMM_RX_TIMEOUT:
                timed_out.add(culprit)
            pending = remaining[1:] + [culprit]
        for i in probe:  # an absent servo: one plain READ to see whether it is back
            try:
                data, result, err = self._ph.readTxRx(self._idle_port(), i, READ_START, READ_LENGTH)
            except (OSError, termios.error, serial.SerialException):
                raise
            except Exception:  # noqa: BLE001 - as above
                self.errors["sdk_error"] += 1
                data, result = [], scs.COMM_RX_CORRUPT
            if result == scs.COMM_SUCCESS and len(data) >= READ_LENGTH:
                fresh[i] = list(data[:READ_LENGTH])
                del self._absent[i]
            else:
                self._absent[i] = now + self.probe_interval_s
        status: dict[int, int] = {}
        load = np.zeros(N_JOINTS, np.float64)
        fresh_mask = np.zeros(N_JOINTS, bool)
        for k, i in enumerate(self.ids):
            data = fresh.get(i)
            if data is None:
                if i in timed_out:  # a garbled reply still proves the servo is there
                    self._miss_streak[i] += 1
                if self._miss_streak[i] >= self.absent_after and i not in self._absent:
                    self._absent[i] = now + self.probe_interval_s
                continue
            self._miss_streak[i] = 0
            raw_pos = sts.from_bytes(data[0:2])
            pos = sts.decode_sign_magnitude(raw_pos, 15)
            self._last_steps[k] = pos
            self._have_steps[k] = True
            fresh_mask[k] = True
            load[k] = sts.decode_sign_magnitude(sts.from_bytes(data[4:6]), 10)
            status[i] = data[9]
        self.reads += 1
        missing = [i for k, i in enumerate(self.ids) if not fresh_mask[k]]
        t1 = time.monotonic()
        return Reading(steps=self._last_steps.copy(),
                       positions_rad=self.calibration.steps_to_rad(self._last_steps),
                       load=load, status=status, missing_ids=missing,
                       overload_ids=[i for i, s in status.items() if s & sts.ERR_OVERLOAD],
                       attempts=attempts, failed_attempts=failed, read_ms=(t1 - t0) * 1e3, stamp_s=t1,
                       fresh=fresh_mask)

    def read_positions_rad(self, tries: int = 3) -> np.ndarray:
        """The present pose (6,) rad, every servo fresh; raises naming the servos that did not answer."""
        reading = None
        for _ in range(tries):
            reading = self.read()
            if reading.ok:
                return reading.positions_rad
        names = [f"{self.names[i]} (id {i})" for i in reading.missing_ids]
        raise ServoBusError(f"servo bus {self.port_name}: no present position from {', '.join(names)} after "
                            f"{tries} reads")

    @property
    def known(self) -> bool:
        """Whether every servo has been read at least once."""
        return bool(self._have_steps.all())
