"""The servo node's logic, testable without dora: goals in, joint_state out, the arm kept safe.

Start: connect + handshake (servos 1-6, model 777) -> LeRobot's configuration (torque off) -> read the
present pose.  Torque stays off (state WAIT) until the first fresh goal, one computed from an action
(a goal whose ``source`` is ``watchdog`` is not fresh): then Goal_Position := present steps -> torque on
-> the safety filter starts from the present pose (slow start, never a jump).  A chain that never
produces an action never gets torque.

From then on :class:`~so101_deploy.arm.safe_state.SafeState` decides (RUN, HOLD, PARK, LIMP; its
docstring has the table): no fresh goal for SO101_HOLD_S, an e-stop hold (the e-stop input *or* the
e-stop file, which this node reads itself every tick), a silent e-stop input, a closed input, a servo
that stops answering or reports overload all hold the present pose; a long hold or a dead input parks
the arm at a bounded joint speed, then releases torque, and the node exits with one line.

Servo status: the status byte of every reply is decoded (voltage, angle, overheat, current, overload;
:data:`~so101_deploy.arm.servo_bus.STATUS_BITS`) into the joint_state metadata ``status`` (e.g.
``3:overheat,6:overload``, the last known bits of each servo) and one log line per change.  The bits
named in SO101_FAULT_BITS (default overheat, overload, current) each hold the arm while reported (a
long hold parks it); the others are only reported.

The bus survives the cable.  The node counts its consecutive bus errors itself (a tick whose read
failed or got no servo at all, a failed goal write; only a read with fresh data resets the count --
e-stop and goal messages never do).  The port is lost when its device disappears, the port stops
working, or after ``bus_lost_after`` consecutive errors: the node holds (safe-state fault ``bus``),
closes the port and tries to open it again every 0.1 s, doubling to 2 s, for up to
SO101_PORT_WAIT_S.  Back: connect + handshake, configure the servos that lost power (a servo still
holding torque kept its settings and is not touched), re-read the pose, Goal_Position := present,
torque on only if it was on, and the safety filter restarts from the present pose (slow start, no
jump).  Not back in time (or the hold would park the arm meanwhile): torque release attempted, one
line, ``exit_reason`` set (the node exits as after a park).  One log line per change, never one per tick.

Every goal passes :class:`~so101_deploy.arm.safety.SafetyFilter` (joint limits = the tighter of the
calibrated range and the SO-101 MJCF ranges, per-write step bound, NaN/inf rejected).  Leaving a hold
or an e-stop always restarts the filter from the present pose, with the slow start: never toward an
old goal.  Torque is released by :meth:`ServoNode.shutdown`, which the node calls on every exit path.

This module is one class on purpose (past the ~500 lines the project keeps to): the servo node's life
cycle -- start, goals, e-stop, reads, status bits, reconnect, safe states -- acts on one bus and one torque
state, and every part of it must see all of them.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from so101_deploy.arm import safe_state
from so101_deploy.arm.calibration import Calibration
from so101_deploy.arm.estop import EstopFile
from so101_deploy.arm.estop import SETTINGS as ESTOP_SETTINGS
from so101_deploy.arm.estop import WIRING_SETTING as ESTOP_WIRING_SETTING
from so101_deploy.core.messages import N_JOINTS
from so101_deploy.core.log import leveled
from so101_deploy.core.settings import Setting, SettingError, Settings
from so101_deploy.arm.safety import JointLimits, SafetyFilter
from so101_deploy.arm.servo_bus import STATUS_BITS, Reading, ServoBus, ServoBusError, ServoPortError, decode_status

ESTOP_CLEAR, ESTOP_HOLD, ESTOP_RELEASE = 0, 1, 2
DEFAULT_FAULT_BITS = ("overheat", "overload", "current")
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.1, 2.0  # the pause between two tries to reopen a lost port: doubles
BUS_LOST_AFTER = 10  # consecutive bus errors (ticks without any servo, failed goal writes) = the port is lost

SETTINGS = (
    Setting("SO101_PORT", "str", required=True, doc="the bus adapter, e.g. /dev/ttyACM0"),
    Setting("SO101_CALIBRATION", "str", required=True, doc="the arm's LeRobot calibration JSON"),
    Setting("SO101_SERVO_WATCHDOG_S", "float", 0.5, "no fresh goal (or reading) for this long -> hold the "
            "present pose", min=0.02, max=10.0),
    Setting("SO101_SERVO_READ_RETRIES", "int", 2, "retries of a failed sync read per tick", min=0, max=10),
    Setting("SO101_MAX_STEP_RAD", "float", 0.05, "largest change of a written goal per write (rad)",
            min=0.001, max=0.5),
    Setting("SO101_TORQUE_ON_START", "bool", True, "false: read-only monitoring, torque stays off"),
    Setting("SO101_SERVO_REPLY_WINDOW_MS", "float", 50.0, "how long to wait for a servo's reply", min=1.0,
            max=1000.0),
    Setting("SO101_PORT_WAIT_S", "float", 5.0, "how long to wait for the port to appear at start, and for a lost "
            "port to come back while holding (then torque release is attempted and the node exits)", min=0.0,
            max=600.0),
    Setting("SO101_TORQUE_GUARD", "bool", True, "a separate process releases torque if the servo node is killed "
            "(kill -9, dora's orphan guard); false: no such process"),
    Setting("SO101_FAULT_BITS", "str", ",".join(DEFAULT_FAULT_BITS), "servo status bits that hold the arm (a long "
            f"hold parks it): comma-separated of {', '.join(STATUS_BITS)}, or none; the others are only reported"),
) + ESTOP_SETTINGS + (ESTOP_WIRING_SETTING,) + safe_state.SETTINGS


@dataclass
class ServoSettings:
    port: str
    calibration: str
    watchdog_s: float = 0.5
    read_retries: int = 2
    max_step_rad: float = 0.05
    torque_on_start: bool = True
    reply_window_ms: float = 50.0
    port_wait_s: float = 5.0
    fault_bits: tuple[str, ...] = DEFAULT_FAULT_BITS

    @classmethod
    def from_settings(cls, s: Settings) -> "ServoSettings":
        """From the node's settings (:data:`SETTINGS`)."""
        return cls(port=s["SO101_PORT"], calibration=s["SO101_CALIBRATION"], watchdog_s=s["SO101_SERVO_WATCHDOG_S"],
                   read_retries=s["SO101_SERVO_READ_RETRIES"], max_step_rad=s["SO101_MAX_STEP_RAD"],
                   torque_on_start=s["SO101_TORQUE_ON_START"], reply_window_ms=s["SO101_SERVO_REPLY_WINDOW_MS"],
                   port_wait_s=s["SO101_PORT_WAIT_S"], fault_bits=parse_fault_bits(s["SO101_FAULT_BITS"], s.node))


