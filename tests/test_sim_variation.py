"""Per-episode scene variation (shared/so101_deploy/sim/variation.py)."""

from __future__ import annotations

import json
import math

import mujoco
import numpy as np
import pytest

from so101_deploy.core.gl import headless_gl_fallback
from so101_deploy.sim import scene as sim_scene
from so101_deploy.sim.variation import (LIMITS, SceneVariation, SceneVariator, cube_half_m, known_knobs,
                                        parse_variation)

ALL = SceneVariation(camera_pos_m=0.01, camera_rot_rad=0.1, light_frac=0.5, light_dir_rad=0.4,
                     light_pos_m=0.5, cube_rgb_frac=0.2, cube_size_frac=0.3)


def _snapshot(m: mujoco.MjModel) -> dict:
    """Every array of the model, the headlight and the statistics (what a variation could touch)."""
    snap = {name: np.array(getattr(m, name), copy=True) for name in dir(m)
            if not name.startswith("_") and isinstance(getattr(m, name), np.ndarray)}
    snap["vis.headlight"] = np.concatenate([m.vis.headlight.diffuse, m.vis.headlight.ambient,
                                            m.vis.headlight.specular])
    snap["stat"] = np.array([m.stat.meaninertia, m.stat.meanmass, m.stat.meansize, m.stat.extent,
                             *m.stat.center])
    return snap


def _differing(a: dict, b: dict) -> list[str]:
    # bitwise: tobytes also tells -0.0 from 0.0 and compares NaNs
    return sorted(k for k in a if a[k].tobytes() != b[k].tobytes())


@pytest.fixture(scope="module")
def model() -> mujoco.MjModel:
    return sim_scene.build_model()


@pytest.fixture(scope="module")
def pristine(model) -> dict:
    return _snapshot(model)


@pytest.fixture
def variator(model, pristine):
    v = SceneVariator(model)
    yield v
    v.restore()
    assert _differing(pristine, _snapshot(model)) == []


def _rest_data(model) -> mujoco.MjData:
    d = mujoco.MjData(model)
    mujoco.mj_forward(model, d)
    return d


# --- the model ------------------------------------------------------------------------------------


def test_zero_variation_draws_nothing_and_leaves_the_model_bit_identical(model, pristine, variator):
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    drawn = variator.apply(SceneVariation(), rng)
    assert rng.bit_generator.state == state
    assert _differing(pristine, _snapshot(model)) == []
    assert drawn == variator.nominal()
    assert drawn["cube_half_m"] == sim_scene.CUBE_HALF_M
    assert drawn["cube_rgba"] == pytest.approx([0.9, 0.1, 0.1, 1.0])
    # after a varied episode, a nominal one puts the nominal model back, still drawing nothing
    variator.apply(ALL, rng)
    assert _differing(pristine, _snapshot(model)) != []
    state = rng.bit_generator.state
    variator.apply(SceneVariation(), rng)
    assert rng.bit_generator.state == state
    assert _differing(pristine, _snapshot(model)) == []


def test_a_knob_at_zero_leaves_its_fields_alone(model, pristine, variator):
    variator.apply(SceneVariation(camera_pos_m=0.01), np.random.default_rng(0))
    changed = set(_differing(pristine, _snapshot(model)))
    assert "cam_pos" in changed
    assert changed.isdisjoint({"cam_quat", "light_dir", "light_pos", "light_diffuse", "vis.headlight",
                               "mat_rgba", "geom_rgba", "geom_size", "body_mass", "body_inertia"})


def test_restore_returns_the_nominal_model(model, pristine, variator):
    drawn = variator.apply(ALL, np.random.default_rng(11))
    changed = set(_differing(pristine, _snapshot(model)))
    # every knob reached the model
    assert {"cam_pos", "cam_quat", "light_diffuse", "light_specular", "vis.headlight", "light_dir",
            "light_pos", "mat_rgba", "geom_size", "geom_rbound", "body_mass", "body_inertia", "qpos0",
            "body_subtreemass", "stat"} <= changed
    assert drawn["cube_half_m"] != sim_scene.CUBE_HALF_M
    variator.restore()
    assert _differing(pristine, _snapshot(model)) == []
    variator.restore()  # twice is harmless
    assert _differing(pristine, _snapshot(model)) == []


def test_the_same_seed_gives_the_same_draw_and_model(model, variator):
    a = variator.apply(ALL, np.random.default_rng(5))
    snap_a = _snapshot(model)
    variator.apply(ALL, np.random.default_rng(6))
    b = variator.apply(ALL, np.random.default_rng(5))
    assert a == b
    assert _differing(snap_a, _snapshot(model)) == []


