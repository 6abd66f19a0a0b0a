"""SafetyFilter and JointLimits: each rule on its own, with the events it reports."""

import numpy as np
import pytest

from so101_deploy.arm.calibration import Calibration
from so101_deploy.arm.safety import EVENTS, JointLimits, SafetyError, SafetyFilter

LIMITS = JointLimits(np.array([-1.9, -1.7, -1.6, -1.6, -2.7, -0.17]), np.array([1.9, 1.7, 1.6, 1.6, 2.8, 1.7]))
STEP = 0.1


def make(watchdog_s=0.5, slow_start_s=0.0, present=np.zeros(6)):
    f = SafetyFilter(LIMITS, STEP, watchdog_s, slow_start_s=slow_start_s)
    f.reset(present, 0.0)
    return f


def test_limits_from_model_and_intersect():
    model = JointLimits.from_model()
    assert model.lower_rad[1] == pytest.approx(-1.74533, abs=1e-5)
    assert model.upper_rad[5] == pytest.approx(1.74533, abs=1e-5)
    tight = JointLimits(np.full(6, -0.5), np.full(6, 3.0))
    both = model.intersect(tight)
    np.testing.assert_allclose(both.lower_rad, np.maximum(model.lower_rad, -0.5))
    np.testing.assert_allclose(both.upper_rad, np.minimum(model.upper_rad, 3.0))
    with pytest.raises(SafetyError, match="do not overlap"):
        model.intersect(JointLimits(np.full(6, 2.9), np.full(6, 3.0)))


def test_limits_with_the_example_calibration_are_tighter_or_equal():
    lower, upper = Calibration.example().limits_rad()
    both = JointLimits.from_model().intersect(JointLimits(lower, upper))
    assert np.all(both.lower_rad >= JointLimits.from_model().lower_rad)
    assert np.all(both.upper_rad <= np.minimum(upper, JointLimits.from_model().upper_rad) + 1e-12)


@pytest.mark.parametrize("lower,upper,match", [
    (np.zeros(5), np.ones(5), "6 joint values"),
    (np.array([0, 0, 0, 0, 0, np.nan]), np.ones(6), "finite"),
    (np.ones(6), np.zeros(6), "lower > upper"),
])
def test_bad_limits_are_rejected(lower, upper, match):
    with pytest.raises(SafetyError, match=match):
        JointLimits(lower, upper)


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_step_rad=0.0, watchdog_s=0.5), "max_step_rad"),
    (dict(max_step_rad=np.ones(5), watchdog_s=0.5), "max_step_rad"),
    (dict(max_step_rad=np.inf, watchdog_s=0.5), "max_step_rad"),
    (dict(max_step_rad=0.1, watchdog_s=0.0), "watchdog_s"),
])
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(SafetyError, match=match):
        SafetyFilter(LIMITS, **kwargs)


def test_no_goal_before_the_present_pose_is_known():
    f = SafetyFilter(LIMITS, STEP, 0.5)
    with pytest.raises(SafetyError, match="present pose"):
        f.filter(np.zeros(6), 0.0)
    assert f.on_tick(np.zeros(6), 5.0) == (None, [])
    with pytest.raises(SafetyError, match="finite"):
        f.reset(np.full(6, np.nan), 0.0)


def test_small_goal_passes_unchanged():
    f = make()
    goal = np.array([0.05, -0.05, 0.02, 0.0, 0.09, 0.01])
    out, events = f.filter(goal, 0.02)
    np.testing.assert_array_equal(out, goal)
    assert events == []


def test_step_bound_and_limit_clamp():
    f = make()
    out, events = f.filter(np.array([5.0, -0.3, 0.0, 0.0, 0.0, 0.9]), 0.02)
    # clamped to 1.9, then the arm's move is shortened as a whole: same direction, largest joint = STEP
    np.testing.assert_allclose(out, [STEP, -0.3 * STEP / 1.9, 0, 0, 0, STEP])
    assert events == ["clamped_limit", "clamped_step"]
    # walking toward a goal beyond the limit stops at the limit
    for i in range(40):
        out, _ = f.filter(np.array([5.0, 0, 0, 0, 0, 0]), 0.04 + 0.02 * i)
    assert out[0] == pytest.approx(LIMITS.upper_rad[0])
    assert f.events_total["clamped_limit"] == 41


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_goal_holds_the_last_safe_goal(bad):
    f = make()
    first, _ = f.filter(np.full(6, 0.05), 0.02)
    goal = np.full(6, 0.05)
    goal[2] = bad
    out, events = f.filter(goal, 0.04)
    np.testing.assert_array_equal(out, first)
    assert events == ["rejected_nonfinite"]


