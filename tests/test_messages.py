"""The message layer: every schema round-trips without copies, and every bad input is refused with
the exact error a user reads in a node's log."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from so101_deploy.core.messages import (OBS_LOWDIM_SHAPE, OBS_RGB_SHAPE, SCHEMAS, MessageError, decode, encode,
                                   join_observation, split_observation)

H, W = 4, 6  # images are checked against their metadata, so tiny frames exercise the same code


def _samples() -> dict[str, tuple[np.ndarray, dict]]:
    """A valid (array, extra metadata) for every schema."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, OBS_RGB_SHAPE).astype(np.uint8)
    low = rng.normal(size=OBS_LOWDIM_SHAPE).astype(np.float32)
    return {
        "image": (rng.integers(0, 256, (H, W, 3)).astype(np.uint8), {}),
        "seg_mask": (rng.integers(0, 6, (H, W)).astype(np.uint8), {"classes": "real6"}),
        "disparity": (rng.random((H, W)).astype(np.float32) * 10, {}),
        "joint_state": (rng.normal(size=(2, 6)), {}),
        "observation": (join_observation(rgb, low), {}),
        "action": (np.array([0.5, -1.0, 1.0, 0.0], np.float32), {"action_space": "cartesian"}),
        "joint_goal": (rng.normal(size=6), {}),
        "estop": (np.array([1], np.uint8), {}),
    }


SAMPLES = _samples()


def test_every_schema_has_a_sample():
    # a new schema must get a sample here, so it is round-tripped and checked like the others
    assert set(SAMPLES) == set(SCHEMAS)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_round_trip_keeps_values_shape_and_metadata(name):
    data, extra = SAMPLES[name]
    value, meta = encode(name, data, frame_id=7, stamp_ns=123_456_789, **extra)
    assert isinstance(value, pa.Array) and value.type == pa.from_numpy_dtype(SCHEMAS[name].dtype)
    assert meta["encoding"] == SCHEMAS[name].encoding
    msg = decode(name, value, dict(meta, timestamp="added by dora"))
    assert msg.name == name
    assert msg.data.shape == data.shape and msg.data.dtype == data.dtype
    np.testing.assert_array_equal(msg.data, data)
    assert (msg.frame_id, msg.stamp_ns) == (7, 123_456_789)
    assert "timestamp" not in msg.meta
    for k, v in extra.items():
        assert msg.meta[k] == v


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_encode_and_decode_do_not_copy(name):
    data, extra = SAMPLES[name]
    data = np.ascontiguousarray(data)
    value, meta = encode(name, data, frame_id=0, stamp_ns=0, **extra)
    assert value.buffers()[1].address == data.ctypes.data  # Arrow wraps the numpy buffer
    msg = decode(name, value, meta)
    assert msg.data.ctypes.data == value.buffers()[1].address  # numpy views the Arrow buffer
    assert not msg.data.flags.writeable  # a received message cannot be modified by accident


def test_full_size_camera_frame_round_trip():
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3)).astype(np.uint8)
    value, meta = encode("image", frame, frame_id=3, stamp_ns=5)
    assert (meta["height"], meta["width"]) == (480, 640) and len(value) == 480 * 640 * 3
    np.testing.assert_array_equal(decode("image", value, meta).data, frame)


def test_observation_split_inverts_join():
    data, _ = SAMPLES["observation"]
    rgb, low = split_observation(decode("observation", *encode("observation", data, frame_id=0, stamp_ns=0)).data)
    assert rgb.shape == OBS_RGB_SHAPE and low.shape == OBS_LOWDIM_SHAPE
    np.testing.assert_array_equal(join_observation(rgb.astype(np.uint8), low), data)


def test_joint_delta_action_round_trip():
    a = np.linspace(-1, 1, 6).astype(np.float32)
    msg = decode("action", *encode("action", a, frame_id=1, stamp_ns=1, action_space="joint_delta"))
    np.testing.assert_array_equal(msg.data, a)


# --- bad inputs: the exact text a user sees ---------------------------------------------------

def _image_meta(**over):
    meta = {"encoding": "bgr8", "frame_id": 0, "stamp_ns": 1, "height": H, "width": W}
    meta.update(over)
    return meta