def test_different_seeds_give_different_draws(variator):
    a = variator.apply(ALL, np.random.default_rng(1))
    b = variator.apply(ALL, np.random.default_rng(2))
    for key in ("camera_pos_offset_m", "camera_rot_offset_rad", "light_diffuse_scale", "light_ambient_scale",
                "headlight_diffuse_scale", "headlight_ambient_scale", "light_dir", "light_pos_m", "cube_rgba",
                "cube_half_m", "cube_mass_kg"):
        assert a[key] != b[key], key


def test_the_draw_is_json_and_applies_apply_sequentially_from_the_nominal(variator):
    rng = np.random.default_rng(8)
    first = variator.apply(ALL, rng)
    assert json.loads(json.dumps(first)) == first
    second = variator.apply(SceneVariation(camera_pos_m=0.01), rng)
    # the second episode starts from the nominal model, not from the first episode's
    nominal = variator.nominal()
    assert second["cube_half_m"] == nominal["cube_half_m"]
    assert np.allclose(np.array(second["camera_pos_m"]) - second["camera_pos_offset_m"], nominal["camera_pos_m"],
                       rtol=0, atol=1e-15)


def test_draws_stay_within_the_amplitudes_and_reach_the_model(model, variator):
    nom = variator.nominal()
    cam = model.camera(sim_scene.CAMERA_NAME).id
    g, b = model.geom(sim_scene.CUBE_GEOM).id, model.body(sim_scene.CUBE_BODY).id
    v = ALL
    extremes = []
    for seed in range(40):
        d = variator.apply(v, np.random.default_rng(seed))
        off = np.array(d["camera_pos_offset_m"])
        assert np.all(np.abs(off) <= v.camera_pos_m)
        assert np.array_equal(model.cam_pos[cam], np.array(nom["camera_pos_m"]) + off)
        rot = np.array(d["camera_rot_offset_rad"])
        assert np.all(np.abs(rot) <= v.camera_rot_rad)
        # the camera turned by exactly |rotvec| from its nominal orientation
        dq = np.zeros(4)
        mujoco.mju_negQuat(dq, np.array(nom["camera_quat"]))
        mujoco.mju_mulQuat(dq, dq, np.array(model.cam_quat[cam]))
        assert 2 * math.acos(min(1.0, abs(dq[0]))) == pytest.approx(np.linalg.norm(rot), abs=1e-9)
        for key in ("light_diffuse_scale", "light_ambient_scale"):
            assert all(abs(f - 1.0) <= v.light_frac for f in d[key])
        for key in ("headlight_diffuse_scale", "headlight_ambient_scale"):
            assert abs(d[key] - 1.0) <= v.light_frac
        assert np.allclose(model.light_diffuse[0], 0.7 * d["light_diffuse_scale"][0])
        assert np.allclose(model.vis.headlight.diffuse, 0.6 * d["headlight_diffuse_scale"])
        assert np.allclose(model.vis.headlight.ambient, 0.3 * d["headlight_ambient_scale"])
        ldir_off = np.array(d["light_dir_offset_rad"])
        assert np.all(np.abs(ldir_off) <= v.light_dir_rad)
        ldir = model.light_dir[0]
        assert np.linalg.norm(ldir) == pytest.approx(1.0)
        # Rodrigues: the nominal direction turned by the drawn rotation vector
        theta = np.linalg.norm(ldir_off[0])
        k, d0 = ldir_off[0] / theta, np.array(nom["light_dir"][0])
        want = d0 * math.cos(theta) + np.cross(k, d0) * math.sin(theta) + k * (k @ d0) * (1 - math.cos(theta))
        assert np.allclose(ldir, want, atol=1e-12)
        assert np.all(np.abs(np.array(d["light_pos_offset_m"])) <= v.light_pos_m)
        rgba = np.array(d["cube_rgba"])
        assert np.all(np.abs(rgba[:3] - np.array(nom["cube_rgba"][:3])) <= v.cube_rgb_frac + 1e-6)
        assert np.all((rgba >= 0) & (rgba <= 1)) and rgba[3] == 1.0
        assert np.allclose(model.mat_rgba[model.geom_matid[g]], rgba)
        half = d["cube_half_m"]
        assert abs(half / sim_scene.CUBE_HALF_M - 1.0) <= v.cube_size_frac
        assert cube_half_m(model) == half
        assert np.array_equal(model.geom_size[g], [half] * 3)
        assert model.geom_rbound[g] == pytest.approx(half * math.sqrt(3))
        assert np.allclose(model.geom_aabb[g], [0, 0, 0, half, half, half])
        # constant density: mass with the volume, a solid cube's inertia
        mass = sim_scene.CUBE_MASS_KG * (half / sim_scene.CUBE_HALF_M) ** 3
        assert d["cube_mass_kg"] == pytest.approx(mass) and model.body_mass[b] == pytest.approx(mass)
        assert np.allclose(model.body_inertia[b], [mass * (2 * half) ** 2 / 6] * 3)
        assert model.body_subtreemass[b] == pytest.approx(mass)
        extremes.append(half / sim_scene.CUBE_HALF_M - 1.0)
    # and the draws do use the range (uniform over +-amplitude, not a sliver of it)
    assert min(extremes) < -0.6 * v.cube_size_frac and max(extremes) > 0.6 * v.cube_size_frac


