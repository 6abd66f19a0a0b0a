"""The simulated SO-101 scene (shared/so101_deploy/sim/scene.py) and the simulation (shared/so101_deploy/sim/sim_arm.py)."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest

from so101_deploy.sim import scene as sim_scene
from so101_deploy.arm.kinematics import Kinematics, so101_mjcf_path
from so101_deploy.core.messages import JOINT_NAMES
from so101_deploy.sim.sim_arm import (CUBE_XY_SPREAD_M, RESET_IK_OFFSET_M, SimArm, SimError)


@pytest.fixture(scope="module")
def model() -> mujoco.MjModel:
    return sim_scene.build_model()


@pytest.fixture(scope="module")
def sim(model) -> SimArm:
    s = SimArm(model)
    yield s
    s.close()


def test_scene_uses_the_kinematics_mjcf_and_training_physics(model):
    spec = sim_scene.build_spec()
    assert spec.modelfiledir.rstrip("/") == str(so101_mjcf_path().parent).rstrip("/")
    assert model.opt.timestep == pytest.approx(0.002)
    assert model.opt.cone == mujoco.mjtCone.mjCONE_ELLIPTIC
    assert model.vis.map.znear == pytest.approx(0.005)
    assert (model.vis.global_.offwidth, model.vis.global_.offheight) == (640, 480)


def test_wrist_camera_is_pick101_v5(model):
    cam = model.camera("wrist_cam")
    assert model.body(int(model.cam_bodyid[cam.id])).name == "gripper"
    np.testing.assert_allclose(cam.pos, [0.008, -0.065, -0.019])
    # facts section 6: compiled quat (w, x, y, z) ~ (0, 0, -0.1977, 0.9803)
    np.testing.assert_allclose(cam.quat, [0.0, 0.0, -0.1977, 0.9803], atol=2e-4)
    assert cam.fovy[0] == pytest.approx(70.5)


def test_actuators_have_pick101_gains_and_force_limits(model):
    for name in JOINT_NAMES:
        a = model.actuator(name)
        assert a.gainprm[0] == pytest.approx(998.22)
        assert a.biasprm[1] == pytest.approx(-998.22) and a.biasprm[2] == pytest.approx(-2.731)
        force = 10.0 if name == "gripper" else 3.35
        np.testing.assert_allclose(a.forcerange, [-force, force])
        assert model.actuator_forcelimited[a.id]


def _collide(model, g1: int, g2: int) -> bool:
    return bool((model.geom_contype[g1] & model.geom_conaffinity[g2]) or
                (model.geom_contype[g2] & model.geom_conaffinity[g1]))


def test_floor_cube_and_jaw_pads(model):
    floor = model.geom("floor")
    assert floor.type[0] == mujoco.mjtGeom.mjGEOM_PLANE and model.geom_bodyid[floor.id] == 0
    cube = model.geom("cube_geom")
    assert model.body(int(model.geom_bodyid[cube.id])).name == "cube"
    np.testing.assert_allclose(cube.size, [0.015] * 3)
    assert model.body("cube").mass[0] == pytest.approx(0.03)
    assert model.joint("cube_joint").type[0] == mujoco.mjtJoint.mjJNT_FREE
    assert _collide(model, cube.id, floor.id)
    for pad, body, pos in (("fixed_jaw_pad", "gripper", (-0.008875, 0.0, -0.100)),
                           ("moving_jaw_pad", "moving_jaw_so101_v1", (-0.01136, -0.076, 0.019))):
        g = model.geom(pad)
        assert _collide(model, g.id, cube.id), f"{pad} must touch the cube (it is inert in the package MJCF)"
        assert g.friction[0] == pytest.approx(1.0)
        # pick-101's 2.5 mm finger pads, in the same body, visible as in training's renders
        assert model.body(int(model.geom_bodyid[g.id])).name == body
        np.testing.assert_allclose(g.pos, pos)
        np.testing.assert_allclose(g.size, [0.00125] * 3)
        assert model.geom_group[g.id] == 0


def test_missing_mjcf_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="SO-101 MJCF not found"):
        sim_scene.build_spec(tmp_path / "nope.xml")


def test_sim_and_kinematics_agree_on_the_gripperframe(sim):
    kin = Kinematics()
    rng = np.random.default_rng(3)
    for _ in range(5):
        q = rng.uniform(kin.lower_rad, kin.upper_rad) * 0.8
        sim.set_joint_positions(q)
        np.testing.assert_allclose(sim.gripper_pos(), kin.site_pose(q)[0], atol=1e-9)


def test_reset_is_stage3_and_seeded(sim):
    sim.reset(seed=5)
    cube_a, q_a = sim.cube_pos(), sim.joint_state()[0]
    sim.reset(seed=5)
    np.testing.assert_array_equal(sim.cube_pos(), cube_a)
    np.testing.assert_allclose(sim.joint_state()[0], q_a)
    cubes = []
    for seed in range(6):
        sim.reset(seed)
        c = sim.cube_pos()
        cubes.append(c)
        assert abs(c[0] - 0.25) <= CUBE_XY_SPREAD_M + 1e-3 and abs(c[1]) <= CUBE_XY_SPREAD_M + 1e-3
        assert c[2] == pytest.approx(0.015, abs=1e-3)
        # the IK brought the gripperframe to cube + (0, -0.015, 0.035) within a few mm
        assert np.linalg.norm(sim.gripper_pos() - (c + RESET_IK_OFFSET_M)) < 0.006
        q = sim.joint_state()[0]
        assert q[5] == pytest.approx(1.0735, abs=0.02)  # gripper action 0.3
        assert sim.step_count == 0 and not sim.is_grasped() and not sim.is_lifted()
    assert len({tuple(np.round(c, 6)) for c in cubes}) == len(cubes)


def test_goals_move_the_joints_and_bad_goals_are_refused(sim):
    sim.reset(0)
    goal = sim.joint_state()[0].copy()
    goal[0] += 0.3
    goal[5] = 0.2
    sim.apply_goal(goal)
    for _ in range(25):  # 0.5 s
        sim.step()
    q = sim.joint_state()[0]
    assert abs(q[0] - goal[0]) < 0.03 and abs(q[5] - 0.2) < 0.05
    assert sim.step_count == 25
    with pytest.raises(SimError, match="shape"):
        sim.apply_goal(np.zeros(5))
    with pytest.raises(SimError, match="finite"):
        sim.apply_goal(np.full(6, np.nan))
    sim.apply_goal(np.full(6, 100.0))  # clipped to the actuators' ctrlrange, never beyond
    np.testing.assert_allclose(sim.goal_rad(), sim.ctrl_high)


def test_torque_off_makes_the_arm_limp(sim):
    sim.reset(0)
    q0 = np.array([0.0, -0.5, 0.5, 0.0, math.pi / 2, 0.5])  # arm raised, clear of the floor
    sim.set_joint_positions(q0)
    sim.set_torque(False)
    try:
        for _ in range(25):
            sim.step()
        assert np.abs(sim.joint_state()[0][1:3] - q0[1:3]).max() > 0.1  # gravity pulls the arm down
    finally:
        sim.set_torque(True)
    sim.set_joint_positions(q0)
    for _ in range(25):
        sim.step()
    assert np.abs(sim.joint_state()[0] - q0).max() < 0.01  # with torque it holds the pose


def test_wrist_camera_renders_the_red_cube(sim):
    sim.reset(0)
    bgr = sim.render_rgb_bgr()
    assert bgr.shape == (480, 640, 3) and bgr.dtype == np.uint8 and bgr.flags.c_contiguous
    b, g, r = (bgr[:, :, i].astype(int) for i in range(3))
    red = (r > 150) & (g < 80) & (b < 80)
    assert red.sum() > 2000, "the cube below the gripper must be in view at the reset pose"
    ys, xs = np.nonzero(red)
    assert 160 < xs.mean() < 480, "the cube should be near the image centre (the 480x480 crop)"
    depth = sim.render_depth_m()
    assert depth.shape == (480, 640) and depth.dtype == np.float32
    # the cube top is a few cm below the camera (gripperframe ~5 cm above the floor)
    assert 0.02 < float(np.median(depth[red])) < 0.15
    assert math.isfinite(float(depth.max()))
