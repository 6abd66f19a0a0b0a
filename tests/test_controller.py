"""Controllers (Cartesian as the training env, joint-delta), the ControlLoop node logic, its settings,
and the controller node in a real dora dataflow."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from so101_deploy.arm.calibration import EXAMPLE_PATH, Calibration
from so101_deploy.arm.controller import (CartesianController, ControlLoop, ControllerError, JointDeltaController,
                                     Workspace, control_loop_from_settings)
from so101_deploy.arm.kinematics import GRIPPER_CLOSED_RAD, GRIPPER_OPEN_RAD, Kinematics
from so101_deploy.core.messages import decode, encode
from so101_deploy.arm.controller import SETTINGS as CONTROLLER_SETTINGS
from so101_deploy.core.settings import SettingError, Settings
from so101_deploy.arm.safety import JointLimits, SafetyFilter

Q = np.array([0.0, -0.3, 0.6, math.pi / 2, math.pi / 2, 1.07])


@pytest.fixture(scope="module")
def kin():
    return Kinematics()


def loop_of(kin, mode="auto", **env) -> ControlLoop:
    return control_loop_from_settings(Settings("controller", CONTROLLER_SETTINGS, {k: str(v) for k, v in env.items()}), kin)


# --- Cartesian controller --------------------------------------------------------------------

def test_cartesian_step_is_the_training_env_step(kin):
    ctrl = CartesianController(kin)
    ctrl.reset(Q)
    p0 = kin.site_pose(Q)[0]
    np.testing.assert_allclose(ctrl.target_m, p0)
    goal = ctrl.step(np.array([0.5, -1.0, 1.0, 0.3], np.float32), Q)
    target = p0 + np.array([0.01, -0.02, 0.02])
    np.testing.assert_allclose(ctrl.target_m, target, atol=1e-7)
    np.testing.assert_allclose(goal[:5], kin.ik_step(Q, target, damping=0.1, max_dq_rad=0.5, gain=0.5), atol=1e-9)
    assert goal[5] == pytest.approx((0.3 + 1) / 2 * (1.74533 + 0.17453) - 0.17453)
    # IK runs from the measured joints passed in, not from the last goal
    q_meas = Q + np.array([0.05, -0.02, 0.03, 0.0, 0.0, 0.0])
    goal2 = ctrl.step(np.zeros(4), q_meas)
    np.testing.assert_allclose(goal2[:5], kin.ik_step(q_meas, target, gain=0.5), atol=1e-9)


def test_cartesian_clips_actions_and_clamps_the_workspace(kin):
    ctrl = CartesianController(kin, workspace=Workspace())
    ctrl.reset(Q)
    p0 = ctrl.target_m.copy()
    goal = ctrl.step(np.array([1e30, 0.0, -1e30, 1e30]), Q)
    np.testing.assert_allclose(ctrl.target_m, p0 + [0.02, 0.0, -0.02])
    assert goal[5] == pytest.approx(GRIPPER_OPEN_RAD)
    for _ in range(100):
        goal = ctrl.step(np.array([1.0, -1.0, -1.0, -1.0]), Q)
    np.testing.assert_allclose(ctrl.target_m, [0.5, -0.3, 0.01])
    assert goal[5] == pytest.approx(GRIPPER_CLOSED_RAD)


def test_cartesian_nonfinite_action_leaves_the_target_and_yields_nan(kin):
    ctrl = CartesianController(kin)
    ctrl.reset(Q)
    target = ctrl.target_m.copy()
    goal = ctrl.step(np.array([np.nan, 0.0, 0.0, 0.0]), Q)
    assert np.all(np.isnan(goal))  # the safety filter turns this into a hold
    np.testing.assert_array_equal(ctrl.target_m, target)


def test_cartesian_errors(kin):
    ctrl = CartesianController(kin)
    with pytest.raises(ControllerError, match="reset"):
        ctrl.step(np.zeros(4), Q)
    ctrl.reset(Q)
    with pytest.raises(ControllerError, match=r"shape \(4,\)"):
        ctrl.step(np.zeros(6), Q)
    with pytest.raises(ControllerError, match="finite joint angles"):
        ctrl.step(np.zeros(4), np.full(6, np.inf))
    loop = loop_of(kin)
    with pytest.raises(ControllerError, match="joint_state"):
        loop.on_joint_state(np.zeros((3, 6)), 0.0)
    assert loop.present_rad is None and not loop.safety.started
    with pytest.raises(ControllerError, match="must be > 0"):
        CartesianController(kin, gain=0.0)


def test_wrist_lock_holds_wrist_roll_at_pi_over_2(kin):
    ctrl = CartesianController(kin, lock_wrist=True)
    q = Q.copy()
    q[4] = 1.2  # measured wrist_roll off the lock angle
    ctrl.reset(q)
    goal = ctrl.step(np.array([1.0, 1.0, 0.0, 0.0]), q)
    assert goal[4] == pytest.approx(math.pi / 2)
    free = CartesianController(kin)
    free.reset(q)
    assert free.step(np.array([1.0, 1.0, 0.0, 0.0]), q)[4] != pytest.approx(math.pi / 2)


# --- joint-delta controller --------------------------------------------------------------------

def test_joint_delta():
    ctrl = JointDeltaController(np.array([0.1, 0.1, 0.1, 0.2, 0.2, 0.5]))
    goal = ctrl.step(np.array([1.0, -0.5, 0.0, 7.0, -7.0, 0.2]), Q)
    np.testing.assert_allclose(goal, Q + [0.1, -0.05, 0.0, 0.2, -0.2, 0.1])
    assert np.all(np.isnan(ctrl.step(np.array([0, 0, 0, 0, 0, np.nan]), Q)))
    with pytest.raises(ControllerError, match=r"shape \(6,\)"):
        ctrl.step(np.zeros(4), Q)
    with pytest.raises(ControllerError, match="scale_rad"):
        JointDeltaController(np.array([0.1, 0.1]))


# --- ControlLoop ---------------------------------------------------------------------------------

def test_nothing_is_emitted_before_the_first_joint_state(kin):
    loop = loop_of(kin)
    assert loop.on_action(np.zeros(4), "cartesian", 0.0) is None
    assert loop.on_tick(10.0) is None
    loop.on_joint_state(np.stack([Q, np.zeros(6)]), 0.0)
    out = loop.on_action(np.zeros(4), "cartesian", 0.02)
    assert out is not None and out.mode == "cartesian" and out.source == "action"
    # the first goal is within the slow-start step of the present pose
    assert np.all(np.abs(out.goal_rad - Q) <= loop.safety.max_step_rad + 1e-12)


def test_mode_selection(kin):
    loop = loop_of(kin, SO101_CONTROL_MODE="cartesian")
    loop.on_joint_state(Q, 0.0)
    with pytest.raises(ControllerError, match="SO101_CONTROL_MODE"):
        loop.on_action(np.zeros(6), "joint_delta", 0.02)
    auto = loop_of(kin)
    auto.on_joint_state(Q, 0.0)
    assert auto.on_action(np.zeros(6), "joint_delta", 0.02).mode == "joint_delta"
    assert auto.on_action(np.zeros(4), "cartesian", 0.04).mode == "cartesian"
    with pytest.raises(ControllerError, match="action_space"):
        auto.on_action(np.zeros(4), "polar", 0.06)


def test_estop_release_and_watchdog_resume_restart_the_target(kin):
    loop = loop_of(kin, SO101_SLOW_START_S=0)
    loop.on_joint_state(Q, 0.0)
    loop.on_action(np.array([1.0, 0, 0, 0]), "cartesian", 0.02)
    loop.on_estop(1)
    for i in range(20):  # the policy keeps pushing +x while the e-stop holds
        out = loop.on_action(np.array([1.0, 0, 0, 0]), "cartesian", 0.04 + 0.02 * i)
        assert "estop_hold" in out.events
    q_now = Q + np.array([0.01, 0.0, 0.0, 0.0, 0.0, 0.0])
    loop.on_joint_state(q_now, 0.5)
    loop.on_estop(0)
    out = loop.on_action(np.zeros(4), "cartesian", 0.52)
    np.testing.assert_allclose(loop.cartesian.target_m, kin.site_pose(q_now)[0])  # no stale +x target
    assert "estop_released" in out.events
    # silence -> watchdog hold; the next action restarts from the present pose as well
    hold = loop.on_tick(2.0)
    assert hold.source == "watchdog" and hold.events == ["watchdog_hold"]
    q_later = Q + np.array([0.0, 0.02, 0.0, 0.0, 0.0, 0.0])
    loop.on_joint_state(q_later, 2.1)
    out = loop.on_action(np.zeros(4), "cartesian", 2.2)
    assert "watchdog_resume" in out.events
    np.testing.assert_allclose(loop.cartesian.target_m, kin.site_pose(q_later)[0])


def test_new_episode_restarts_target_and_safety_from_the_reset_pose(kin):
    loop = loop_of(kin, SO101_SLOW_START_S=0)
    loop.on_joint_state(Q, 0.0)
    for i in range(10):  # drive the target up and away
        loop.on_action(np.array([0.0, 0.0, 1.0, 0.0]), "cartesian", 0.02 * (i + 1))
    q_reset = np.array([0.1, -0.2, 0.4, math.pi / 2, math.pi / 2, 1.07])  # the simulator teleported the arm
    loop.restart(np.stack([q_reset, np.zeros(6)]), 0.3)
    out = loop.on_action(np.zeros(4), "cartesian", 0.32)
    assert out.events[0] == "episode_restart"
    assert "episode_restart" not in loop.on_action(np.zeros(4), "cartesian", 0.34).events  # once only
    np.testing.assert_allclose(loop.cartesian.target_m, kin.site_pose(q_reset)[0])
    # the step bound now counts from the reset pose, not from the last goal of the old episode
    step = np.abs(out.goal_rad[:5] - q_reset[:5])
    assert np.all(step <= 0.1 + 1e-9)


def test_actions_need_a_fresh_joint_state(kin):
    loop = loop_of(kin, SO101_WATCHDOG_S="0.2")
    loop.on_joint_state(Q, 0.0)
    assert loop.on_action(np.zeros(4), "cartesian", 0.15) is not None
    with pytest.raises(ControllerError, match="no fresh joint_state for 0.25 s"):
        loop.on_action(np.zeros(4), "cartesian", 0.25)
    loop.on_joint_state(Q, 0.3)
    assert loop.on_action(np.zeros(4), "cartesian", 0.32) is not None


def test_goal_message_round_trip(kin):
    loop = loop_of(kin)
    loop.on_joint_state(Q, 0.0)
    out = loop.on_action(np.array([0.0, 0.0, 1.0, 0.3]), "cartesian", 0.02)
    value, meta = encode("joint_goal", out.goal_rad, frame_id=7, stamp_ns=123, events=",".join(out.events),
                         mode=out.mode, source=out.source)
    msg = decode("joint_goal", value, meta)
    np.testing.assert_array_equal(msg.data, out.goal_rad)
    assert (msg.frame_id, msg.meta["mode"], msg.meta["source"]) == (7, "cartesian", "action")


@pytest.mark.parametrize("axis,sign", [(0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1)])
def test_closed_loop_moves_the_gripper_in_the_commanded_direction(kin, axis, sign):
    """Joints that follow the goals: the gripperframe moves along the commanded axis."""
    loop = loop_of(kin)
    q = Q.copy()
    loop.on_joint_state(q, 0.0)
    p0 = kin.site_pose(q)[0]
    action = np.zeros(4)
    action[axis] = sign
    for i in range(10):  # 10 steps x 2 cm = 20 cm commanded
        q = loop.on_action(action, "cartesian", 0.02 * (i + 1)).goal_rad
        loop.on_joint_state(q, 0.02 * (i + 1))
    moved = kin.site_pose(q)[0] - p0
    assert sign * moved[axis] > 0.025, moved  # slow start + step bound: the arm lags the 2 cm/step target
    # mostly along the commanded axis (one DLS step per action bends the path a little, as in training)
    assert sign * moved[axis] / np.linalg.norm(moved) > 0.8, moved


# --- settings ----------------------------------------------------------------------------------

def test_settings_defaults(kin):
    loop = loop_of(kin)
    assert loop.mode == "auto"
    assert loop.cartesian.gain == 0.5 and loop.cartesian.action_scale_m == 0.02
    assert not loop.cartesian.lock_wrist
    np.testing.assert_allclose(loop.safety.max_step_rad, [0.1, 0.1, 0.1, 0.1, 0.1, 0.35])
    assert loop.safety.watchdog_s == 0.5
    np.testing.assert_allclose(loop.joint_delta.scale_rad, np.full(6, 0.05))
    np.testing.assert_allclose(loop.safety.limits.lower_rad, kin.lower_rad)


def test_settings_values(kin):
    loop = loop_of(kin, SO101_CONTROL_MODE="joint_delta", SO101_IK_GAIN="1.0", SO101_ACTION_SCALE_M="0.01",
                   SO101_JOINT_DELTA_SCALE_RAD="0.1,0.1,0.1,0.2,0.2,0.3", SO101_LOCK_WRIST="true",
                   SO101_MAX_STEP_RAD="0.05", SO101_WATCHDOG_S="0.25")
    assert loop.mode == "joint_delta" and loop.cartesian.gain == 1.0 and loop.cartesian.lock_wrist
    np.testing.assert_allclose(loop.joint_delta.scale_rad, [0.1, 0.1, 0.1, 0.2, 0.2, 0.3])
    np.testing.assert_allclose(loop.safety.max_step_rad, np.full(6, 0.05))
    assert loop.safety.watchdog_s == 0.25


@pytest.mark.parametrize("env,match", [
    ({"SO101_CONTROL_MODE": "polar"}, "SO101_CONTROL_MODE"),
    ({"SO101_IK_GAIN": "fast"}, "SO101_IK_GAIN"),
    ({"SO101_IK_GAIN": "5"}, "SO101_IK_GAIN"),
    ({"SO101_MAX_STEP_RAD": "0.1,0.2"}, "SO101_MAX_STEP_RAD"),
    ({"SO101_MAX_STEP_RAD": "-1"}, "SO101_MAX_STEP_RAD"),
    ({"SO101_JOINT_DELTA_SCALE_RAD": "a,b"}, "SO101_JOINT_DELTA_SCALE_RAD"),
    ({"SO101_LOCK_WRIST": "maybe"}, "SO101_LOCK_WRIST"),
    ({"SO101_CALIBRATION": "/nonexistent/calib.json"}, "SO101_CALIBRATION.*not found"),
])
def test_bad_settings_are_named(kin, env, match):
    with pytest.raises(SettingError, match=match):
        loop_of(kin, **env)


def test_calibration_tightens_the_limits(kin):
    loop = loop_of(kin, SO101_CALIBRATION=str(EXAMPLE_PATH))
    lower, upper = Calibration.load(EXAMPLE_PATH).limits_rad()
    expected = JointLimits.from_model(kin).intersect(JointLimits(lower, upper))
    np.testing.assert_allclose(loop.safety.limits.lower_rad, expected.lower_rad)
    np.testing.assert_allclose(loop.safety.limits.upper_rad, expected.upper_rad)
    assert np.all(loop.safety.limits.lower_rad >= kin.lower_rad)
    assert np.all(loop.safety.limits.upper_rad <= kin.upper_rad)


def test_loop_needs_a_controller_for_a_fixed_mode(kin):
    safety = SafetyFilter(JointLimits.from_model(kin), 0.1, 0.5)
    with pytest.raises(ControllerError, match="JointDeltaController"):
        ControlLoop(safety, CartesianController(kin), None, mode="joint_delta")


# --- the node in a dataflow ------------------------------------------------------------------------

SOURCE_NODE = '''
"""Test source: joint_state every tick (a fixed pose), +z Cartesian actions for the first
N_ACTIONS ticks (e-stop engaged for the last 3 of them), then one joint_delta action (a mode
mismatch), then 1.5 s of silence (the watchdog), then it leaves: the controller stops when its inputs
close, and so the run ends by itself, however long the nodes took to start."""
import numpy as np
from dora import Node
from so101_deploy.core.messages import encode, now_ns

Q = np.array({q})
node = Node()
n = 0
for event in node:
    if event["type"] == "STOP":
        break
    if event["type"] != "INPUT":
        continue
    js = np.stack([Q, np.zeros(6)])
    node.send_output("joint_state", *encode("joint_state", js, frame_id=n, stamp_ns=now_ns()))
    if n in (3 + {n_actions} - 3, 3 + {n_actions}):  # engage before the last 3 actions, release after
        node.send_output("estop", *encode("estop", np.array([int(n < 3 + {n_actions})], np.uint8), frame_id=n,
                                          stamp_ns=now_ns()))
    if 3 <= n < 3 + {n_actions}:
        a = np.array([0.0, 0.0, 1.0, 0.3], np.float32)
        node.send_output("action", *encode("action", a, frame_id=100 + n, stamp_ns=1000 + n,
                                           action_space="cartesian"))
    elif n == 3 + {n_actions}:
        node.send_output("action", *encode("action", np.zeros(6, np.float32), frame_id=999, stamp_ns=1,
                                           action_space="joint_delta"))
    elif n > 3 + {n_actions} + 30:
        break
    n += 1
'''


@pytest.mark.integration
def test_controller_node_in_a_dataflow(repo_root, venv_bin, tmp_path, kin):
    import yaml

    from so101_deploy.core.dataflow import run_dataflow
    from so101_deploy.core.recording import read_recording

    n_actions = 10
    (tmp_path / "source.py").write_text(SOURCE_NODE.format(q=Q.tolist(), n_actions=n_actions))
    record_dir = tmp_path / "rec"
    flow = {"nodes": [
        {"id": "source", "path": str(tmp_path / "source.py"), "inputs": {"tick": "dora/timer/millis/50"},
         "outputs": ["joint_state", "action", "estop"]},
        {"id": "controller", "path": str(repo_root / "nodes" / "controller" / "main.py"),
         "env": {"SO101_CONTROL_MODE": "cartesian", "SO101_WATCHDOG_S": "0.3"},
         "inputs": {"action": "source/action", "joint_state": "source/joint_state",
                    "estop": "source/estop", "tick": "dora/timer/millis/50"},
         "outputs": ["goal"]},
        {"id": "recorder", "path": str(repo_root / "nodes" / "recorder" / "main.py"),
         "env": {"SO101_RECORD_DIR": str(record_dir), "SO101_RECORD_TYPES": "goal=joint_goal"},
         "inputs": {"goal": {"source": "controller/goal", "queue_size": 100}}},
    ]}
    path = tmp_path / "flow.yml"
    path.write_text(yaml.safe_dump(flow))
    env = {"PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    # ends when the source leaves (a deadline, not a window: slow starts on a loaded machine are fine)
    result = run_dataflow(path, 120, extra_env=env, grace_s=60)
    assert result.returncode == 0, result.log[-3000:]
    goals = read_recording(record_dir)["goal"]
    from_actions = [g for g in goals if g.meta["source"] == "action"]
    holds = [g for g in goals if g.meta["source"] == "watchdog"]
    # every valid action became a goal carrying the action's camera frame id and stamp
    assert [g.frame_id for g in from_actions] == [100 + n for n in range(3, 3 + n_actions)], result.log[-2000:]
    assert [g.stamp_ns for g in from_actions] == [1000 + n for n in range(3, 3 + n_actions)]
    assert all(g.meta["mode"] == "cartesian" for g in from_actions)
    # e-stop: the last 3 action goals are the hold of the goal before them
    assert "e-stop ENGAGED" in result.log and "e-stop released" in result.log
    assert [g.meta["events"] for g in from_actions[-3:]] == ["estop_engaged,estop_hold", "estop_hold", "estop_hold"]
    for g in from_actions[-3:]:
        np.testing.assert_array_equal(g.data, from_actions[-4].data)
    assert all("estop" not in g.meta["events"] for g in from_actions[:-3])
    # the mismatched joint_delta action was rejected with a clear error, not turned into a goal
    assert all(g.frame_id != 999 for g in from_actions)
    if "[controller] info: safety events" in result.log:  # the log reached the controller's stop (dora run
        # may end before it forwards a node's last lines; the rejection comes before the stop line)
        assert "does not match the configured control mode" in result.log
    # +z actions raise the gripperframe; each goal within the step bound of the one before
    z0 = kin.site_pose(Q)[0][2]
    assert kin.site_pose(from_actions[-1].data)[0][2] > z0 + 0.005
    prev = Q
    for g in goals:
        if holds and g is holds[0]:
            prev = Q  # the e-stop was cleared before it: the filter restarted from the present pose (Q here)
        assert np.all(np.abs(g.data - prev) <= np.array([0.1] * 5 + [0.35]) + 1e-9)
        prev = g.data
    # silence after the actions: the watchdog held, reported once
    assert holds and holds[0].meta["events"].split(",")[-1] == "watchdog_hold"
    assert all(h.meta["events"] in ("", "estop_released") for h in holds[1:])
    assert "safety events" in result.log and "Traceback" not in result.log
