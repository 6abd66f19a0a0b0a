"""The arm side's safe-state machine, as pure logic: every row of its table, driven by hand-made time."""

import numpy as np
import pytest

from so101_deploy.arm.safe_state import HOLD, LIMP, PARK, RUN, WAIT, SafeState

REST = np.array([0.0, -1.0, 1.0, 0.5, 0.0, 0.0])
START = np.zeros(6)


def machine(**kw) -> SafeState:
    return SafeState(REST.copy(), hold_s=1.0, park_after_s=2.0, park_speed_rad_s=0.3, **kw)


def run_until(s: SafeState, t0: float, t1: float, pose=START, dt=0.02):
    """Step from t0 to t1 (fresh goals only if the caller gives them); returns the decisions."""
    out, t = [], t0
    while t < t1:
        out.append(s.step(t, pose, dt))
        t += dt
    return out


def test_torque_waits_for_the_first_fresh_goal_then_runs():
    s = machine()
    assert s.step(0.0, START, 0.02).state == WAIT and not s.wants_torque
    assert s.step(5.0, START, 0.02).state == WAIT  # no goal ever: no torque, no hold, no park
    s.on_fresh_goal(5.0)
    d = s.step(5.01, START, 0.02)
    assert d.state == RUN and d.entered == RUN and d.torque


def test_no_fresh_goal_holds_then_resumes_when_goals_come_back():
    s = machine()
    s.on_fresh_goal(0.0)
    assert s.step(0.01, START, 0.02).state == RUN
    d = s.step(1.2, START, 0.02)
    assert d.state == HOLD and d.entered == HOLD and d.torque and "no fresh goal" in d.reason
    s.on_fresh_goal(1.5)
    d = s.step(1.51, START, 0.02)
    assert d.state == RUN and d.entered == RUN


def test_a_long_hold_parks_at_bounded_speed_then_goes_limp_and_exits():
    s = machine()
    s.on_fresh_goal(0.0)
    s.step(0.01, START, 0.02)
    s.step(1.2, START, 0.02)  # HOLD
    decisions = run_until(s, 3.3, 30.0)
    park = [d for d in decisions if d.state == PARK]
    assert park[0].entered == PARK and "held" in park[0].reason
    goals = np.array([d.goal_rad for d in park])
    assert np.abs(np.diff(goals, axis=0)).max() <= 0.3 * 0.02 + 1e-12  # <= park speed x tick
    assert np.abs(goals[0] - START).max() <= 0.3 * 0.02 + 1e-12  # from where it held, no jump
    limp = next(d for d in decisions if d.state == LIMP)
    assert limp.entered == LIMP and not limp.torque and limp.exit_reason and "parked" in limp.exit_reason
    np.testing.assert_allclose(goals[-1], REST, atol=0.02 + 0.3 * 0.02)  # the last step before LIMP


def test_a_closed_input_parks_at_once_and_before_any_motion_goes_limp():
    s = machine()
    s.on_input_closed("goal")
    d = s.step(0.0, START, 0.02)
    assert d.state == LIMP and d.exit_reason and "never enabled" in d.exit_reason
    s = machine()
    s.on_fresh_goal(0.0)
    s.step(0.01, START, 0.02)
    s.on_input_closed("goal")
    assert s.step(0.05, START, 0.02).state == PARK  # no need to wait park_after_s: it cannot come back


@pytest.mark.parametrize("on_fault, last", [("hold", HOLD), ("release", LIMP)])
def test_on_fault_hold_keeps_holding_and_release_lets_go(on_fault, last):
    s = machine(on_fault=on_fault)
    s.on_fresh_goal(0.0)
    s.step(0.01, START, 0.02)
    decisions = run_until(s, 1.2, 60.0)
    assert decisions[-1].state == last and PARK not in {d.state for d in decisions}
    if on_fault == "release":
        entered = next(d for d in decisions if d.entered == LIMP)
        assert entered.exit_reason and "SO101_ON_FAULT=release" in entered.exit_reason
    else:
        assert decisions[-1].torque


def test_estop_hold_release_clear():
    s = machine()
    s.on_fresh_goal(0.0)
    s.step(0.01, START, 0.02)
    s.on_estop(1, 0.1)
    assert s.step(0.1, START, 0.02).state == HOLD
    s.on_estop(2, 0.2)
    d = s.step(0.2, START, 0.02)
    assert d.state == LIMP and not d.torque and d.exit_reason is None  # an e-stop release is not a fault
    s.on_estop(0, 0.3)
    d = s.step(0.3, START, 0.02)
    assert d.state == WAIT and not d.torque  # cleared: waits for a fresh goal, never resumes an old one
    s.on_fresh_goal(0.4)
    assert s.step(0.41, START, 0.02).state == RUN


def test_an_estop_hold_freezes_a_park():
    s = machine()
    s.on_fresh_goal(0.0)
    s.step(0.01, START, 0.02)
    s.on_input_closed("goal")
    first = s.step(0.05, START, 0.02)
    assert first.state == PARK
    s.on_estop(1, 0.06)
    frozen = [d.goal_rad for d in run_until(s, 0.06, 1.0)]
    assert all(np.array_equal(g, frozen[0]) for g in frozen)
    s.on_estop(0, 1.0)
    moving = [d.goal_rad for d in run_until(s, 1.0, 1.2)]
    assert not np.array_equal(moving[-1], frozen[0])


def test_a_wired_estop_that_goes_silent_holds():
    s = machine(estop_wired=True)
    s.on_estop_message(0.0)
    s.on_fresh_goal(0.0)
    assert s.step(0.01, START, 0.02).state == RUN
    s.on_fresh_goal(0.7)
    d = s.step(0.7, START, 0.02)  # 0.7 s without an e-stop message
    assert d.state == HOLD and "e-stop input silent" in d.reason
    s.on_estop_message(0.8)
    s.on_fresh_goal(0.8)
    assert s.step(0.8, START, 0.02).state == RUN


def test_a_servo_fault_holds_while_it_lasts():
    s = machine()
    s.on_fresh_goal(0.0)
    s.step(0.01, START, 0.02)
    s.set_fault("overheat", "overheat reported by ids [3]")
    s.on_fresh_goal(0.1)
    assert s.step(0.1, START, 0.02).state == HOLD
    s.set_fault("overheat", None)
    s.on_fresh_goal(0.2)
    assert s.step(0.2, START, 0.02).state == RUN