def test_wrong_shape_goal_holds():
    f = make()
    out, events = f.filter(np.zeros(5), 0.02)
    np.testing.assert_array_equal(out, np.zeros(6))
    assert events == ["rejected_shape"]
    assert f.filter("not a goal", 0.03)[1] == ["rejected_shape"]


def test_slow_start_ramps_the_step():
    f = make(slow_start_s=1.0)
    out, events = f.filter(np.full(6, 0.09), 0.0)  # right after reset: a quarter of the step
    np.testing.assert_allclose(out, np.full(6, 0.025))
    assert events == ["slow_start"]
    out2, _ = f.filter(out + 1.0, 0.5)  # half way: 0.25 + 0.75 * 0.5 = 62.5 % of the step
    np.testing.assert_allclose(out2 - out, np.full(6, 0.0625))
    out3, _ = f.filter(out2 + 1.0, 2.0)
    np.testing.assert_allclose(out3 - out2, np.full(6, STEP))


def test_start_outside_the_limits_moves_inward_only():
    present = np.array([0.0, -1.84, 1.71, 0.0, 0.0, 0.0])  # pick-101's rest pose is below shoulder_lift's limit
    f = make(present=present)
    out, events = f.filter(present, 0.02)  # hold where it is: still outside, the filter pulls inward
    assert "outside_limit_recovering" in events
    assert -1.84 < out[1] <= LIMITS.lower_rad[1] and LIMITS.upper_rad[2] <= out[2] < 1.71
    np.testing.assert_allclose(out - present, [0, STEP, -STEP * 0.11 / 0.14, 0, 0, 0])  # toward (-1.7, 1.6)
    out, events = f.filter(present, 0.04)
    assert out[1] == pytest.approx(LIMITS.lower_rad[1]) and out[2] == pytest.approx(LIMITS.upper_rad[2])
    assert "outside_limit_recovering" not in events


def test_watchdog_holds_the_present_pose_after_silence():
    f = make(watchdog_s=0.5)
    f.filter(np.full(6, 0.05), 0.1)
    assert f.on_tick(np.full(6, 0.04), 0.55) == (None, [])  # 0.45 s since the last goal
    present = np.array([0.02, 0.03, 0.04, 0.0, 0.0, 5.0])  # gripper reading beyond its limit
    out, events = f.on_tick(present, 0.7)
    assert events == ["watchdog_hold"]
    np.testing.assert_allclose(out, [0.02, 0.03, 0.04, 0, 0, 0.05 + STEP])  # stepped toward the clamped pose
    for t in (0.72, 0.74, 0.76, 0.78, 0.8, 0.82, 0.84, 0.86, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 1.0, 1.02, 1.04):
        out, events = f.on_tick(present + 1.0, t)  # the hold pose is fixed at the trip, not re-read
        assert events == []
    np.testing.assert_allclose(out, [0.02, 0.03, 0.04, 0, 0, LIMITS.upper_rad[5]])
    assert f.watchdog_holding
    out2, events = f.filter(np.full(6, 0.05), 1.1)
    assert events[0] == "watchdog_resume" and not f.watchdog_holding
    assert np.all(np.abs(out2 - out) <= STEP + 1e-12)
    assert f.on_tick(present, 1.2) == (None, [])


def test_rejected_goals_do_not_feed_the_watchdog():
    f = make(watchdog_s=0.5)
    for t in np.arange(0.0, 1.0, 0.05):
        f.filter(np.full(6, np.nan), t)
    out, events = f.on_tick(np.zeros(6), 1.0)
    assert events == ["watchdog_hold"]