def parse_fault_bits(raw: str, node: str = "servo") -> tuple[str, ...]:
    """SO101_FAULT_BITS -> the status bit names that hold the arm ("none" = only report)."""
    names = [n.strip().lower() for n in str(raw).split(",") if n.strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in STATUS_BITS]
    if unknown:
        raise SettingError(f"{node}: SO101_FAULT_BITS={raw!r}: unknown bit(s) {unknown}; use any of "
                           f"{', '.join(STATUS_BITS)} (comma-separated), or none")
    return tuple(n for n in STATUS_BITS if n in names)


def wait_for_port(port: str, timeout_s: float, poll_s: float = 0.1) -> bool:
    """Wait for the serial port to appear (a USB adapter still enumerating, a software bus still
    starting); True when it exists.  Waiting happens before torque is ever touched."""
    deadline = time.monotonic() + timeout_s
    announced = False
    while not os.path.exists(port):
        if time.monotonic() >= deadline:
            return False
        if not announced:
            _log("info", f"waiting up to {timeout_s:.0f} s for {port} to appear (SO101_PORT_WAIT_S)")
            announced = True
        time.sleep(poll_s)
    return True


_log = leveled(logging.getLogger(__name__))


class ServoNode:
    def __init__(self, bus: ServoBus, safety: SafetyFilter, torque_on_start: bool = True,
                 clock: Callable[[], float] = time.monotonic, log: Callable[[str, str], None] = _log,
                 safe: safe_state.SafeState | None = None, estop_file: EstopFile | None = None,
                 fault_bits: tuple[str, ...] = DEFAULT_FAULT_BITS, port_wait_s: float = 5.0,
                 bus_lost_after: int = BUS_LOST_AFTER):
        self.bus = bus
        self.safety = safety
        self.torque_on_start = torque_on_start
        self.clock = clock
        self.log = log
        self.safe = safe if safe is not None else safe_state.SafeState(safe_state.DEFAULT_REST_POSE_RAD)
        self.estop_file = estop_file
        self.torque_on = False
        self.started = False
        self.exit_reason: str | None = None  # set when a fault ended in LIMP: the node exits with it
        self.events = collections.Counter()
        self.goals_written = 0
        self._estop_input = ESTOP_CLEAR
        self._estop_file = ESTOP_CLEAR
        self._estop = ESTOP_CLEAR
        self._last_fresh_s = np.zeros(N_JOINTS)
        self._prev: Reading | None = None
        self._shut = False
        self._last_report_s = 0.0
        self._reported_errors = 0
        self._last_tick_s: float | None = None
        self.fault_bits = tuple(fault_bits)
        self.port_wait_s = float(port_wait_s)
        self.bus_lost_after = int(bus_lost_after)
        self.bus_errors_in_row = 0  # counted here: only a read with fresh data resets it
        self._status: dict[int, list[str]] = {}  # id -> its status bits, as last read
        self._status_text = ""
        self._lost_since: float | None = None  # the port is lost since (None: the bus works)
        self._retry_at = 0.0
        self._retry_s = RECONNECT_FIRST_S
        self._retry_error = ""
        self._gave_up = False

    @classmethod
    def from_settings(cls, settings: ServoSettings, raw: Settings | None = None,
                      estop_wired: bool = False) -> "ServoNode":
        """``raw``: the node's settings (the e-stop file and the safe-state settings); None = defaults."""
        calibration = Calibration.load(settings.calibration)
        lower, upper = calibration.limits_rad()
        limits = JointLimits.from_model().intersect(JointLimits(lower, upper))
        safety = SafetyFilter(limits, settings.max_step_rad, settings.watchdog_s)
        bus = ServoBus(settings.port, calibration, read_retries=settings.read_retries,
                       reply_window_ms=settings.reply_window_ms)
        if raw is None:
            raw = Settings("servo", SETTINGS, {})
        rest = np.clip(safe_state.rest_pose_from_settings(raw), limits.lower_rad, limits.upper_rad)
        safe = safe_state.SafeState.from_settings(raw, rest, estop_wired)
        estop_file = EstopFile(raw["SO101_ESTOP_FILE"]) if raw["SO101_ESTOP_FILE"] else None
        return cls(bus, safety, torque_on_start=settings.torque_on_start, safe=safe, estop_file=estop_file,
                   fault_bits=settings.fault_bits, port_wait_s=settings.port_wait_s)

    # --- life cycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect, configure (torque off) and read the pose; torque waits for the first fresh goal."""
        self.bus.connect()
        self.bus.configure()
        reading = self._full_reading()
        self.safety.reset(reading.positions_rad, self.clock())
        self.started = True
        self.log("info", f"{self.bus.port_name}: 6 servos configured, torque off until the first goal from an "
                         f"action, pose {np.round(reading.positions_rad, 3).tolist()} rad")

    def _full_reading(self) -> Reading:
        for _ in range(5):
            reading = self.bus.read()
            if reading.ok:
                self._last_fresh_s[:] = self.clock()
                self._prev = reading
                return reading
        raise ServoBusError(f"no complete present pose from the servos (missing ids {reading.missing_ids}); "
                            f"torque stays off")

    def _slow_start(self) -> None:
        """Read the pose first, make it the goal, then enable torque: the arm does not move."""
        reading = self._full_reading()
        self.bus.write_goal_steps(reading.steps)  # exactly the present steps, no rad round trip
        self.bus.set_torque(True)
        self.torque_on = True
        self.safety.estop(False)
        self.safety.reset(reading.positions_rad, self.clock())
        self.log("info", f"torque on, following goals from the present pose "
                         f"{np.round(reading.positions_rad, 3).tolist()} rad (slow start)")

    def _torque_off(self, why: str) -> None:
        if self.torque_on and self._lost_since is not None:
            self.torque_on = False
            self.log("warning", f"{why}: torque release {self._release_while_lost()} (the servo bus is lost)")
        elif self.torque_on:
            unconfirmed = self.bus.set_torque(False)
            self.torque_on = False
            self.log("warning", f"{why}: torque released" + (f" (unconfirmed ids {unconfirmed})" if unconfirmed
                                                              else ""))

    def shutdown(self) -> None:
        """Release torque and close the port.  Idempotent; safe from any exit path."""
        if self._shut:
            return
        self._shut = True
        if self._lost_since is not None:  # the port is closed: one more try at the release, unless given up
            if not self._gave_up:
                self.log("warning", f"stopping with the servo bus lost: torque release {self._release_while_lost()}")
            self.torque_on = False
            return
        try:
            unconfirmed = self.bus.close(release_torque=True)
            self.torque_on = False
            if unconfirmed:
                self.log("error", f"torque release not confirmed by ids {unconfirmed} (broadcast sent)")
            else:
                self.log("info", "torque released on all servos")
        except Exception as e:  # noqa: BLE001 - shutdown must never raise
            self.log("error", f"torque release failed: {e!r}")

    # --- inputs -----------------------------------------------------------------------------------------
    def _write(self, goal_rad: np.ndarray) -> None:
        if self._lost_since is not None:
            self.events["goal_not_written_bus_lost"] += 1
            return
        steps = self.bus.calibration.rad_to_steps(goal_rad)
        try:
            self.bus.write_goal_steps(steps)
        except ServoBusError as e:
            self._bus_failed(e, self.clock())
            return
        self.goals_written += 1

    def on_goal(self, goal_rad: np.ndarray, fresh: bool = True) -> list[str]:
        """A joint goal (6,) rad from the controller -> a safe goal written to the servos.  ``fresh``:
        computed from an action (the controller's watchdog holds are not)."""
        now = self.clock()
        if fresh:
            self.safe.on_fresh_goal(now)
        if self.started and self.safe.state != safe_state.RUN:
            self._advance(now)  # a fresh goal may start or resume the arm right now
        if not self.started or not self.torque_on or self.safe.state != safe_state.RUN or self._lost_since is not None:
            key = "goal_ignored_torque_off" if not self.torque_on else "goal_ignored_bus_lost" \
                if self._lost_since is not None else f"goal_ignored_{self.safe.state}"
            self.events[key] += 1
            return [key]
        safe, events = self.safety.filter(goal_rad, now)
        self._write(safe)
        self.events.update(events)
        return events

    def on_estop(self, value: int) -> list[str]:
        """The e-stop input (0 clear, 1 hold, 2 release torque); the e-stop file counts as well."""
        now = self.clock()
        self.safe.on_estop_message(now)
        self._estop_input = _estop_value(value)
        return self._update_estop(now)

    def on_input_closed(self, input_id: str) -> list[str]:
        """A critical input closed for good (its node is gone): hold, then what SO101_ON_FAULT says."""
        self.log("error", f"input {input_id!r} closed: its node is gone")
        self.safe.on_input_closed(input_id)
        return self._advance(self.clock())

    def _update_estop(self, now: float) -> list[str]:
        value = max(self._estop_input, self._estop_file)  # release > hold > clear: the safer one wins
        previous, self._estop = self._estop, value
        if value == previous:
            return []
        self.safe.on_estop(value, now)
        if value != ESTOP_CLEAR:
            self.safety.estop(True)
            self.log("warning", "e-stop: " + ("release torque" if value == ESTOP_RELEASE else "holding"))
        else:
            self.log("info", "e-stop cleared")
        events = ["estop_release_torque" if value == ESTOP_RELEASE else "estop_hold" if value else "estop_cleared"]
        self.events.update(events)
        return events + (self._advance(now) if self.started else [])

    def _advance(self, now: float) -> list[str]:
        """Let the safe-state machine decide and do it; returns the events."""
        tick_s = 0.0 if self._last_tick_s is None else now - self._last_tick_s
        present = self.safety.last_goal_rad if self.safety.last_goal_rad is not None else self._prev.positions_rad
        d = self.safe.step(now, present, tick_s)
        events = []
        if d.entered is not None:
            events.append(f"state_{d.entered}")
            level = "info" if d.entered == safe_state.RUN else "warning"
            self.log(level, f"{d.entered.upper()}: {d.reason}")
        if d.entered == safe_state.RUN:
            if not self.torque_on:
                if not self.torque_on_start:  # read-only monitoring: never enable torque
                    self.safe.state = safe_state.WAIT
                else:
                    try:
                        self._slow_start()
                    except ServoBusError as e:  # no complete pose: torque stays off, try at the next goal
                        self.safe.state = safe_state.WAIT
                        events.append("start_refused")
                        self.log("error", f"not starting: {e}")
            else:  # from HOLD: restart from the present pose, never toward an old goal
                reading = self._prev
                self.safety.estop(False)
                self.safety.reset(reading.positions_rad if reading is not None else present, now)
        elif d.entered == safe_state.HOLD:
            self.safety.estop(True)  # the filter keeps the last goal: the present pose
        elif d.entered == safe_state.LIMP:
            self._torque_off(d.reason)
            if d.exit_reason:
                self.exit_reason = d.exit_reason
        if d.state == safe_state.PARK and d.goal_rad is not None and self.torque_on:
            if self._lost_since is not None and not self._gave_up:  # nothing can move the arm: do not pretend
                self._give_up(now, f"{d.reason.removesuffix(': parking')}, but the servo bus is lost: cannot park")
            else:
                self._write(np.clip(d.goal_rad, self.safety.limits.lower_rad, self.safety.limits.upper_rad))
        self.events.update(events)
        return events

    def on_tick(self) -> tuple[np.ndarray, dict] | None:
        """Read the arm; returns (joint_state (2, 6): rad, rad/s; metadata) to publish.  Never raises
        for a bus fault: a lost port holds and is reopened (see the module docstring)."""
        if not self.started:
            return None
        now = self.clock()
        reading = None
        if self._lost_since is None and not self._gave_up:
            reading = self._read_bus(now)
        if self._lost_since is not None and not self._gave_up:
            reading = self._reconnect_tick(now)
        now = self.clock()  # after the read (a read with retries takes a while)
        velocity = np.zeros(N_JOINTS)
        if reading is not None:
            fresh = reading.fresh
            self._last_fresh_s[fresh] = now
            if self._prev is not None and reading.stamp_s > self._prev.stamp_s:
                both = fresh & self._prev.fresh
                velocity[both] = ((reading.positions_rad - self._prev.positions_rad)[both]
                                  / (reading.stamp_s - self._prev.stamp_s))
            self._prev = reading
            self._update_status(reading)
        shown = self._prev
        lost = self._lost_since is not None
        events: list[str] = []
        if self.estop_file is not None:
            self._estop_file = self.estop_file.state()
            events += self._update_estop(now)
        stale = now - self._last_fresh_s > self.safety.watchdog_s
        self.safe.set_fault("stale", f"no reading from ids {[int(i) for i in self.bus.calibration.ids[stale]]} "
                                     f"for {self.safety.watchdog_s} s" if stale.any() else None)
        for bit in STATUS_BITS:
            ids = [i for i, names in sorted(self._status.items()) if bit in names] if bit in self.fault_bits else []
            self.safe.set_fault(bit, f"{bit} reported by ids {ids}" if ids else None)
        events += self._advance(now)
        self._last_tick_s = now
        if self.torque_on and not lost and self.safe.state in (safe_state.RUN, safe_state.HOLD):
            hold, ev = self.safety.on_tick(shown.positions_rad, now)
            events += ev
            if hold is not None:
                self._write(hold)
        self.events.update(events)
        errors = int(sum(self.bus.errors.values()))
        missing = self.bus.ids if reading is None else reading.missing_ids
        if errors != self._reported_errors and now - self._last_report_s > 1.0 and not lost:
            self._last_report_s, self._reported_errors = now, errors
            self.log("warning", f"bus errors so far: {dict(self.bus.errors)}; missing now {missing}; "
                                f"status {self._status_text or 'ok'}")
        overload = [i for i, names in sorted(self._status.items()) if "overload" in names]
        meta = {
            "errors": errors,
            "error_kinds": ",".join(f"{k}={v}" for k, v in sorted(self.bus.errors.items())),
            "overload_ids": ",".join(str(i) for i in overload),
            "status": self._status_text,
            "missing_ids": ",".join(str(i) for i in missing),
            "bus": "gave_up" if self._gave_up else "lost" if self._lost_since is not None else "ok",
            "bus_errors_in_row": self.bus_errors_in_row,
            "torque": "on" if self.torque_on else "off",
            "estop": self._estop,
            "state": self.safe.state,
            "hold": self.safe.state != safe_state.RUN or self.safety.watchdog_holding,
            "read_ms": round(float(reading.read_ms), 3) if reading is not None else 0.0,
            "events": ",".join(events),
        }
        return np.stack([shown.positions_rad, velocity]), meta

    # --- servo status ---------------------------------------------------------------------------------
    def _update_status(self, reading: Reading) -> None:
        """Keep each servo's status bits as last read (a servo missing from this read keeps its own);
        one log line when they change."""
        for k, i in enumerate(self.bus.ids):
            if reading.fresh[k]:
                self._status[i] = decode_status(reading.status.get(i, 0))
        text = ",".join(f"{i}:{name}" for i, names in sorted(self._status.items()) for name in names)
        if text == self._status_text:
            return
        self._status_text = text
        holding = sorted({n for names in self._status.values() for n in names if n in self.fault_bits},
                         key=list(STATUS_BITS).index)
        if text:
            self.log("warning", f"servo status bits: {text}" + (f" (holding on {', '.join(holding)}, SO101_FAULT_BITS)"
                                                                if holding else " (reported only)"))
        else:
            self.log("info", "servo status bits: all clear")

    # --- the bus lost and found -----------------------------------------------------------------------
    def _read_bus(self, now: float) -> Reading | None:
        """One read; a failed read (or one with no servo at all) is a bus error.  None: no reading."""
        if not os.path.exists(self.bus.port_name):
            self._lose_bus(f"{self.bus.port_name} is gone (unplugged?)", now)
            return None
        try:
            reading = self.bus.read()
        except ServoBusError as e:
            self._bus_failed(e, now)
            return None
        if reading.fresh.any():
            self.bus_errors_in_row = 0
        else:
            self._bus_failed(None, now)
        return reading

    def _bus_failed(self, error: Exception | None, now: float) -> None:
        """One more consecutive bus error (``error``: its exception; None: no servo answered a read)."""
        self.bus_errors_in_row += 1
        if self._lost_since is not None:
            return
        if isinstance(error, ServoPortError):
            self._lose_bus(str(error), now)
        elif self.bus_errors_in_row >= self.bus_lost_after:
            self._lose_bus(f"{self.bus_errors_in_row} bus errors in a row (last: "
                           f"{error if error is not None else 'no servo answered'})", now)

    def _lose_bus(self, cause: str, now: float) -> None:
        """The port is lost: hold (fault ``bus``), close it, reopen it from the next tick on."""
        if self._lost_since is not None:
            return
        self._lost_since, self._retry_error = now, ""
        self._retry_s = RECONNECT_FIRST_S
        self._retry_at = now + self._retry_s
        self.bus.close(release_torque=False)  # the servos keep holding their last goal meanwhile
        self.safe.set_fault("bus", "servo bus lost")
        self.events["bus_lost"] += 1
        self.log("error", f"servo bus lost: {cause}; holding, reopening the port for up to {self.port_wait_s:g} s "
                          f"(SO101_PORT_WAIT_S)")

    def _reconnect_tick(self, now: float) -> Reading | None:
        """While lost: reopen the port when the backoff says so; give up after ``port_wait_s``."""
        deadline = self._lost_since + self.port_wait_s
        if now < min(self._retry_at, deadline):
            return None
        try:
            return self._reconnect(now)
        except Exception as e:  # noqa: BLE001 - any failure of a try is one failed try, never a traceback
            self.bus.close(release_torque=False)
            self._retry_error = str(e) or type(e).__name__
        now = self.clock()
        if now >= deadline:
            self._give_up(now, f"servo bus {self.bus.port_name} lost for {now - self._lost_since:.1f} s and not back "
                               f"within SO101_PORT_WAIT_S={self.port_wait_s:g} s (last try: {self._retry_error})")
            return None
        self._retry_s = min(self._retry_s * 2, RECONNECT_MAX_S)
        self._retry_at = now + self._retry_s
        return None

    def _reconnect(self, now: float) -> Reading:
        """Open, handshake, configure what lost power, read the pose; the arm restarts from it."""
        if not os.path.exists(self.bus.port_name):
            raise ServoPortError(f"{self.bus.port_name} does not exist")
        self.bus.connect()  # open + handshake (pings retried)
        was_on = self.torque_on
        # a servo that kept its power still holds torque and its settings: reconfiguring it would drop the arm
        kept = [i for i, on in self.bus.torque_enabled().items() if on] if was_on else []
        again = [i for i in self.bus.ids if i not in kept]
        if again:
            self.bus.configure(again)  # torque off on those, LeRobot's settings
        reading = self._full_reading()
        if was_on:
            self.bus.write_goal_steps(reading.steps)  # exactly the present steps: torque on does not move it
            self.bus.set_torque(True)
        now = self.clock()
        self.safety.reset(reading.positions_rad, now)  # goals restart from the present pose (slow start)
        self.bus_errors_in_row = 0
        lost_s = now - self._lost_since
        self._lost_since = None
        self.safe.set_fault("bus", None)
        self.events["bus_reconnected"] += 1
        self.log("info", f"servo bus back after {lost_s:.1f} s: " + (f"configured ids {again}, " if again else "")
                 + (f"kept ids {kept} (still holding torque), " if kept else "")
                 + f"torque {'on' if was_on else 'off'}, restarting from the present pose "
                   f"{np.round(reading.positions_rad, 3).tolist()} rad (slow start)")
        return reading

    def _release_while_lost(self) -> str:
        """One attempt to release torque through a port that was lost; says how it went."""
        if not os.path.exists(self.bus.port_name):
            return "not possible (the port is gone)"
        try:
            self.bus.connect(handshake=False)
            unconfirmed = self.bus.set_torque(False, retries=0)
        except Exception as e:  # noqa: BLE001 - a dead port: say so, do not raise
            return f"failed ({e})"
        finally:
            self.bus.close(release_torque=False)
        return "sent" + (f" (unconfirmed by ids {unconfirmed})" if unconfirmed else " and confirmed")

    def _give_up(self, now: float, why: str) -> None:
        """The arm cannot be reached in time: torque release attempted, LIMP, one line, the node exits."""
        self._gave_up = True
        released = self._release_while_lost()
        self.torque_on = False
        reason = f"{why}; torque release {released}"
        self.safe.state, self.safe.reason = safe_state.LIMP, reason
        self.exit_reason = reason
        self.events["bus_gave_up"] += 1
        self.log("error", f"LIMP: {reason}")


def _estop_value(value) -> int:
    value = int(value)
    return value if value in (ESTOP_CLEAR, ESTOP_HOLD, ESTOP_RELEASE) else ESTOP_HOLD  # unknown -> safe choice
