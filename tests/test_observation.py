"""The observation node's logic against a plain re-implementation of the simulator wrapper's rules.

The reference below is written from the rules (facts §2), not from shared/so101_deploy/policy/observation.py:
disparity min-max over the full frame (ones if range <= 1e-6) -> *255 truncated to uint8 ->
columns 80:560 -> 84x84 INTER_AREA; real mask -> clip(id-1, 0, 4) -> same crop -> INTER_NEAREST;
3 frames oldest first, filled with the first frame.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from so101_deploy.core.messages import decode, encode, split_observation
from so101_deploy.policy.observation import (ObservationBuilder, ObservationError, ObservationNode, ObservationOptions,
                                      build_frame, crop_resize, disparity_to_u8, mask_to_sim,
                                      observation_node_from_settings)
from so101_deploy.core.settings import Settings, SettingError
from so101_deploy.policy.proprio import Proprioception
from so101_deploy.core.recording import read_recording
from so101_deploy.sim.synthetic import render_scene
from so101_deploy.policy.observation import SETTINGS as OBS_SETTINGS

RECORDING = Path(__file__).parent / "data" / "recordings" / "obs_sim_oracle"


# --- the plain reference -------------------------------------------------------------------------

def ref_disparity(disp, interp=cv2.INTER_AREA, normalise_over_crop=False):
    d = np.array(disp, dtype=np.float32)
    if normalise_over_crop:
        d = d[:, 80:560]
    lo = d.min()
    hi = d.max()
    if hi - lo <= 1e-6:
        unit = np.ones(d.shape, np.float32)
    else:
        unit = (d - lo) / (hi - lo)
    u8 = (unit * 255).astype(np.uint8)
    if not normalise_over_crop:
        u8 = u8[:, 80:560]
    return cv2.resize(np.ascontiguousarray(u8), (84, 84), interpolation=interp)


def ref_mask(mask, classes="real6", remap=True):
    m = np.array(mask)
    if classes == "real6" and remap:
        m = np.clip(m.astype(np.int64) - 1, 0, 4).astype(np.uint8)
    return cv2.resize(np.ascontiguousarray(m[:, 80:560]), (84, 84), interpolation=cv2.INTER_NEAREST)


def ref_frame(mask, disp, classes="real6"):
    return np.stack([ref_mask(mask, classes), ref_disparity(disp)])


def ref_stack(frames):
    """Stacks after each frame: oldest first, the first frame copied into all 3 slots."""
    out, buf = [], []
    for f in frames:
        buf = [f, f, f] if not buf else (buf + [f])[-3:]
        out.append(np.stack(buf))
    return out


# --- helpers -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def proprio():
    return Proprioception()


def msg(name, data, fid, stamp_ns=None, **meta):
    return decode(name, *encode(name, data, frame_id=fid, stamp_ns=stamp_ns if stamp_ns is not None else 1000 + fid,
                                **meta))


def joint_msg(q, fid=0, stamp_ns=1):
    return msg("joint_state", np.stack([np.asarray(q, np.float64), np.zeros(6)]), fid, stamp_ns)


def synthetic_inputs(n, seed=0):
    """Real 6-class masks of the generated scene and random full-precision disparity maps."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        _, mask = render_scene(i, seed=seed)
        disp = (rng.random((480, 640), dtype=np.float32) * rng.uniform(0.5, 30)).astype(np.float32)
        disp[100:300, 200:400] += 5.0  # a near object
        out.append((mask, disp))
    return out


def builder_with_joints(proprio, options=ObservationOptions(), q=np.zeros(6)):
    proprio.reset()
    b = ObservationBuilder(options, proprio)
    b.add_joint_state(joint_msg(q))
    return b


# --- golden tests --------------------------------------------------------------------------------

def test_recorded_sim_oracle_observation_is_bit_exact(proprio):
    rec = read_recording(RECORDING)
    assert len(rec["mask"]) >= 4 and rec["mask"][0].meta["classes"] == "sim5"
    proprio.reset()
    b = ObservationBuilder(ObservationOptions(), proprio)
    # replay in time order, joint states first at equal stamps (the sim reads the arm, then renders)
    events = sorted([(m.stamp_ns, 0, "joint_state", m) for m in rec["joint_state"]] +
                    [(m.stamp_ns, 1, "mask", m) for m in rec["mask"]] +
                    [(m.stamp_ns, 2, "disparity", m) for m in rec["disparity"]], key=lambda e: e[:2])
    got, lows = [], []
    for _, _, topic, m in events:
        if topic == "joint_state":
            b.add_joint_state(m)
            continue
        obs = b.add_mask(m) if topic == "mask" else b.add_disparity(m)
        if obs is not None:
            got.append(obs)
            lows.append(proprio.vector.astype(np.float32))
    frames = [ref_frame(m.data, d.data, "sim5") for m, d in zip(rec["mask"], rec["disparity"])]
    want = ref_stack(frames)
    assert len(got) == len(want)
    for obs, w, m in zip(got, want, rec["mask"]):
        assert obs.frame_id == m.frame_id and obs.stamp_ns == m.stamp_ns
        assert obs.rgb_u8.dtype == np.uint8 and obs.rgb_u8.shape == (3, 2, 84, 84)
        np.testing.assert_array_equal(obs.rgb_u8, w)
    # the frames differ, so the stack order is really tested
    assert not np.array_equal(frames[0], frames[-1])
    # proprioception stacks like the images, from the joint state current at each frame
    np.testing.assert_array_equal(got[-1].low_dim_state, np.stack(lows[-3:]))
    np.testing.assert_array_equal(got[0].low_dim_state, np.stack([lows[0]] * 3))
    assert b.counters.built == len(want) and b.counters.unmatched == 0 and b.counters.stale == 0