def test_a_knobs_draw_does_not_depend_on_the_other_knobs(variator):
    only_cam = variator.apply(SceneVariation(camera_pos_m=0.01), np.random.default_rng(4))
    with_light = variator.apply(SceneVariation(camera_pos_m=0.01, light_frac=0.5), np.random.default_rng(4))
    doubled = variator.apply(SceneVariation(camera_pos_m=0.02), np.random.default_rng(4))
    assert only_cam["camera_pos_offset_m"] == with_light["camera_pos_offset_m"]
    assert np.allclose(np.array(doubled["camera_pos_offset_m"]), 2 * np.array(only_cam["camera_pos_offset_m"]))


def _seed_with_size(variator, v, want_scale_below: float | None = None, want_scale_above: float | None = None):
    for seed in range(200):
        half = variator.apply(v, np.random.default_rng(seed))["cube_half_m"]
        scale = half / sim_scene.CUBE_HALF_M
        if (want_scale_below is not None and scale < want_scale_below) or \
           (want_scale_above is not None and scale > want_scale_above):
            return seed
    raise AssertionError("no seed drew such a cube")


@pytest.mark.parametrize("which", ["small", "large"])
def test_a_varied_cube_spawned_at_its_half_size_rests_on_the_floor(model, variator, which):
    v = SceneVariation(cube_size_frac=0.4)
    seed = (_seed_with_size(variator, v, want_scale_below=0.75) if which == "small"
            else _seed_with_size(variator, v, want_scale_above=1.25))
    half = variator.apply(v, np.random.default_rng(seed))["cube_half_m"]
    d = mujoco.MjData(model)
    qadr = model.jnt_qposadr[model.joint(sim_scene.CUBE_JOINT).id]
    vadr = model.jnt_dofadr[model.joint(sim_scene.CUBE_JOINT).id]
    d.qpos[qadr:qadr + 7] = [0.25, 0.0, half, 1.0, 0.0, 0.0, 0.0]  # what the reset does, at the new size
    mujoco.mj_forward(model, d)
    max_speed = 0.0
    for _ in range(250):  # 0.5 s
        mujoco.mj_step(model, d)
        max_speed = max(max_speed, float(np.abs(d.qvel[vadr:vadr + 6]).max()))
    z = d.qpos[qadr + 2]
    reset = mujoco.MjData(model)  # mj_resetData (the reset's first step) spawns it at its half-size too
    mujoco.mj_resetData(model, reset)
    assert reset.qpos[qadr + 2] == half
    assert z == pytest.approx(half, abs=2e-4)  # resting on the floor at its own half-size...
    assert abs(z - sim_scene.CUBE_HALF_M) > 3e-3  # ...which is not the nominal one
    assert max_speed < 0.05  # it neither fell nor popped out of the floor
    assert np.allclose(d.qpos[qadr:qadr + 2], [0.25, 0.0], atol=1e-4)
    pairs = {tuple(sorted((model.geom(c.geom1).name, model.geom(c.geom2).name))) for c in d.contact[:d.ncon]}
    assert pairs == {(sim_scene.CUBE_GEOM, sim_scene.FLOOR_GEOM)}


# --- rendering ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def renderer(model):
    headless_gl_fallback()
    r = mujoco.Renderer(model, 48, 64)
    yield r
    r.close()


def _render(renderer, model, camera, depth=False, seg=False) -> np.ndarray:
    d = _rest_data(model)  # the new camera/light poses reach the data at the forward pass
    if depth:
        renderer.enable_depth_rendering()
    if seg:
        renderer.enable_segmentation_rendering()
    try:
        renderer.update_scene(d, camera=camera)
        return np.array(renderer.render(), copy=True)
    finally:
        renderer.disable_depth_rendering()
        renderer.disable_segmentation_rendering()


def _cube_view() -> mujoco.MjvCamera:
    cam = mujoco.MjvCamera()
    cam.lookat[:] = [0.25, 0.0, sim_scene.CUBE_HALF_M]
    cam.distance, cam.azimuth, cam.elevation = 0.25, 180.0, -45.0
    return cam


