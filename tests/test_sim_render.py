"""The one-pass wrist renderer (shared/so101_deploy/sim/render.py): bit-identical to mujoco.Renderer's
segmentation and depth renders (what training's wrapper used, facts sections 2.1 and 2.2)."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from so101_deploy.sim import scene as sim_scene
from so101_deploy.sim.oracle import OracleSeg, disparity_from_depth
from so101_deploy.sim.render import VIDEO_HEIGHT, VIDEO_WIDTH, WristRenderer, video_renderer
from so101_deploy.sim.sim_arm import SimArm, SimRunner

# seeded resets, then arm poses (joint offsets, rad) that move the wrist camera: the cube near and
# far, the sky and the arm's own links in view
POSES = [None, np.array([0.3, -0.4, 0.3, 0.2, -0.5, 0.6]), np.array([-0.5, 0.5, -0.6, -0.9, 0.8, -0.2]),
         np.array([0.0, -1.2, 1.0, 1.0, 0.0, 0.0])]


@pytest.fixture(scope="module")
def model():
    return sim_scene.build_model()


@pytest.fixture(scope="module")
def reference(model):
    """training's two renderers, as pick-101's wrapper builds them"""
    seg = mujoco.Renderer(model, sim_scene.IMAGE_HEIGHT, sim_scene.IMAGE_WIDTH)
    seg.enable_segmentation_rendering()
    depth = mujoco.Renderer(model, sim_scene.IMAGE_HEIGHT, sim_scene.IMAGE_WIDTH)
    depth.enable_depth_rendering()
    yield seg, depth
    seg.close()
    depth.close()


@pytest.fixture(scope="module")
def sim(model):
    s = SimArm(model)
    yield s
    s.close()


def _reference_frame(reference, data):
    seg_r, depth_r = reference
    seg_r.update_scene(data, camera=sim_scene.CAMERA_NAME)
    seg = seg_r.render()
    ids = seg[:, :, 0].astype(np.int32)
    ids[seg[:, :, 1] != int(mujoco.mjtObj.mjOBJ_GEOM)] = -1
    depth_r.update_scene(data, camera=sim_scene.CAMERA_NAME)
    return ids, depth_r.render()


def _frames(sim):
    for seed in (0, 3, 7):
        for pose in POSES:
            sim.reset(seed)
            if pose is not None:
                sim.set_joint_positions(sim.joint_state()[0] + pose)
            yield seed, pose


def test_one_pass_is_bit_identical_to_the_seg_and_depth_renderers(sim, reference):
    oracle = OracleSeg(sim.model)
    seen = set()
    sky = False
    for seed, pose in _frames(sim):
        want_ids, want_depth = _reference_frame(reference, sim.data)
        ids, depth = sim.render_seg_and_depth()
        what = f"seed {seed}, pose {pose}"
        assert ids.dtype == np.int32 and ids.shape == (480, 640), what
        assert depth.dtype == np.float32 and depth.shape == (480, 640), what
        np.testing.assert_array_equal(ids, want_ids, err_msg=what)
        # bit-identical, not merely close: compare the float32 bit patterns
        np.testing.assert_array_equal(depth.view(np.uint32), want_depth.view(np.uint32), err_msg=what)
        np.testing.assert_array_equal(oracle.classes(ids), oracle.classes(want_ids), err_msg=what)
        np.testing.assert_array_equal(disparity_from_depth(depth).view(np.uint32),
                                      disparity_from_depth(want_depth).view(np.uint32), err_msg=what)
        # the separate public methods give the same images
        np.testing.assert_array_equal(sim.render_seg(), want_ids, err_msg=what)
        np.testing.assert_array_equal(sim.render_depth_m().view(np.uint32), want_depth.view(np.uint32), err_msg=what)
        seen |= set(np.unique(oracle.classes(ids)).tolist())
        sky |= bool((ids == -1).any())
    # the poses are not trivial: every sim class is seen, and some frame shows no geom (sky)
    assert seen == {0, 1, 2, 3, 4}, seen
    assert sky


def test_depth_is_metric_and_ids_are_geoms(sim):
    sim.reset(0)
    ids, depth = sim.render_seg_and_depth()
    cube = sim.model.geom(sim_scene.CUBE_GEOM).id
    assert (ids == cube).sum() > 2000
    # the cube is in front of the camera, a few cm to a few dm away; no NaN anywhere
    cube_depth = np.median(depth[ids == cube])
    assert 0.02 < cube_depth < 0.5, cube_depth
    assert np.all(np.isfinite(depth)) and depth.min() > 0
    assert ids.min() >= -1 and ids.max() < sim.model.ngeom


def test_rgb_matches_mujoco_renderer(sim, model):
    sim.reset(3)
    ref = mujoco.Renderer(model, sim_scene.IMAGE_HEIGHT, sim_scene.IMAGE_WIDTH)
    try:
        ref.update_scene(sim.data, camera=sim_scene.CAMERA_NAME)
        want = ref.render()
    finally:
        ref.close()
    bgr = sim.render_rgb_bgr()
    assert bgr.dtype == np.uint8 and bgr.shape == (480, 640, 3) and bgr.flags.c_contiguous
    np.testing.assert_array_equal(bgr[:, :, ::-1], want)


def test_video_frame_is_small_and_shows_the_scene(sim):
    sim.reset(0)
    bgr = sim.render_video_bgr()
    assert bgr.shape == (VIDEO_HEIGHT, VIDEO_WIDTH, 3) == (120, 160, 3) and bgr.dtype == np.uint8
    assert bgr.flags.c_contiguous
    # not blank: many distinct colours, and the red cube in the lower middle (where the oracle sees it)
    assert len(np.unique(bgr.reshape(-1, 3), axis=0)) > 50
    assert bgr.std() > 10
    ids = sim.render_seg()[::4, ::4]  # the full frame down to 120x160
    b, g, r = (bgr[:, :, i].astype(int) for i in range(3))
    on_cube = ids == sim.model.geom(sim_scene.CUBE_GEOM).id
    assert on_cube.sum() > 100
    assert ((r - np.maximum(g, b))[on_cube] > 40).mean() > 0.9


def test_renderer_errors(model):
    with pytest.raises(ValueError, match="no camera"):
        WristRenderer(model, camera="no_such_camera")
    with pytest.raises(ValueError, match="offscreen buffer"):
        WristRenderer(model, height=960, width=1280)
    r = video_renderer(model)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    with pytest.raises(ValueError, match="rgb size"):
        r.rgb(data, height=240, width=320)
    r.close()
    with pytest.raises(RuntimeError, match="after close"):
        r.rgb(data)


def test_runner_oracle_frame_uses_the_one_pass_render(sim, monkeypatch):
    runner = SimRunner(sim, seed=5, render_every=1, camera=False, oracle=True)
    calls = []
    for name in ("render_seg", "render_depth_m"):
        monkeypatch.setattr(sim, name, lambda *a, _n=name: calls.append(_n))
    out = runner.publish(force_frame=True)
    assert [o[0] for o in out] == ["joint_state", "mask", "disparity"]
    assert calls == [], "the oracle frame must come from one render pass"


def test_bench_child_times_every_variant():
    from so101_deploy.sim.render import BENCH_VARIANTS, _bench_backend, main

    times = _bench_backend(1)
    assert tuple(times) == BENCH_VARIANTS
    assert all(len(v) == 1 and v[0] > 0 for v in times.values()), times
    assert main([]) == 2  # no --bench: help, not a silent run
