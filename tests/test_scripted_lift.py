"""Closed loop in simulation: sim arm -> scripted policy -> the project's controller (IK) and
SafetyFilter -> sim arm, all through encoded messages, no rendering.  Plus the software servo bus
variant, where the real scservo_sdk drives the simulated arm."""

from __future__ import annotations

import time

import numpy as np
import pytest

from so101_deploy import sim_scene
from so101_deploy.controller import control_loop_from_settings
from so101_deploy.kinematics import Kinematics
from so101_deploy.messages import MessageError, decode, encode
from so101_deploy.node import Settings
from so101_deploy.scripted_policy import ScriptedPolicyRunner
from so101_deploy.sim_arm import LIFT_HEIGHT_M, SimArm, SimRunner

DT_S = 0.02


@pytest.fixture(scope="module")
def kin():
    return Kinematics()


def run_episodes(kin, n: int, seed: int = 0, force_gripper: float | None = None):
    """``n`` episodes of the dataflow sim-scripted, in-process; returns (results, max cube z per
    episode, every (previous goal, goal) pair the controller emitted, the controller's limits)."""
    sim = SimArm(sim_scene.build_model(), kin)
    runner = SimRunner(sim, seed=seed, camera=False, oracle=False)
    policy = ScriptedPolicyRunner(kin)
    loop = None
    episode = None
    max_z: dict[int, float] = {}
    goals = []
    while len(runner.results) < n:
        (_, value, meta), = runner.tick()
        js = decode("joint_state", value, meta)
        if js.meta["episode"] != episode:
            # a new episode teleports the arm: the controller starts again from the present pose
            episode = js.meta["episode"]
            loop = control_loop_from_settings(Settings("controller", env={}), kin)
            prev = None
        now_s = js.meta["episode_step"] * DT_S
        max_z[episode] = max(max_z.get(episode, 0.0), js.meta["cube_z_m"])
        loop.on_joint_state(js.data, now_s)
        action = decode("action", *policy.on_joint_state(js))
        a = action.data.copy()
        if force_gripper is not None:
            a[3] = force_gripper
        out = loop.on_action(a, action.meta["action_space"], now_s)
        goal = decode("joint_goal", *encode("joint_goal", out.goal_rad, frame_id=js.frame_id, stamp_ns=js.stamp_ns))
        goals.append((prev if prev is not None else js.data[0], goal.data.copy()))
        prev = goal.data.copy()
        runner.on_goal(goal.data)
    return runner.results, max_z, goals, loop.safety


def test_scripted_policy_lifts_the_cube_through_controller_and_safety(kin):
    results, max_z, goals, safety = run_episodes(kin, 10)
    assert [r["seed"] for r in results] == list(range(10))
    wins = [r for r in results if r["success"]]
    assert len(wins) >= 8, f"scripted lift succeeded in {len(wins)}/10: {results}"
    for r in wins:
        assert max_z[r["episode"]] > LIFT_HEIGHT_M
        assert r["steps"] < 200
    # the safety invariant held on every goal the loop sent: inside the limits, bounded step
    lo, hi, step = safety.limits.lower_rad, safety.limits.upper_rad, safety.max_step_rad
    for prev, goal in goals:
        assert np.all(goal >= lo - 1e-9) and np.all(goal <= hi + 1e-9)
        assert np.all(np.abs(goal - prev) <= step + 1e-9)


def test_without_closing_the_gripper_nothing_is_lifted(kin):
    # negative control: the success test must not fire when the jaws never close
    results, max_z, _, _ = run_episodes(kin, 2, force_gripper=0.3)
    assert not any(r["success"] for r in results)
    assert all(r["steps"] == 200 for r in results)
    assert max(max_z.values()) < 0.04


def test_scripted_policy_needs_the_privileged_cube(kin):
    policy = ScriptedPolicyRunner(kin)
    js = decode("joint_state", *encode("joint_state", np.zeros((2, 6)), frame_id=0, stamp_ns=1))
    with pytest.raises(MessageError, match="cube_x_m"):
        policy.on_joint_state(js)