def test_estop_holds_until_released():
    f = make()
    held, _ = f.filter(np.full(6, 0.05), 0.02)
    f.estop(True)
    out, events = f.filter(np.full(6, 0.1), 0.04)
    np.testing.assert_array_equal(out, held)
    assert events == ["estop_engaged", "estop_hold"]
    assert f.filter(np.full(6, -0.1), 0.06)[1] == ["estop_hold"]
    f.estop(False)
    out, events = f.filter(np.full(6, 0.1), 0.08)
    assert events == ["estop_released"]
    np.testing.assert_allclose(out, np.full(6, 0.1))
    assert f.events_total["estop_hold"] == 2


# Each event of safety.EVENTS, produced by driving a filter into its situation through the public
# calls: (situation -> the filter and the events of its last call, the events that call must report).
def _clamped_limit():
    f = make(present=np.array([1.85, 0, 0, 0, 0, 0]))
    return f, f.filter(np.array([1.95, 0, 0, 0, 0, 0]), 0.02)[1]  # past the limit, within one step


def _clamped_step():
    f = make()
    return f, f.filter(np.array([0.5, 0, 0, 0, 0, 0]), 0.02)[1]


def _slow_start():
    f = make(slow_start_s=1.0)
    return f, f.filter(np.full(6, 0.05), 0.0)[1]  # within the full step, beyond the starting quarter


def _outside_limit_recovering():
    present = np.array([0.0, -1.85, 0, 0, 0, 0])  # 0.15 below shoulder_lift's limit: more than one step
    f = make(present=present)
    return f, f.filter(present, 0.02)[1]  # holding there is pulled one step inward, still outside


def _rejected_nonfinite():
    f = make()
    return f, f.filter(np.array([0, 0, np.nan, 0, 0, 0]), 0.02)[1]


def _rejected_shape():
    f = make()
    return f, f.filter(np.zeros(7), 0.02)[1]


def _watchdog_hold():
    f = make(watchdog_s=0.5)
    return f, f.on_tick(np.zeros(6), 0.6)[1]


def _watchdog_resume():
    f = make(watchdog_s=0.5)
    f.on_tick(np.zeros(6), 0.6)
    return f, f.filter(np.zeros(6), 0.62)[1]


def _estop_hold():
    f = make()
    f.estop(True)
    f.on_tick(np.zeros(6), 0.01)  # reports estop_engaged
    return f, f.filter(np.full(6, 0.05), 0.02)[1]


def _estop_engaged():
    f = make()
    f.estop(True)
    return f, f.filter(np.full(6, 0.05), 0.02)[1]


def _estop_released():
    f = make()
    f.estop(True)
    f.filter(np.zeros(6), 0.02)
    f.estop(False)
    return f, f.filter(np.full(6, 0.05), 0.04)[1]


SITUATIONS = {
    "clamped_limit": (_clamped_limit, ["clamped_limit"]),
    "clamped_step": (_clamped_step, ["clamped_step"]),
    "slow_start": (_slow_start, ["slow_start"]),
    "outside_limit_recovering": (_outside_limit_recovering,
                                 ["clamped_limit", "clamped_step", "outside_limit_recovering"]),
    "rejected_nonfinite": (_rejected_nonfinite, ["rejected_nonfinite"]),
    "rejected_shape": (_rejected_shape, ["rejected_shape"]),
    "watchdog_hold": (_watchdog_hold, ["watchdog_hold"]),
    "watchdog_resume": (_watchdog_resume, ["watchdog_resume"]),
    "estop_hold": (_estop_hold, ["estop_hold"]),
    "estop_engaged": (_estop_engaged, ["estop_engaged", "estop_hold"]),
    "estop_released": (_estop_released, ["estop_released"]),
}


def test_every_event_has_a_situation():
    assert set(SITUATIONS) == set(EVENTS)


@pytest.mark.parametrize("event", EVENTS)
def test_each_event_is_produced_by_its_situation_and_counted(event):
    situation, want = SITUATIONS[event]
    f, events = situation()
    assert events == want
    assert f.events_total[event] == 1
