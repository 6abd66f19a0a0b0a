"""Proprioception against a reference computed here straight from MuJoCo and the training formulas."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest

from so101_deploy.arm.kinematics import Kinematics, so101_mjcf_path
from so101_deploy.policy.proprio import ProprioError, Proprioception, proprio_vector

JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


TRAINING_GRIPPERFRAME_IN_GRIPPER_BODY = (0.0, 0.0, -0.0981274)  # pick-101, centred between the fingers


@pytest.fixture(scope="module")
def reference_model():
    model = mujoco.MjModel.from_xml_path(str(so101_mjcf_path()))
    model.site_pos[model.site("gripperframe").id] = TRAINING_GRIPPERFRAME_IN_GRIPPER_BODY
    return model, mujoco.MjData(model)


def ref_site(reference_model, q):
    """gripperframe xyz and roll/pitch/yaw as training's wrapper computed them from site_xmat."""
    model, data = reference_model
    data.qpos[:] = model.qpos0
    for name, v in zip(JOINTS, q):
        data.qpos[model.jnt_qposadr[model.joint(name).id]] = v
    mujoco.mj_forward(model, data)
    site = model.site("gripperframe").id
    R = data.site_xmat[site].reshape(3, 3)
    roll = math.atan2(R[2, 1], R[2, 2])
    pitch = math.atan2(-R[2, 0], math.sqrt(R[0, 0] ** 2 + R[1, 0] ** 2))
    yaw = math.atan2(R[1, 0], R[0, 0])
    return np.array(data.site_xpos[site]), np.array([roll, pitch, yaw])


@pytest.fixture(scope="module")
def proprio():
    return Proprioception()


@pytest.mark.parametrize("q", [
    np.zeros(6),
    np.array([0.3, -0.8, 0.9, 1.2, 1.5707963, 1.07]),
    np.array([-1.5, 1.2, -1.4, -1.0, -2.5, -0.17]),
])
def test_vector_matches_mujoco_reference(proprio, reference_model, q):
    qvel = np.array([0.1, -0.2, 0.3, -0.4, 0.5, -0.6])
    got = proprio_vector(proprio.kinematics, q, qvel)
    pos, rpy = ref_site(reference_model, q)
    assert got.shape == (18,)
    np.testing.assert_allclose(got[:6], q, atol=0)
    np.testing.assert_allclose(got[6:12], qvel, atol=0)
    np.testing.assert_allclose(got[12:15], pos, atol=1e-12)
    np.testing.assert_allclose(got[15:18], rpy, atol=1e-12)


def test_site_moves_with_the_arm_not_the_gripper(proprio):
    a = proprio_vector(proprio.kinematics, np.zeros(6), np.zeros(6))
    b = proprio_vector(proprio.kinematics, np.array([0.5, 0, 0, 0, 0, 0]), np.zeros(6))
    c = proprio_vector(proprio.kinematics, np.array([0, 0, 0, 0, 0, 1.2]), np.zeros(6))
    assert np.linalg.norm(a[12:15] - b[12:15]) > 0.05  # shoulder pan swings the gripper
    np.testing.assert_allclose(a[12:18], c[12:18], atol=1e-12)  # the jaw does not move the site
    # in front of the base, above the floor, at a plausible reach
    assert 0.1 < a[12] < 0.6 and a[14] > 0


def test_velocity_from_timestamps(proprio):
    proprio.reset()
    q0 = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    q1 = q0 + np.array([0.01, -0.02, 0.03, 0.0, 0.005, -0.01])
    v0 = proprio.update(q0, 1_000_000_000, qvel_rad_s=np.full(6, 9.0))
    np.testing.assert_array_equal(v0[6:12], np.zeros(6))  # no history: at rest
    v1 = proprio.update(q1, 1_020_000_000)  # 20 ms later
    np.testing.assert_allclose(v1[6:12], (q1 - q0) / 0.02, rtol=1e-12)
    np.testing.assert_array_equal(v1[:6], q1)
    # an older or repeated stamp is ignored (time must go forward)
    assert proprio.update(q0, 1_020_000_000) is None
    assert proprio.counters.out_of_order == 1
    np.testing.assert_array_equal(proprio.vector, v1)
    # a long gap says nothing about motion now
    v2 = proprio.update(q0, 3_000_000_000)
    np.testing.assert_array_equal(v2[6:12], np.zeros(6))
    assert proprio.counters.gaps == 1


def test_velocity_from_the_message_when_asked(proprio):
    p = Proprioception(proprio.kinematics, velocity_source="message")
    v = p.update(np.zeros(6), 5, qvel_rad_s=np.arange(6.0))
    np.testing.assert_array_equal(v[6:12], np.arange(6.0))
    with pytest.raises(ProprioError, match="velocity row"):
        p.update(np.zeros(6), 6)


def test_bad_joint_vectors_are_refused(proprio):
    with pytest.raises(ProprioError, match="6 finite"):
        proprio.update(np.zeros(5), 1)
    with pytest.raises(ProprioError, match="finite"):
        proprio.update(np.array([0, 0, np.nan, 0, 0, 0]), 1)
    with pytest.raises(ValueError, match="velocity source"):
        Proprioception(proprio.kinematics, velocity_source="guess")


def test_gripperframe_is_trainings_and_lerobots_is_an_option(reference_model):
    q = np.array([0.2, -0.4, 0.7, 1.2, 1.5, 0.3])
    training = Kinematics().site_pose(q)[0]
    np.testing.assert_allclose(training, ref_site(reference_model, q)[0], atol=1e-9)
    lerobot = Kinematics(gripperframe="lerobot").site_pose(q)[0]
    raw = mujoco.MjModel.from_xml_path(str(so101_mjcf_path()))  # the file as shipped
    np.testing.assert_allclose(raw.site_pos[raw.site("gripperframe").id], (-0.0079, -0.000218121, -0.0981274),
                               atol=1e-7)
    assert np.linalg.norm(training - lerobot) == pytest.approx(0.0079, abs=2e-4)  # the site moved 7.9 mm
    with pytest.raises(ValueError, match="SO101_GRIPPERFRAME"):
        Kinematics(gripperframe="nope")