@pytest.mark.integration
def test_servo_bus_drives_the_sim(tmp_path):
    """The software bus in its own process (pty), as the sim arm node runs it: scservo_sdk writes
    torque + goal, the sim moves, and the bus reports the simulated joints as Present_Position."""
    scs = pytest.importorskip("scservo_sdk")
    from so101_deploy.calibration import Calibration
    from so101_deploy.sim_arm import BusProcess, SimBusBridge
    from so101_deploy.sts3215 import REGISTERS

    cal = Calibration.example()
    sim = SimArm()
    runner = SimRunner(sim, seed=0, camera=False, episode_steps=0)
    ids = [cal.motor(n).id for n in ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex",
                                      "wrist_roll", "gripper")]
    bus = BusProcess(str(tmp_path / "bus"), None, dict(zip(ids, cal.rad_to_steps(sim.joint_state()[0]).tolist())))
    bus.start()
    port = scs.PortHandler(bus.path)
    try:
        runner.bus_bridge = SimBusBridge(sim, bus, cal)
        for _ in range(10):  # no torque written yet: the arm holds its reset pose
            runner.tick()
        np.testing.assert_allclose(sim.joint_state()[0], sim.goal_rad(), atol=0.02)
        assert port.openPort() and port.setBaudRate(1_000_000)
        pkt = scs.PacketHandler(0)
        q0 = sim.joint_state()[0]
        present = []
        for i in ids:
            steps, res, err = pkt.read2ByteTxRx(port, i, REGISTERS["Present_Position"].address)
            assert res == scs.COMM_SUCCESS, pkt.getTxRxResult(res)
            present.append(steps)
        np.testing.assert_allclose(cal.steps_to_rad(np.array(present, float)), q0, atol=2e-3)
        goal = q0.copy()
        goal[0] += 0.2
        goal_steps = cal.rad_to_steps(goal)
        for i, s in zip(ids, goal_steps):
            assert pkt.write1ByteTxRx(port, i, REGISTERS["Torque_Enable"].address, 1)[0] == scs.COMM_SUCCESS
            assert pkt.write2ByteTxRx(port, i, REGISTERS["Goal_Position"].address, int(s))[0] == scs.COMM_SUCCESS
        for _ in range(30):
            runner.tick()
            time.sleep(0.004)  # let the bus process sync (2 ms period)
        q = sim.joint_state()[0]
        assert abs(q[0] - goal[0]) < 0.02, (q, goal)
        steps, res, _ = pkt.read2ByteTxRx(port, ids[0], REGISTERS["Present_Position"].address)
        assert res == scs.COMM_SUCCESS
        assert abs(steps - cal.rad_to_steps(q)[0]) <= 2
        assert not (tmp_path / "bus").exists() or (tmp_path / "bus").is_symlink()
    finally:
        port.closePort()
        bus.stop()
        sim.close()
    assert not (tmp_path / "bus").exists(), "the bus link is removed when the bus stops"


@pytest.mark.integration
def test_sim_scripted_dataflow_lifts_in_dora(repo_root, tmp_path):
    """dataflow.sim-scripted.yml under `dora run`: the sim arm reports finished episodes at stop."""
    import re

    from so101_deploy.dataflow import prepare, run_dataflow

    flow = prepare(repo_root / "dataflow.sim-scripted.yml", tmp_path / "flow.yml")
    res = run_dataflow(flow, stop_after_s=12, log_path=tmp_path / "dora.log")
    m = re.search(r"(\d+) episodes finished, (\d+) successes", res.log)
    assert m, f"sim_arm did not report at stop (rc {res.returncode}):\n{res.log[-3000:]}"
    finished, wins = int(m.group(1)), int(m.group(2))
    # node start-up takes several seconds on a loaded 2-core machine; one lift takes ~1 s
    assert finished >= 1 and wins >= 1 and wins >= finished - 1, res.log[-3000:]