def test_synthetic_real6_frames_are_bit_exact(proprio):
    b = builder_with_joints(proprio)
    inputs = synthetic_inputs(5)
    got = []
    for fid, (mask, disp) in enumerate(inputs):
        assert b.add_disparity(msg("disparity", disp, fid)) is None
        got.append(b.add_mask(msg("seg_mask", mask, fid, classes="real6")))
    want = ref_stack([ref_frame(m, d) for m, d in inputs])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.rgb_u8, w)
    # remapped: real "cube" (3) became sim cube (2), no id 5 left
    seg = got[-1].rgb_u8[2, 0]
    assert seg.max() <= 4 and (seg == 2).any()


def test_constant_disparity_and_all_zero_masks():
    mask0 = np.zeros((480, 640), np.uint8)
    const = np.full((480, 640), 7.25, np.float32)
    frame = build_frame(mask0, const)
    np.testing.assert_array_equal(frame, ref_frame(mask0, const))
    assert (frame[1] == 255).all() and (frame[0] == 0).all()
    # a range at the threshold is still "constant"; just above it is not
    tiny = const.copy()
    tiny[0, 0] += 5e-7
    assert (disparity_to_u8(tiny) == 255).all()
    ramp = np.tile(np.linspace(0, 1, 640, dtype=np.float32), (480, 1))
    u8 = disparity_to_u8(ramp)
    assert u8[0, 0] == 0 and u8[0, -1] == 255
    np.testing.assert_array_equal(build_frame(mask0, ramp), ref_frame(mask0, ramp))
    # all-5 real mask -> 4, all-1 -> 0
    np.testing.assert_array_equal(mask_to_sim(np.full((4, 4), 5, np.uint8)), np.full((4, 4), 4, np.uint8))
    np.testing.assert_array_equal(mask_to_sim(np.full((4, 4), 1, np.uint8)), np.zeros((4, 4), np.uint8))


def test_truncation_not_rounding():
    d = np.zeros((480, 640), np.float32)
    d[0, 0] = 1.0
    d[1, 1] = 0.999  # 254.745 -> 254 (rounding would give 255)
    u8 = disparity_to_u8(d)
    assert u8[1, 1] == 254 and u8[0, 0] == 255


def test_normalised_over_full_frame_before_the_crop():
    # the global max lies outside the crop: with the training order the crop never reaches 255
    d = np.zeros((480, 640), np.float32)
    d[:, 80:560] = np.tile(np.linspace(0, 1, 480, dtype=np.float32), (480, 1))
    d[0, 0] = 2.0
    mask = np.zeros((480, 640), np.uint8)
    default = build_frame(mask, d)[1]
    crop_first = build_frame(mask, d, options=ObservationOptions(normalise="crop"))[1]
    np.testing.assert_array_equal(default, ref_disparity(d))
    np.testing.assert_array_equal(crop_first, ref_disparity(d, normalise_over_crop=True))
    assert default.max() <= 128 and crop_first.max() > 200


def test_variants_are_options_and_match_their_rules():
    (mask, disp), = synthetic_inputs(1, seed=4)
    lin = build_frame(mask, disp, options=ObservationOptions(disparity_interp="linear"))
    np.testing.assert_array_equal(lin[1], ref_disparity(disp, cv2.INTER_LINEAR))
    assert not np.array_equal(lin[1], ref_disparity(disp))
    raw = build_frame(mask, disp, options=ObservationOptions(remap=False))
    np.testing.assert_array_equal(raw[0], ref_mask(mask, remap=False))
    assert raw[0].max() == 5
    # sim5 masks are never remapped
    sim = np.clip(mask.astype(int) - 1, 0, 4).astype(np.uint8)
    np.testing.assert_array_equal(build_frame(sim, disp, "sim5")[0], ref_mask(sim, "sim5"))


def test_settings_choose_variants_and_reject_bad_values():
    node = observation_node_from_settings(Settings("observation", OBS_SETTINGS, {}))
    assert node.builder.options == ObservationOptions() and node.builder.options.is_training_default
    env = {"SO101_OBS_DISPARITY_INTERP": "linear", "SO101_OBS_NORMALISE": "crop", "SO101_OBS_REMAP": "false"}
    opts = observation_node_from_settings(Settings("observation", OBS_SETTINGS, env)).builder.options
    assert opts == ObservationOptions("linear", "crop", False)
    with pytest.raises(SettingError, match="SO101_OBS_DISPARITY_INTERP"):
        ObservationOptions.from_settings(Settings("observation", OBS_SETTINGS, {"SO101_OBS_DISPARITY_INTERP": "cubic"}))
    with pytest.raises(SettingError, match="SO101_OBS_REMAP"):
        ObservationOptions.from_settings(Settings("observation", OBS_SETTINGS, {"SO101_OBS_REMAP": "maybe"}))


