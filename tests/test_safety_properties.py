"""Property tests: random and adversarial input streams through the controller + safety filter.

Whatever the stream (NaN, +-inf, 1e30, bursts of identical huge actions, long gaps, e-stop
toggles, present poses outside the limits), every goal that comes out must be finite, inside the
limits (or moving inward from an outside start, never farther out), and within the per-step bound
of the goal before it -- the first one within the bound of the present pose at reset.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from so101_deploy.arm.controller import CartesianController, ControlLoop, ControllerError, JointDeltaController
from so101_deploy.arm.kinematics import Kinematics
from so101_deploy.arm.safety import EVENTS, JointLimits, SafetyFilter

# 60 examples keep the suite fast; SO101_HYPOTHESIS_EXAMPLES=2000 for a deeper run by hand
SETTINGS = settings(max_examples=int(os.environ.get("SO101_HYPOTHESIS_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
_KIN: Kinematics | None = None


def kin() -> Kinematics:
    global _KIN
    if _KIN is None:
        _KIN = Kinematics()
    return _KIN


ADVERSARIAL = [np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-300, 0.0, 1.0, -1.0]
value = st.one_of(st.floats(-3.0, 3.0), st.sampled_from(ADVERSARIAL))
dt_s = st.one_of(st.floats(0.0, 0.05), st.floats(0.05, 3.0))  # mostly 50 Hz, sometimes long gaps
# present poses: mostly inside the model's ranges, sometimes well outside them
pose = st.lists(st.floats(-3.5, 3.5), min_size=6, max_size=6).map(np.array)

event = st.one_of(
    st.tuples(st.just("joint_state"), pose, dt_s),
    st.tuples(st.just("action"), st.sampled_from(["cartesian", "joint_delta"]),
              st.lists(value, min_size=6, max_size=6), dt_s),
    st.tuples(st.just("burst"), st.sampled_from(["cartesian", "joint_delta"]), value,
              st.integers(2, 30), dt_s),
    st.tuples(st.just("tick"), dt_s),
    st.tuples(st.just("estop"), st.sampled_from([0, 1, 2]), dt_s),
)
step_rad = st.one_of(st.floats(0.01, 0.3), st.lists(st.floats(0.01, 0.3), min_size=6, max_size=6).map(np.array))


class Checker:
    """Holds the reference of the per-step bound and asserts the invariant on each emitted goal."""

    def __init__(self, safety: SafetyFilter):
        self.safety = safety
        self.limits = safety.limits
        self.step = np.broadcast_to(safety.max_step_rad, (6,))
        self.ref: np.ndarray | None = None
        self.emitted = 0

    def started(self, present: np.ndarray) -> None:
        if self.ref is None:
            self.ref = present.copy()

    def check(self, goal: np.ndarray) -> None:
        assert self.ref is not None, "a goal came out before the present pose was known"
        assert goal.shape == (6,) and np.all(np.isfinite(goal)), goal
        assert np.all(np.abs(goal - self.ref) <= self.step + 1e-9), (goal, self.ref, self.step)
        lo, hi = self.limits.lower_rad, self.limits.upper_rad
        below, above = goal < lo, goal > hi
        # outside only where the previous goal was outside on the same side, never farther out
        # (moving inward, or holding still: an e-stop or a rejected goal right after an outside start)
        assert np.all(self.ref[below] <= goal[below]), (goal, self.ref)
        assert np.all(self.ref[above] >= goal[above]), (goal, self.ref)
        self.ref = goal.copy()
        self.emitted += 1


def make_loop(max_step, watchdog_s, mode="auto", lock_wrist=False) -> ControlLoop:
    k = kin()
    safety = SafetyFilter(JointLimits.from_model(k), max_step, watchdog_s, slow_start_s=0.5)
    return ControlLoop(safety, CartesianController(k, lock_wrist=lock_wrist), JointDeltaController(0.2), mode=mode)


def record_reported_events(safety: SafetyFilter) -> collections.Counter:
    """Every event the filter returns from filter()/on_tick() (goal or not), counted as it leaves the filter."""
    reported: collections.Counter = collections.Counter()

    def recording(method):
        def call(*args, **kwargs):
            goal, events = method(*args, **kwargs)
            reported.update(events)
            return goal, events
        return call

    safety.filter = recording(safety.filter)
    safety.on_tick = recording(safety.on_tick)
    return reported


@SETTINGS
@given(events=st.lists(event, min_size=1, max_size=40), max_step=step_rad, watchdog_s=st.floats(0.05, 1.0),
       lock_wrist=st.booleans())
def test_every_goal_is_finite_inside_limits_and_step_bounded(events, max_step, watchdog_s, lock_wrist):
    loop = make_loop(max_step, watchdog_s, lock_wrist=lock_wrist)
    chk = Checker(loop.safety)
    reported = record_reported_events(loop.safety)
    now = 0.0
    last_fresh: float | None = None  # time of the last goal the filter accepted (or of the reset)
    estop = False
    estop_changes = held_actions = nonfinite_actions = 0  # counted here, from the stream itself
    for ev in events:
        now += ev[-1]
        kind = ev[0]
        if kind == "joint_state":
            loop.on_joint_state(ev[1], now)
            if chk.ref is None:
                chk.started(ev[1])
                last_fresh = now
        elif kind in ("action", "burst"):
            space = ev[1]
            dim = 4 if space == "cartesian" else 6
            actions = [np.array(ev[2][:dim])] if kind == "action" else [np.full(dim, ev[2])] * ev[3]
            for a in actions:
                before = loop.safety.last_goal_rad
                if loop.present_s is not None and now - loop.present_s > watchdog_s:
                    with pytest.raises(ControllerError, match="no fresh joint_state"):
                        loop.on_action(a, space, now)
                    now += 0.02
                    continue
                out = loop.on_action(a, space, now)
                if chk.ref is None:
                    assert out is None  # nothing before the first joint reading
                    continue
                chk.check(out.goal_rad)
                if estop:
                    held_actions += 1
                    assert "estop_hold" in out.events
                    np.testing.assert_array_equal(out.goal_rad, before)
                elif not np.all(np.isfinite(a)):
                    nonfinite_actions += 1
                    assert "rejected_nonfinite" in out.events
                    np.testing.assert_array_equal(out.goal_rad, before)
                else:
                    last_fresh = now
                now += 0.02
        elif kind == "tick":
            out = loop.on_tick(now)
            if chk.ref is None:
                assert out is None
                continue
            if now - last_fresh > watchdog_s:
                assert out is not None and out.source == "watchdog", "watchdog did not hold after silence"
            if out is not None:
                chk.check(out.goal_rad)
        elif kind == "estop":
            loop.on_estop(ev[1])
            estop_changes += (ev[1] != 0) != estop
            estop = ev[1] != 0
    # an e-stop change is reported with the filter's next call: make one so none is left pending
    loop.safety.on_tick(np.zeros(6), now)
    # every event counted was reported exactly once, and nothing else was counted
    assert loop.safety.events_total == reported
    assert set(reported) <= set(EVENTS)
    # the counts the stream itself determines
    assert reported["estop_engaged"] + reported["estop_released"] == estop_changes
    assert reported["estop_hold"] == held_actions
    assert reported["rejected_nonfinite"] == nonfinite_actions


@SETTINGS
@given(goals=st.lists(st.tuples(st.lists(value, min_size=6, max_size=6).map(np.array), dt_s), min_size=1,
                      max_size=60),
       present=pose, max_step=step_rad, lower=st.lists(st.floats(-3.0, 0.0), min_size=6, max_size=6),
       width=st.lists(st.floats(0.0, 3.0), min_size=6, max_size=6), slow_start_s=st.floats(0.0, 2.0))
def test_safety_filter_alone_on_arbitrary_goals(goals, present, max_step, lower, width, slow_start_s):
    limits = JointLimits(np.array(lower), np.array(lower) + np.array(width))
    f = SafetyFilter(limits, max_step, 0.5, slow_start_s=slow_start_s)
    f.reset(present, 0.0)
    chk = Checker(f)
    chk.started(present)
    now = 0.0
    for goal, dt in goals:
        now += dt
        out, events = f.filter(goal, now)
        chk.check(out)
        tick, _ = f.on_tick(present * 2.0, now + 0.01)  # a wild present reading must not make a jump either
        if tick is not None:
            chk.check(tick)
    assert chk.emitted >= len(goals)


@SETTINGS
@given(actions=st.lists(st.lists(value, min_size=6, max_size=6), min_size=1, max_size=10))
def test_mode_mismatch_is_rejected_and_changes_nothing(actions):
    loop = make_loop(0.1, 0.5, mode="cartesian")
    q = np.array([0.0, -0.3, 0.6, 1.5, 1.5, 0.5])
    loop.on_joint_state(q, 0.0)
    first = loop.on_action(np.zeros(4), "cartesian", 0.02).goal_rad
    target = loop.cartesian.target_m.copy()
    for a in actions:
        with pytest.raises(ControllerError, match="does not match the configured control mode"):
            loop.on_action(np.array(a), "joint_delta", 0.04)
    np.testing.assert_array_equal(loop.safety.last_goal_rad, first)
    np.testing.assert_array_equal(loop.cartesian.target_m, target)