def _refused(fn, *args, **kwargs) -> str:
    with pytest.raises(MessageError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_wrong_shape():
    assert _refused(decode, "image", pa.array(np.zeros(70, np.uint8)), _image_meta()) == (
        "image.data: expected shape (4, 6, 3) (pixel intensity 0-255), got (70,)")
    assert _refused(encode, "joint_goal", np.zeros(5), frame_id=0, stamp_ns=0) == (
        "joint_goal.data: expected shape (6,) (rad), got (5,)")
    assert _refused(encode, "image", np.zeros((H, W, 4), np.uint8), frame_id=0, stamp_ns=0) == (
        "image.data: expected shape (4, 6, 3) (pixel intensity 0-255), got (4, 6, 4)")
    assert _refused(encode, "action", np.zeros(6, np.float32), frame_id=0, stamp_ns=0, action_space="cartesian") == (
        "action.data: action_space 'cartesian' needs shape (4,), got (6,)")


def test_wrong_dtype():
    assert _refused(encode, "image", np.zeros((H, W, 3), np.float32), frame_id=0, stamp_ns=0) == (
        "image.data: expected dtype uint8, got float32")
    assert _refused(decode, "image", pa.array(np.zeros(H * W * 3, np.float32)), _image_meta()) == (
        "image.data: expected Arrow type uint8, got float")
    assert _refused(decode, "joint_state", pa.array(np.zeros(12, np.float32)),
                    {"encoding": "joint_state", "frame_id": 0, "stamp_ns": 0}) == (
        "joint_state.data: expected Arrow type double, got float")
    assert _refused(decode, "image", [1, 2, 3], _image_meta()) == "image.data: expected an Arrow array, got list"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(bad):
    d = np.ones((H, W), np.float32)
    d[1, 2] = bad
    assert _refused(encode, "disparity", d, frame_id=0, stamp_ns=0) == (
        "disparity.data: expected finite values, got 1 NaN/inf (first at index (1, 2))")
    goal = np.zeros(6)
    goal[4] = bad
    value = pa.array(goal)  # a NaN that arrives from another node is refused on decode too
    assert _refused(decode, "joint_goal", value, {"encoding": "joint_goal", "frame_id": 0, "stamp_ns": 0}) == (
        "joint_goal.data: expected finite values, got 1 NaN/inf (first at index (4,))")


def test_missing_metadata():
    meta = _image_meta()
    del meta["frame_id"], meta["width"]
    assert _refused(decode, "image", pa.array(np.zeros(H * W * 3, np.uint8)), meta) == (
        "image.metadata: missing ['frame_id', 'width']; a image message needs "
        "['encoding', 'frame_id', 'stamp_ns', 'height', 'width']")
    assert _refused(decode, "joint_goal", pa.array(np.zeros(6)), None) == (
        "joint_goal.metadata: missing ['encoding', 'frame_id', 'stamp_ns']; a joint_goal message needs "
        "['encoding', 'frame_id', 'stamp_ns']")
    assert _refused(encode, "image", np.zeros((H, W, 3), np.uint8), stamp_ns=0) == (
        "image.metadata: missing ['frame_id']; a image message needs "
        "['encoding', 'frame_id', 'stamp_ns', 'height', 'width']")
    assert _refused(encode, "seg_mask", np.zeros((H, W), np.uint8), frame_id=0, stamp_ns=0) == (
        "seg_mask.metadata: missing ['classes']; a seg_mask message needs "
        "['encoding', 'frame_id', 'stamp_ns', 'height', 'width', 'classes']")


def test_malformed_metadata():
    value = pa.array(np.zeros(H * W * 3, np.uint8))
    assert _refused(decode, "image", value, _image_meta(encoding="rgb8")) == (
        "image.metadata.encoding: expected 'bgr8', got 'rgb8'")
    assert _refused(decode, "image", value, _image_meta(frame_id=-1)) == (
        "image.metadata.frame_id: expected a non-negative int, got -1")
    assert _refused(decode, "image", value, _image_meta(stamp_ns=1.5)) == (
        "image.metadata.stamp_ns: expected a non-negative int, got 1.5")
    assert _refused(decode, "image", value, _image_meta(frame_id=True)) == (
        "image.metadata.frame_id: expected a non-negative int, got True")
    assert _refused(decode, "image", value, _image_meta(height="4")) == (
        "image.metadata.height: expected a positive int, got '4'")
    assert _refused(encode, "action", np.zeros(4, np.float32), frame_id=0, stamp_ns=0, action_space="polar") == (
        "action.metadata.action_space: expected one of ['cartesian', 'joint_delta'], got 'polar'")


def test_values_out_of_range():
    assert _refused(encode, "seg_mask", np.full((H, W), 6, np.uint8), frame_id=0, stamp_ns=0, classes="real6") == (
        "seg_mask.data: expected values in [0, 5], got [6, 6]")
    assert _refused(encode, "seg_mask", np.full((H, W), 5, np.uint8), frame_id=0, stamp_ns=0, classes="sim5") == (
        "seg_mask.data: expected values in [0, 4], got [5, 5]")
    assert _refused(encode, "seg_mask", np.zeros((H, W), np.uint8), frame_id=0, stamp_ns=0, classes="coco") == (
        "seg_mask.metadata.classes: expected 'real6' or 'sim5', got 'coco'")
    assert _refused(encode, "action", np.array([0, 0, 1.5, 0], np.float32), frame_id=0, stamp_ns=0,
                    action_space="cartesian") == "action.data: expected values in [-1.0, 1.0], got [0.0, 1.5]"
    assert _refused(encode, "estop", np.array([3], np.uint8), frame_id=0, stamp_ns=0) == (
        "estop.data: expected values in [0, 2], got [3, 3]")


def test_nulls_and_unknown_names():
    assert _refused(decode, "image", pa.array([1, None], pa.uint8()), _image_meta()) == (
        "image.data: expected no nulls, got 1")
    text = _refused(decode, "pointcloud", pa.array([1.0]), {})
    assert re.fullmatch(r"unknown message 'pointcloud'; known: \[.*'image'.*\]", text)


def test_chunked_arrays_are_accepted():
    data, _ = SAMPLES["joint_goal"]
    value, meta = encode("joint_goal", data, frame_id=0, stamp_ns=0)
    chunked = pa.chunked_array([value.slice(0, 3), value.slice(3)])
    np.testing.assert_array_equal(decode("joint_goal", chunked, meta).data, data)