@pytest.mark.parametrize("knob", ["camera_pos_m", "camera_rot_rad"])
def test_a_camera_jitter_changes_the_wrist_cameras_depth(model, variator, renderer, knob):
    nominal = _render(renderer, model, sim_scene.CAMERA_NAME, depth=True)
    assert np.isfinite(nominal).all() and (nominal < 10).mean() > 0.2  # it sees the floor/gripper
    amplitude = LIMITS[knob][0] / 2
    variator.apply(SceneVariation(**{knob: amplitude}), np.random.default_rng(0))
    jittered = _render(renderer, model, sim_scene.CAMERA_NAME, depth=True)
    near = (nominal < 10) & (jittered < 10)
    assert np.abs(jittered - nominal)[near].mean() > 1e-3  # metres
    variator.restore()
    assert np.array_equal(_render(renderer, model, sim_scene.CAMERA_NAME, depth=True), nominal)


def test_cube_colour_size_and_lighting_show_in_the_render(model, variator, renderer):
    view = _cube_view()
    rgb0 = _render(renderer, model, view).astype(int)
    seg0 = _render(renderer, model, view, seg=True)
    cube = model.geom(sim_scene.CUBE_GEOM).id
    cube_px = seg0[:, :, 0] == cube
    assert cube_px.sum() > 20
    assert rgb0[cube_px][:, 0].mean() > 2 * rgb0[cube_px][:, 1].mean()  # red

    variator.apply(SceneVariation(cube_rgb_frac=0.5), np.random.default_rng(0))
    rgba = model.mat_rgba[model.geom_matid[cube]]
    rgb = _render(renderer, model, view).astype(int)
    change = np.abs(rgb - rgb0)
    assert change[cube_px].mean() > 5
    # only the cube changed colour (off it: its edges' antialiasing and its faint floor reflection)
    assert change[~cube_px].mean() < 0.05 * change[cube_px].mean()
    # the colour moved the way the draw says (green channel up or down with the drawn green)
    assert np.sign(rgb[cube_px][:, 1].mean() - rgb0[cube_px][:, 1].mean()) == np.sign(rgba[1] - 0.1)

    seed = _seed_with_size(variator, SceneVariation(cube_size_frac=0.4), want_scale_above=1.25)
    variator.apply(SceneVariation(cube_size_frac=0.4), np.random.default_rng(seed))
    seg = _render(renderer, model, view, seg=True)
    assert (seg[:, :, 0] == cube).sum() > 1.3 * cube_px.sum()  # what is drawn grew with what collides

    variator.apply(SceneVariation(light_frac=0.9), np.random.default_rng(0))
    assert np.abs(_render(renderer, model, view).astype(int) - rgb0).mean() > 2
    variator.restore()
    assert np.array_equal(_render(renderer, model, view).astype(int), rgb0)


# --- amplitudes and parsing ----------------------------------------------------------------------


def test_parse_round_trip_and_defaults():
    assert parse_variation("") == SceneVariation() and SceneVariation().is_nominal
    v = parse_variation(" camera_pos_m=0.005 , light_frac=0.3,")
    assert v == SceneVariation(camera_pos_m=0.005, light_frac=0.3) and not v.is_nominal
    assert parse_variation(ALL.to_string()) == ALL
    assert set(ALL.as_dict()) == set(known_knobs()) == set(LIMITS)


@pytest.mark.parametrize("text, field, words", [
    ("camera_pos=0.01", "camera_pos", ["unknown", "camera_pos_m", "cube_size_frac"]),
    ("light_frac=bright", "light_frac", ["expected", "bright"]),
    ("light_frac=-0.1", "light_frac", ["expected", "[0, 0.9]"]),
    ("cube_size_frac=0.9", "cube_size_frac", ["expected", "[0, 0.5]"]),
    ("camera_rot_rad=nan", "camera_rot_rad", ["finite"]),
    ("camera_pos_m=inf", "camera_pos_m", ["finite", "m"]),
    ("light_frac=0.1,light_frac=0.2", "light_frac", ["twice"]),
    ("light_frac", "light_frac", ["name=value"]),
])
def test_parse_errors_are_one_line_and_name_the_field(text, field, words):
    with pytest.raises(ValueError) as e:
        parse_variation(text)
    msg = str(e.value)
    assert "\n" not in msg and field in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("kwargs, field", [
    ({"camera_pos_m": -0.001}, "camera_pos_m"), ({"light_dir_rad": 2.0}, "light_dir_rad"),
    ({"cube_rgb_frac": True}, "cube_rgb_frac"), ({"light_pos_m": "0.1"}, "light_pos_m"),
    ({"cube_size_frac": float("nan")}, "cube_size_frac"),
])
def test_amplitudes_are_validated_at_construction(kwargs, field):
    with pytest.raises(ValueError, match=field) as e:
        SceneVariation(**kwargs)
    assert "\n" not in str(e.value)


def test_apply_rejects_what_is_not_a_variation_or_a_generator(variator):
    with pytest.raises(TypeError):
        variator.apply({"camera_pos_m": 0.01}, np.random.default_rng(0))
    with pytest.raises(TypeError):
        variator.apply(ALL, 0)
