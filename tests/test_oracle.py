"""Oracle segmentation and depth (shared/so101_deploy/sim/oracle.py) and the sim arm node's messages (SimRunner)."""

from __future__ import annotations

import numpy as np
import pytest

from so101_deploy.sim import scene as sim_scene
from so101_deploy.core.messages import decode
from so101_deploy.sim.oracle import OracleError, OracleSeg, class_of_geom, disparity_from_depth
from so101_deploy.sim.sim_arm import SimArm, SimRunner
from so101_deploy.sim.sim_arm import SETTINGS as SIM_SETTINGS


@pytest.fixture(scope="module")
def model():
    return sim_scene.build_model()


@pytest.fixture(scope="module")
def sim(model):
    s = SimArm(model)
    yield s
    s.close()


def test_classes_follow_bodies_as_in_training(model):
    cls = class_of_geom(model)
    assert cls.shape == (model.ngeom,) and cls.dtype == np.uint8
    assert cls[model.geom("floor").id] == 1
    assert cls[model.geom("cube_geom").id] == 2
    body_of = lambda g: model.body(int(model.geom_bodyid[g])).name  # noqa: E731
    for g in range(model.ngeom):
        want = {"cube": 2, "gripper": 3, "moving_jaw_so101_v1": 4}.get(body_of(g), 0)
        if model.geom(g).name == "floor":
            want = 1
        assert cls[g] == want, f"geom {g} ({model.geom(g).name!r}, body {body_of(g)!r})"
    # every geom of the gripper body is "static finger": servo mesh, follower, pad (>= 4 geoms)
    assert (cls == 3).sum() >= 4 and cls[model.geom("fixed_jaw_pad").id] == 3
    assert cls[model.geom("moving_jaw_pad").id] == 4
    assert (cls == 0).sum() > 10  # base, shoulder, upper/lower arm, wrist stay "other"


def test_geom_ids_to_classes_and_errors(model):
    seg = OracleSeg(model)
    ids = np.array([[-1, model.geom("floor").id, model.geom("cube_geom").id],
                    [model.geom("fixed_jaw_pad").id, model.geom("moving_jaw_pad").id, 1]], dtype=np.int32)
    np.testing.assert_array_equal(seg.classes(ids), [[0, 1, 2], [3, 4, 0]])
    assert seg.classes(ids).dtype == np.uint8
    with pytest.raises(OracleError, match=r"values in \[-1"):
        seg.classes(np.array([[model.ngeom]]))
    with pytest.raises(OracleError, match="integer"):
        seg.classes(np.zeros((2, 2), np.float32))
    with pytest.raises(OracleError, match=r"\(H, W\)"):
        seg.classes(np.zeros((2, 2, 2), np.int32))


def test_disparity_is_training_formula():
    depth = np.array([[0.0, 0.049], [0.999, 49.999]], dtype=np.float32)
    disp = disparity_from_depth(depth)
    assert disp.dtype == np.float32 and disp.shape == (2, 2)
    np.testing.assert_allclose(disp, [[1000.0, 20.0], [1.0, 1.0 / 50.0]], rtol=1e-5)
    for bad, match in ((np.array([[np.nan]], np.float32), "finite"), (np.array([[-0.1]], np.float32), "non-negative"),
                       (np.zeros((2, 2, 1), np.float32), r"\(H, W\)"), (np.zeros((2, 2), np.int32), "float")):
        with pytest.raises(OracleError, match=match):
            disparity_from_depth(bad)


def test_rendered_oracle_matches_the_scene(sim):
    sim.reset(1)
    seg = OracleSeg(sim.model)
    mask = seg.classes(sim.render_seg())
    bgr = sim.render_rgb_bgr()
    counts = np.bincount(mask.ravel(), minlength=5)
    assert counts[1] > 100_000 and counts[2] > 2000 and counts[3] > 1000, counts
    # pixels labelled cube are the red cube in the colour image
    b, g, r = (bgr[:, :, i].astype(int) for i in range(3))
    redness = (r - np.maximum(g, b))[mask == 2]
    assert (redness > 40).mean() > 0.95
    disp = disparity_from_depth(sim.render_depth_m())
    # the cube (near) has a larger disparity than the floor around it (farther)
    assert np.median(disp[mask == 2]) > np.median(disp[mask == 1])