# --- pairing, stacking, reset --------------------------------------------------------------------

def test_pairs_by_frame_id_and_counts_drops(proprio):
    b = builder_with_joints(proprio)
    inputs = synthetic_inputs(4, seed=1)
    m = [msg("seg_mask", mk, i, classes="real6") for i, (mk, _) in enumerate(inputs)]
    d = [msg("disparity", dp, i) for i, (_, dp) in enumerate(inputs)]
    assert b.add_mask(m[0]) is None
    assert b.add_mask(m[1]) is None
    obs = b.add_disparity(d[1])  # frame 1 complete: frame 0's lone mask is unmatched
    assert obs.frame_id == 1
    np.testing.assert_array_equal(obs.rgb_u8[2], ref_frame(*inputs[1]))
    assert b.counters.unmatched == 1
    assert b.add_disparity(d[0]) is None  # too late
    assert b.counters.stale == 1
    assert b.add_disparity(d[3]) is None
    assert b.add_disparity(d[3]) is None  # duplicate half replaces the pending one
    assert b.counters.duplicate == 1
    obs = b.add_mask(m[3])
    assert obs.frame_id == 3 and b.counters.built == 2
    np.testing.assert_array_equal(obs.rgb_u8, np.stack([ref_frame(*inputs[1])] * 2 + [ref_frame(*inputs[3])]))


def test_pending_halves_do_not_pile_up(proprio):
    b = builder_with_joints(proprio)
    mk = np.zeros((480, 640), np.uint8)
    for i in range(20):  # the disparity never comes
        b.add_mask(msg("seg_mask", mk, i, classes="real6"))
    assert len(b._pending) <= b.max_pending
    assert b.counters.unmatched == 20 - b.max_pending


def test_no_observation_before_a_joint_state(proprio):
    proprio.reset()
    b = ObservationBuilder(ObservationOptions(), proprio)
    (mask, disp), = synthetic_inputs(1)
    b.add_mask(msg("seg_mask", mask, 0, classes="real6"))
    assert b.add_disparity(msg("disparity", disp, 0)) is None
    assert b.counters.no_joint_state == 1


def test_reset_refills_the_stack_with_the_next_frame(proprio):
    b = builder_with_joints(proprio)
    inputs = synthetic_inputs(4, seed=2)
    frames = [ref_frame(*x) for x in inputs]
    for i in range(3):
        b.add_mask(msg("seg_mask", inputs[i][0], i, classes="real6"))
        obs = b.add_disparity(msg("disparity", inputs[i][1], i))
    np.testing.assert_array_equal(obs.rgb_u8, np.stack(frames[:3]))
    b.reset()
    b.add_mask(msg("seg_mask", inputs[3][0], 3, classes="real6"))
    obs = b.add_disparity(msg("disparity", inputs[3][1], 3))
    np.testing.assert_array_equal(obs.rgb_u8, np.stack([frames[3]] * 3))
    assert b.counters.resets == 1


def test_node_encodes_the_observation_message(proprio):
    proprio.reset()
    node = ObservationNode(ObservationBuilder(ObservationOptions(), proprio))
    q = np.array([0.1, -0.2, 0.3, 1.2, 1.5, 0.4])
    node.on_joint_state(joint_msg(q, stamp_ns=5))
    (mask, disp), = synthetic_inputs(1, seed=3)
    assert node.on_mask(msg("seg_mask", mask, 9, stamp_ns=777, classes="real6")) is None
    value, meta = node.on_disparity(msg("disparity", disp, 9, stamp_ns=777))
    out = decode("observation", value, meta)
    assert out.frame_id == 9 and out.stamp_ns == 777 and meta["obs_built"] == 1 and meta["obs_remap"] == 1
    rgb, low = split_observation(out.data)
    np.testing.assert_array_equal(rgb, np.stack([ref_frame(mask, disp)] * 3).astype(np.float32))
    np.testing.assert_array_equal(low[2, :6], q.astype(np.float32))


def test_bad_inputs_are_refused():
    with pytest.raises(ObservationError, match="same"):
        build_frame(np.zeros((480, 640), np.uint8), np.zeros((480, 600), np.float32))
    with pytest.raises(ObservationError, match="finite"):
        disparity_to_u8(np.full((4, 4), np.nan, np.float32))
    with pytest.raises(ObservationError, match="uint8"):
        mask_to_sim(np.zeros((4, 4), np.int32))
    with pytest.raises(ObservationError, match="landscape"):
        crop_resize(np.zeros((640, 480), np.uint8), cv2.INTER_NEAREST)
    with pytest.raises(ValueError, match="disparity_interp"):
        ObservationOptions(disparity_interp="cubic")
