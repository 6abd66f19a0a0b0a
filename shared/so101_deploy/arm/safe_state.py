"""The arm side's safe states, in one place: WAIT -> RUN -> HOLD -> PARK -> LIMP.  Pure logic, no I/O.

The servo node owns the arm and trusts nothing upstream to stay alive.  It feeds this machine what it
sees (fresh goals from actions, the e-stop, closed inputs, servo faults) and does what :meth:`SafeState.
step` decides; the table is also in the README:

========  =====================================================================  ===============================
state     entered when                                                           does
========  =====================================================================  ===============================
WAIT      start: the pose is read, torque is off                                 nothing until the first fresh
                                                                                 goal (torque is never enabled
                                                                                 for a chain that never ran)
RUN       a fresh goal from an action (not the controller's watchdog), no cause  follows goals through the
          to hold                                                                safety filter
HOLD      no fresh goal for ``hold_s``; e-stop hold; e-stop input silent for      keeps the present pose
          ``estop_silence_s``; an input closed for good; a servo fault
          (overload, overheat, no reading); when every cause is gone it
          returns to RUN from the present pose, with the slow start
PARK      HOLD for ``park_after_s``, or at once for a cause that cannot clear     moves in joint space at
          (a closed input) -- with ``on_fault=park``                              ``park_speed_rad_s`` to the
                                                                                 rest pose; an e-stop hold
                                                                                 freezes it where it is
LIMP      parked; ``on_fault=release`` instead of parking; e-stop ``release``     torque off; reached by a fault
                                                                                 the node exits with one line
========  =====================================================================  ===============================

``on_fault=hold`` keeps HOLD for as long as the node runs (a human decides).  An e-stop ``release``
makes the arm limp but is not a fault: clearing the e-stop goes back to WAIT, and the next fresh goal
starts again from the present pose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from so101_deploy.core.messages import JOINT_NAMES, N_JOINTS
from so101_deploy.core.settings import Setting, SettingError

WAIT, RUN, HOLD, PARK, LIMP = "wait", "run", "hold", "park", "limp"
ON_FAULT = ("park", "hold", "release")
# Rest pose (rad): arm folded back over its base as the SO-101 stands when unpowered, gripper closed;
# clamped into the calibrated limits at start.  Measure your own arm's and set SO101_REST_POSE_RAD.
DEFAULT_REST_POSE_RAD = (0.0, -1.57, 1.57, 0.9, 0.0, 0.0)
PARK_TOLERANCE_RAD = 0.02

SETTINGS = (
    Setting("SO101_HOLD_S", "float", 1.0, "no fresh goal from an action for this long -> HOLD", min=0.05,
            max=60.0),
    Setting("SO101_PARK_AFTER_S", "float", 10.0, "HOLD for this long -> what SO101_ON_FAULT says", min=0.0,
            max=3600.0),
    Setting("SO101_ON_FAULT", "choice", "park", "after a long hold or a dead input: park (move to the rest pose, "
            "then torque off and exit), hold (keep holding) or release (torque off and exit)", choices=ON_FAULT),
    Setting("SO101_PARK_SPEED_RAD_S", "float", 0.3, "joint speed while parking (rad/s)", min=0.01, max=0.3),
    Setting("SO101_REST_POSE_RAD", "str", ",".join(f"{v:g}" for v in DEFAULT_REST_POSE_RAD),
            f"the rest pose, {N_JOINTS} comma-separated angles (rad) in the order {', '.join(JOINT_NAMES)}"),
    Setting("SO101_ESTOP_SILENCE_S", "float", 0.5, "the wired e-stop input silent for this long counts as hold",
            min=0.1, max=10.0),
)


def rest_pose_from_settings(settings) -> np.ndarray:
    raw = settings["SO101_REST_POSE_RAD"]
    try:
        pose = np.array([float(v) for v in raw.split(",")], dtype=np.float64)
    except ValueError:
        pose = np.array([])
    if pose.shape != (N_JOINTS,) or not np.all(np.isfinite(pose)):
        raise SettingError(f"{settings.node}: SO101_REST_POSE_RAD={raw!r} must be {N_JOINTS} comma-separated "
                           f"angles (rad): {', '.join(JOINT_NAMES)}")
    return pose


@dataclass
class Decision:
    """What the servo node does this tick."""

    state: str
    torque: bool  # torque should be on
    goal_rad: np.ndarray | None = None  # PARK: the goal to write (already speed-bounded)
    entered: str | None = None  # the state entered on this tick, if any (for events and logs)
    reason: str = ""  # why the present state (for the log and the joint_state metadata)
    exit_reason: str | None = None  # LIMP by a fault: the node exits with this line


@dataclass
class SafeState:
    """The state machine; times are monotonic seconds of the servo node's own clock."""

    rest_pose_rad: np.ndarray
    hold_s: float = 1.0
    park_after_s: float = 10.0
    on_fault: str = "park"
    park_speed_rad_s: float = 0.3
    estop_silence_s: float = 0.5
    estop_wired: bool = False
    state: str = WAIT
    reason: str = "waiting for the first goal"
    _last_fresh_s: float | None = None
    _hold_since_s: float | None = None
    _last_estop_s: float | None = None
    _started_s: float | None = None
    _estop: int = 0
    _closed: list[str] = field(default_factory=list)
    _faults: dict[str, str] = field(default_factory=dict)
    _park_goal: np.ndarray | None = None
    _park_tick_s: float | None = None

    def __post_init__(self) -> None:
        if self.on_fault not in ON_FAULT:
            raise ValueError(f"on_fault {self.on_fault!r}: expected one of {ON_FAULT}")
        self.rest_pose_rad = np.asarray(self.rest_pose_rad, dtype=np.float64)

    @classmethod
    def from_settings(cls, settings, rest_pose_rad: np.ndarray, estop_wired: bool) -> "SafeState":
        return cls(rest_pose_rad, hold_s=settings["SO101_HOLD_S"], park_after_s=settings["SO101_PARK_AFTER_S"],
                   on_fault=settings["SO101_ON_FAULT"], park_speed_rad_s=settings["SO101_PARK_SPEED_RAD_S"],
                   estop_silence_s=settings["SO101_ESTOP_SILENCE_S"], estop_wired=estop_wired)

    # --- what the node sees -------------------------------------------------------------------------
    def on_fresh_goal(self, now_s: float) -> None:
        """A goal computed from an action (not a watchdog hold) arrived."""
        self._last_fresh_s = now_s

    def on_estop(self, value: int, now_s: float) -> None:
        """The e-stop state (0 clear, 1 hold, 2 release): the input's and the file's, combined by the node."""
        self._estop = int(value)

    def on_estop_message(self, now_s: float) -> None:
        self._last_estop_s = now_s

    def on_input_closed(self, input_id: str) -> None:
        if input_id not in self._closed:
            self._closed.append(input_id)

    def set_fault(self, key: str, description: str | None) -> None:
        """A servo fault (overload, overheat, no reading) that holds while it lasts; None clears it."""
        if description is None:
            self._faults.pop(key, None)
        else:
            self._faults[key] = description

    @property
    def wants_torque(self) -> bool:
        return self.state in (RUN, HOLD, PARK)

    # --- the decision -----------------------------------------------------------------------------
    def causes(self, now_s: float) -> tuple[list[str], bool]:
        """Why the arm must not follow goals now, and whether any cause is permanent."""
        if self._started_s is None:
            self._started_s = now_s
        out = [f"input {i!r} closed (its node is gone)" for i in self._closed]
        permanent = bool(out)
        if self._estop == 1:
            out.append("e-stop hold")
        if self.estop_wired:
            last = self._last_estop_s if self._last_estop_s is not None else self._started_s
            if now_s - last > self.estop_silence_s:
                out.append(f"e-stop input silent for {now_s - last:.1f} s")
        if self._last_fresh_s is None or now_s - self._last_fresh_s > self.hold_s:
            if self.state != WAIT:
                age = "ever" if self._last_fresh_s is None else f"{now_s - self._last_fresh_s:.1f} s"
                out.append(f"no fresh goal from an action for {age}")
        out += list(self._faults.values())
        return out, permanent

    def step(self, now_s: float, present_rad: np.ndarray, tick_s: float) -> Decision:
        """Advance the machine; ``present_rad`` is the last goal held (or the pose read), ``tick_s``
        the time since the previous tick (for the park speed)."""
        causes, permanent = self.causes(now_s)
        entered = None
        if self._estop == 2 and self.state != LIMP:
            return self._enter(LIMP, "e-stop release: torque off (clear the e-stop to start again)", now_s)
        if self.state == LIMP:
            if self._estop == 0 and self.reason.startswith("e-stop release") and not permanent:
                self.state, self.reason, self._last_fresh_s = WAIT, "e-stop cleared: waiting for a fresh goal", None
                return Decision(WAIT, False, entered=WAIT, reason=self.reason)
            return Decision(LIMP, False, reason=self.reason)
        if self.state == WAIT:
            if permanent:
                return self._enter(LIMP, f"{causes[0]} before the arm ever moved; torque was never enabled", now_s,
                                   exit_=True)
            fresh = self._last_fresh_s is not None and now_s - self._last_fresh_s <= self.hold_s
            if fresh and not causes:
                self.state, self.reason = RUN, "following goals"
                return Decision(RUN, True, entered=RUN, reason=self.reason)
            return Decision(WAIT, False, reason="; ".join(causes) or self.reason)
        if self.state == RUN:
            if not causes:
                return Decision(RUN, True, reason="following goals")
            self.state, self._hold_since_s, entered = HOLD, now_s, HOLD
        if self.state == HOLD:
            self.reason = "; ".join(causes)
            if not causes:
                self.state, self._hold_since_s, self.reason = RUN, None, "following goals"
                return Decision(RUN, True, entered=RUN, reason="resumed from the present pose")
            if self.on_fault != "hold" and (permanent or now_s - self._hold_since_s >= self.park_after_s):
                why = self.reason if permanent else f"held {now_s - self._hold_since_s:.1f} s ({self.reason})"
                if self.on_fault == "release":
                    return self._enter(LIMP, f"{why}: torque released (SO101_ON_FAULT=release)", now_s, exit_=True)
                self.state, self.reason = PARK, f"{why}: parking"
                self._park_goal, self._park_tick_s = np.asarray(present_rad, dtype=np.float64).copy(), now_s
                entered = PARK
            else:
                return Decision(HOLD, True, entered=entered, reason=self.reason)
        # PARK: a bounded joint-space move to the rest pose, then LIMP; an e-stop hold freezes it where it is
        step = 0.0 if self._estop == 1 else self.park_speed_rad_s * max(0.0, min(tick_s, 0.1))
        delta = np.clip(self.rest_pose_rad - self._park_goal, -step, step)
        self._park_goal = self._park_goal + delta
        if np.max(np.abs(self.rest_pose_rad - self._park_goal)) <= PARK_TOLERANCE_RAD:
            return self._enter(LIMP, f"{self.reason.removesuffix(': parking')}: parked, torque off", now_s,
                               exit_=True)
        return Decision(PARK, True, goal_rad=self._park_goal.copy(), entered=entered, reason=self.reason)

    def _enter(self, state: str, reason: str, now_s: float, exit_: bool = False) -> Decision:
        self.state, self.reason = state, reason
        return Decision(state, False, entered=state, reason=reason, exit_reason=reason if exit_ else None)