def test_runner_messages_round_trip(sim):
    runner = SimRunner(sim, seed=2, render_every=2, episode_steps=3, camera=True, oracle=True)
    cube0 = sim.cube_pos()
    out = runner.tick()
    assert [o[0] for o in out] == ["joint_state"]  # step 1: no frame (render_every=2)
    js = decode("joint_state", out[0][1], out[0][2])
    assert js.data.shape == (2, 6) and js.frame_id == 0
    np.testing.assert_allclose([js.meta["cube_x_m"], js.meta["cube_y_m"], js.meta["cube_z_m"]], sim.cube_pos())
    np.testing.assert_allclose(js.meta["cube_x_m"], cube0[0], atol=1e-3)
    assert js.meta["episode"] == sim.episode and js.meta["episode_step"] == 1
    out = runner.tick()
    ids = [o[0] for o in out]
    assert ids == ["joint_state", "image", "mask", "disparity"]
    msgs = {oid: decode(schema, v, m) for (oid, v, m), schema in
            zip(out, ("joint_state", "image", "seg_mask", "disparity"))}
    assert msgs["image"].data.shape == (480, 640, 3)
    assert msgs["mask"].meta["classes"] == "sim5" and msgs["mask"].data.max() <= 4
    assert msgs["disparity"].data.dtype == np.float32
    frames = {(m.frame_id, m.stamp_ns) for k, m in msgs.items() if k != "joint_state"}
    assert len(frames) == 1, "image, mask and disparity of one render share frame_id and stamp_ns"
    # episode of 3 steps: the 4th tick resets (new episode, step 0) and reports the last outcome
    episode = sim.episode
    runner.tick()
    out = runner.tick()
    assert [o[0] for o in out][:2] == ["episode_start", "joint_state"]
    js = decode("joint_state", out[1][1], out[1][2])
    assert js.meta["episode"] == episode + 1 and js.meta["episode_step"] == 0
    assert js.meta["previous_episode_success"] == 0
    (result,) = runner.results
    assert {k: result[k] for k in ("episode", "seed", "success", "steps")} == \
        {"episode": episode, "seed": 2, "success": False, "steps": 3}
    assert sim.seed == 3


def test_lockstep_publish_sends_a_frame_without_stepping(sim):
    runner = SimRunner(sim, seed=0, render_every=5, camera=False, oracle=True)
    q = sim.joint_state()[0].copy()
    out = runner.publish(force_frame=True)
    assert [o[0] for o in out] == ["joint_state", "mask", "disparity"]
    assert sim.step_count == 0
    np.testing.assert_array_equal(sim.joint_state()[0], q)


def test_sim_node_settings_are_checked():
    from so101_deploy.core.settings import SettingError, Settings
    from so101_deploy.sim.sim_arm import runner_from_settings

    bad = [({"SO101_SIM_RENDER_EVERY": "0"}, "SO101_SIM_RENDER_EVERY"),
           ({"SO101_SIM_STEP_ON": "sometimes"}, "SO101_SIM_STEP_ON"),
           ({"SO101_SIM_ORACLE": "maybe"}, "SO101_SIM_ORACLE"),
           ({"SO101_SIM_BUS_LINK": "/tmp/x", "SO101_SIM_STEP_ON": "goal"}, "needs goal messages"),
           ({"SO101_SIM_BUS_LINK": "/tmp/so101-test-never-created", "SO101_CALIBRATION": "/nonexistent.json"},
            "SO101_CALIBRATION")]
    for env, match in bad:
        with pytest.raises(SettingError, match=match):
            runner_from_settings(Settings("sim_arm", SIM_SETTINGS, env))
    runner, bus = runner_from_settings(Settings("sim_arm", SIM_SETTINGS, {"SO101_SIM_SEED": "4", "SO101_SIM_STEP_ON": "goal"}))
    try:
        assert bus is None and runner.step_on == "goal" and runner.sim.seed == 4 and runner.episode_steps == 200
    finally:
        runner.close()
