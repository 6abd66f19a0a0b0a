"""The servo node's logic, testable without dora: goals in, joint_state out, the arm kept safe.

Start (slow start, never a jump): connect + handshake (servos 1-6, model 777) -> LeRobot's
configuration (torque off) -> read the present pose -> Goal_Position := present steps ->
torque on -> the safety filter starts from the present pose.

Every goal passes :class:`~so101_deploy.arm.safety.SafetyFilter` (joint limits = the tighter of the
calibrated range and the SO-101 MJCF ranges, per-write step bound, NaN/inf rejected).  The
watchdog holds the present pose when no fresh goal came within ``watchdog_s``.  A servo that gives
no fresh reading for longer than ``watchdog_s`` puts the arm on hold too ("fault hold") until
every servo answers again.

E-stop input (message ``estop``, uint8): 1 = hold (goals ignored, the last safe goal kept, torque
on), 2 = release torque (arm limp), 0 = clear: from 2 the node re-reads the pose and slow-starts
again.  Torque is released by :meth:`ServoNode.shutdown`, which the node calls on every exit path.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from so101_deploy.arm.calibration import Calibration
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
)


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
                 clock: Callable[[], float] = time.monotonic, log: Callable[[str, str], None] = _log):
        self.bus = bus
        self.safety = safety
        self.torque_on_start = torque_on_start
        self.clock = clock
        self.log = log
        self.torque_on = False
        self.started = False
        self.events = collections.Counter()
        self.goals_written = 0
        self._estop = ESTOP_CLEAR
        self._fault_hold = False
        self._last_fresh_s = np.zeros(N_JOINTS)
        self._prev: Reading | None = None
        self._shut = False
        self._last_report_s = 0.0
        self._reported_errors = 0

    @classmethod
    def from_settings(cls, settings: ServoSettings) -> "ServoNode":
        calibration = Calibration.load(settings.calibration)
        lower, upper = calibration.limits_rad()
        limits = JointLimits.from_model().intersect(JointLimits(lower, upper))
        safety = SafetyFilter(limits, settings.max_step_rad, settings.watchdog_s)
        bus = ServoBus(settings.port, calibration, read_retries=settings.read_retries,
                       reply_window_ms=settings.reply_window_ms)
        return cls(bus, safety, torque_on_start=settings.torque_on_start)

    # --- life cycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self.bus.connect()
        self.bus.configure()
        if self.torque_on_start:
            self._slow_start()
        else:
            reading = self._full_reading()
            self.safety.reset(reading.positions_rad, self.clock())
        self.started = True
        self.log("info", f"{self.bus.port_name}: 6 servos configured, torque {'on' if self.torque_on else 'off'}, "
                         f"pose {np.round(self.safety.last_goal_rad, 3).tolist()} rad")

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
        self.safety.reset(reading.positions_rad, self.clock())

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

    def on_goal(self, goal_rad: np.ndarray) -> list[str]:
        """A joint goal (6,) rad from the controller -> a safe goal written to the servos."""
        if not self.started or not self.torque_on:
            self.events["goal_ignored_torque_off"] += 1
            return ["goal_ignored_torque_off"]
        safe, events = self.safety.filter(goal_rad, self.clock())
        self._write(safe)
        self.events.update(events)
        return events

    def on_estop(self, value: int) -> list[str]:
        value = int(value)
        if value not in (ESTOP_CLEAR, ESTOP_HOLD, ESTOP_RELEASE):
            value = ESTOP_HOLD  # unknown -> the safe choice
        previous, self._estop = self._estop, value
        if value == previous:
            return []
        if value in (ESTOP_HOLD, ESTOP_RELEASE):
            self.safety.estop(True)
            if value == ESTOP_RELEASE and self.torque_on:
                unconfirmed = self.bus.set_torque(False)
                self.torque_on = False
                self.log("warning", f"e-stop: torque released (unconfirmed ids {unconfirmed})")
            else:
                self.log("warning", "e-stop: holding")
            return ["estop_release_torque" if value == ESTOP_RELEASE else "estop_hold"]
        # clear
        if not self._fault_hold:
            self.safety.estop(False)
        if not self.torque_on and self.started:
            self._slow_start()
        self.log("info", "e-stop cleared")
        return ["estop_cleared"]

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
        stale = now - self._last_fresh_s > self.safety.watchdog_s
        if stale.any() and not self._fault_hold:
            self._fault_hold = True
            self.safety.estop(True)
            events.append("fault_hold")
            self.log("error", f"no reading from ids {[int(i) for i in self.bus.calibration.ids[stale]]} for "
                              f"{self.safety.watchdog_s} s: holding the arm")
        elif not stale.any() and self._fault_hold:
            self._fault_hold = False
            if self._estop == ESTOP_CLEAR:
                self.safety.estop(False)
            events.append("fault_cleared")
            self.log("info", "all servos answer again")
        if self.torque_on:
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
            "hold": bool(self._fault_hold or self.safety.watchdog_holding or self._estop != ESTOP_CLEAR),
            "read_ms": round(float(reading.read_ms), 3),
            "events": ",".join(events),
        }
        return np.stack([reading.positions_rad, velocity]), meta
