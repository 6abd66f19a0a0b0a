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

Every goal passes :class:`~so101_deploy.arm.safety.SafetyFilter` (joint limits = the tighter of the
calibrated range and the SO-101 MJCF ranges, per-write step bound, NaN/inf rejected).  Leaving a hold
or an e-stop always restarts the filter from the present pose, with the slow start: never toward an
old goal.  Torque is released by :meth:`ServoNode.shutdown`, which the node calls on every exit path.
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
from so101_deploy.core.settings import Setting, Settings
from so101_deploy.arm.safety import JointLimits, SafetyFilter
from so101_deploy.arm.servo_bus import Reading, ServoBus, ServoBusError

ESTOP_CLEAR, ESTOP_HOLD, ESTOP_RELEASE = 0, 1, 2

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
    Setting("SO101_PORT_WAIT_S", "float", 5.0, "how long to wait for the port to appear at start", min=0.0,
            max=600.0),
    Setting("SO101_TORQUE_GUARD", "bool", True, "a separate process releases torque if the servo node is killed "
            "(kill -9, dora's orphan guard); false: no such process"),
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

    @classmethod
    def from_settings(cls, s: Settings) -> "ServoSettings":
        """From the node's settings (:data:`SETTINGS`)."""
        return cls(port=s["SO101_PORT"], calibration=s["SO101_CALIBRATION"], watchdog_s=s["SO101_SERVO_WATCHDOG_S"],
                   read_retries=s["SO101_SERVO_READ_RETRIES"], max_step_rad=s["SO101_MAX_STEP_RAD"],
                   torque_on_start=s["SO101_TORQUE_ON_START"], reply_window_ms=s["SO101_SERVO_REPLY_WINDOW_MS"],
                   port_wait_s=s["SO101_PORT_WAIT_S"])


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
                 safe: safe_state.SafeState | None = None, estop_file: EstopFile | None = None):
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
        return cls(bus, safety, torque_on_start=settings.torque_on_start, safe=safe, estop_file=estop_file)

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
        if self.torque_on:
            unconfirmed = self.bus.set_torque(False)
            self.torque_on = False
            self.log("warning", f"{why}: torque released" + (f" (unconfirmed ids {unconfirmed})" if unconfirmed
                                                              else ""))

    def shutdown(self) -> None:
        """Release torque and close the port.  Idempotent; safe from any exit path."""
        if self._shut:
            return
        self._shut = True
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
        steps = self.bus.calibration.rad_to_steps(goal_rad)
        self.bus.write_goal_steps(steps)
        self.goals_written += 1

    def on_goal(self, goal_rad: np.ndarray, fresh: bool = True) -> list[str]:
        """A joint goal (6,) rad from the controller -> a safe goal written to the servos.  ``fresh``:
        computed from an action (the controller's watchdog holds are not)."""
        now = self.clock()
        if fresh:
            self.safe.on_fresh_goal(now)
        if self.started and self.safe.state != safe_state.RUN:
            self._advance(now)  # a fresh goal may start or resume the arm right now
        if not self.started or not self.torque_on or self.safe.state != safe_state.RUN:
            key = "goal_ignored_torque_off" if not self.torque_on else f"goal_ignored_{self.safe.state}"
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
            self._write(np.clip(d.goal_rad, self.safety.limits.lower_rad, self.safety.limits.upper_rad))
        self.events.update(events)
        return events

    def on_tick(self) -> tuple[np.ndarray, dict] | None:
        """Read the arm; returns (joint_state (2, 6): rad, rad/s; metadata) to publish."""
        if not self.started:
            return None
        reading = self.bus.read()
        now = self.clock()
        fresh = reading.fresh
        self._last_fresh_s[fresh] = now
        velocity = np.zeros(N_JOINTS)
        if self._prev is not None and reading.stamp_s > self._prev.stamp_s:
            both = fresh & self._prev.fresh
            velocity[both] = ((reading.positions_rad - self._prev.positions_rad)[both]
                              / (reading.stamp_s - self._prev.stamp_s))
        self._prev = reading
        events: list[str] = []
        if self.estop_file is not None:
            self._estop_file = self.estop_file.state()
            events += self._update_estop(now)
        stale = now - self._last_fresh_s > self.safety.watchdog_s
        self.safe.set_fault("stale", f"no reading from ids {[int(i) for i in self.bus.calibration.ids[stale]]} "
                                     f"for {self.safety.watchdog_s} s" if stale.any() else None)
        self.safe.set_fault("overload", f"overload reported by ids {reading.overload_ids}"
                            if reading.overload_ids else None)
        events += self._advance(now)
        self._last_tick_s = now
        if self.torque_on and self.safe.state in (safe_state.RUN, safe_state.HOLD):
            hold, ev = self.safety.on_tick(reading.positions_rad, now)
            events += ev
            if hold is not None:
                self._write(hold)
        self.events.update(events)
        errors = int(sum(self.bus.errors.values()))
        if errors != self._reported_errors and now - self._last_report_s > 1.0:
            self._last_report_s, self._reported_errors = now, errors
            self.log("warning", f"bus errors so far: {dict(self.bus.errors)}; missing now {reading.missing_ids}; "
                                f"overload {reading.overload_ids}")
        meta = {
            "errors": errors,
            "error_kinds": ",".join(f"{k}={v}" for k, v in sorted(self.bus.errors.items())),
            "overload_ids": ",".join(str(i) for i in reading.overload_ids),
            "missing_ids": ",".join(str(i) for i in reading.missing_ids),
            "torque": "on" if self.torque_on else "off",
            "estop": self._estop,
            "state": self.safe.state,
            "hold": self.safe.state != safe_state.RUN or self.safety.watchdog_holding,
            "read_ms": round(float(reading.read_ms), 3),
            "events": ",".join(events),
        }
        return np.stack([reading.positions_rad, velocity]), meta


def _estop_value(value) -> int:
    value = int(value)
    return value if value in (ESTOP_CLEAR, ESTOP_HOLD, ESTOP_RELEASE) else ESTOP_HOLD  # unknown -> safe choice
