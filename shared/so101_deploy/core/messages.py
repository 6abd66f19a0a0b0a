"""The messages of the graph, declared once, and the encode/decode every node uses.

A message travels through dora as a flat Arrow array plus a metadata dict. The schema of each
message says its dtype, its shape (``"H"``/``"W"``/``"A"`` are read from the metadata), its
units and encoding, the metadata it must carry, and whether NaN/inf may appear.  ``decode``
checks all of it and raises :class:`MessageError` naming the message, the field and what was
expected; ``encode`` runs the same checks before anything leaves a node, so a bad value is
caught where it is made.

Zero copy: ``encode`` wraps the C-contiguous numpy buffer in an Arrow array without copying and
``decode`` views the Arrow buffer as numpy without copying (the result is read-only).
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

JOINT_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
N_JOINTS = len(JOINT_NAMES)

# Real segmentation classes (the annotation COCO ids the seg checkpoint predicts).  The policy was
# trained on the simulator's 5 classes (other, floor, cube, static_finger, moving_finger): real -> sim
# is clip(id - 1, 0, 4).
SEG_CLASSES_REAL = ("unlabeled", "background", "table", "cube", "static_finger", "moving_finger")

OBS_FRAMES = 3
OBS_SIZE = 84
PROPRIO_DIM = 18
ACTION_SPACES = {"cartesian": 4, "joint_delta": 6}


class MessageError(ValueError):
    """A message that does not match its declared schema."""


@dataclass(frozen=True)
class Schema:
    name: str
    dtype: np.dtype
    shape: tuple  # ints or names of integer metadata fields ("height", "width", "dim")
    units: str
    encoding: str  # the value of metadata["encoding"]
    allow_nonfinite: bool = False
    value_range: tuple[float, float] | None = None  # inclusive, checked after decoding
    extra_meta: tuple[str, ...] = ()  # required beyond width/height/encoding/frame_id/stamp_ns
    doc: str = ""

    @property
    def meta_fields(self) -> tuple[str, ...]:
        dims = tuple(d for d in self.shape if isinstance(d, str))
        return ("encoding", "frame_id", "stamp_ns") + dims + self.extra_meta


SCHEMAS: dict[str, Schema] = {
    s.name: s
    for s in (
        Schema("image", np.dtype(np.uint8), ("height", "width", 3), "pixel intensity 0-255", "bgr8",
               doc="camera frame, BGR, row-major HxWx3"),
        Schema("seg_mask", np.dtype(np.uint8), ("height", "width"), "class id", "mono8_class",
               value_range=(0, 5), extra_meta=("classes",),
               doc="per-pixel class id; classes='real6' (0-5) or 'sim5' (0-4)"),
        Schema("disparity", np.dtype(np.float32), ("height", "width"), "relative disparity (larger = nearer)",
               "32FC1", doc="raw relative inverse depth, not normalised"),
        Schema("joint_state", np.dtype(np.float64), (2, N_JOINTS), "row 0: rad, row 1: rad/s", "joint_state",
               doc="present joint positions (rad, gripper as its joint angle) and velocities (rad/s), "
                   "joints in JOINT_NAMES order; frame_id is the bus read counter"),
        Schema("observation", np.dtype(np.float32),
               (OBS_FRAMES * 2 * OBS_SIZE * OBS_SIZE + OBS_FRAMES * PROPRIO_DIM,),
               "rgb: raw 0-255 class ids/disparity; low_dim_state: rad, rad/s, m, rad", "obs_rgb_lowdim",
               doc="rgb (3,2,84,84) oldest first, then low_dim_state (3,18), concatenated flat; "
                   "see split_observation"),
        Schema("action", np.dtype(np.float32), ("dim",), "policy units [-1, 1]", "action",
               value_range=(-1.0, 1.0), extra_meta=("action_space",),
               doc="'cartesian' [dx, dy, dz, gripper] (dim 4) or 'joint_delta' (dim 6)"),
        Schema("joint_goal", np.dtype(np.float64), (N_JOINTS,), "rad", "joint_goal",
               doc="goal joint positions in JOINT_NAMES order, already inside the safety limits"),
        Schema("estop", np.dtype(np.uint8), (1,), "0 released, 1 engaged: hold, 2 engaged: release torque",
               "estop", value_range=(0, 2),
               doc="emergency stop state; the controller holds its goal while engaged (1 or 2), the servo "
                   "node releases torque on 2"),
    )
}

# The type each message has in dora 1.1's annotations (`output_types`/`input_types` in the YAML): what
# `dora validate --strict-types` can check is the element type of the flat array (and Image for frames).
_DORA_ELEMENT = {np.dtype(np.uint8): "std/core/v1/UInt8", np.dtype(np.float32): "std/core/v1/Float32",
                 np.dtype(np.float64): "std/core/v1/Float64"}
DORA_TYPES: dict[str, str] = {name: "std/media/v1/Image" if name == "image" else _DORA_ELEMENT[s.dtype]
                              for name, s in SCHEMAS.items()}


@dataclass
class Message:
    name: str
    data: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    sent_ns: int | None = None  # dora's send timestamp (Unix ns) when it came through dora, else None

    @property
    def frame_id(self) -> int:
        return int(self.meta["frame_id"])

    @property
    def stamp_ns(self) -> int:
        return int(self.meta["stamp_ns"])


def now_ns() -> int:
    return time.time_ns()


def _schema(name: str) -> Schema:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise MessageError(f"unknown message {name!r}; known: {sorted(SCHEMAS)}") from None


def _expected_shape(schema: Schema, meta: Mapping[str, Any]) -> tuple[int, ...]:
    out = []
    for d in schema.shape:
        if isinstance(d, str):
            v = meta.get(d)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise MessageError(f"{schema.name}.metadata.{d}: expected a positive int, got {v!r}")
            out.append(int(v))
        else:
            out.append(d)
    return tuple(out)


def _check_meta(schema: Schema, meta: Mapping[str, Any]) -> None:
    missing = [k for k in schema.meta_fields if k not in meta]
    if missing:
        raise MessageError(f"{schema.name}.metadata: missing {missing}; a {schema.name} message needs "
                           f"{list(schema.meta_fields)}")
    if meta["encoding"] != schema.encoding:
        raise MessageError(f"{schema.name}.metadata.encoding: expected {schema.encoding!r}, "
                           f"got {meta['encoding']!r}")
    for k in ("frame_id", "stamp_ns"):
        v = meta[k]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise MessageError(f"{schema.name}.metadata.{k}: expected a non-negative int, got {v!r}")
    if schema.name == "action" and meta["action_space"] not in ACTION_SPACES:
        raise MessageError(f"action.metadata.action_space: expected one of {list(ACTION_SPACES)}, "
                           f"got {meta['action_space']!r}")


def _check_values(schema: Schema, arr: np.ndarray, meta: Mapping[str, Any]) -> None:
    if schema.name == "action":
        want = ACTION_SPACES[meta["action_space"]]
        if arr.shape != (want,):
            raise MessageError(f"action.data: action_space {meta['action_space']!r} needs shape ({want},), "
                               f"got {arr.shape}")
    if arr.dtype.kind == "f" and not schema.allow_nonfinite:
        bad = ~np.isfinite(arr)
        if bad.any():
            raise MessageError(f"{schema.name}.data: expected finite values, got {int(bad.sum())} NaN/inf "
                               f"(first at index {tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape))})")
    lo_hi = schema.value_range
    if schema.name == "seg_mask":
        lo_hi = (0, 4) if meta.get("classes") == "sim5" else (0, 5)
        if meta.get("classes") not in ("real6", "sim5"):
            raise MessageError(f"seg_mask.metadata.classes: expected 'real6' or 'sim5', got {meta.get('classes')!r}")
    if lo_hi is not None and arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < lo_hi[0] or hi > lo_hi[1]:
            raise MessageError(f"{schema.name}.data: expected values in [{lo_hi[0]}, {lo_hi[1]}], "
                               f"got [{lo}, {hi}]")


def validate(name: str, data: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """Check an array + metadata against the schema; returns the array reshaped to its shape."""
    schema = _schema(name)
    if not isinstance(data, np.ndarray):
        raise MessageError(f"{name}.data: expected a numpy array, got {type(data).__name__}")
    _check_meta(schema, meta)
    if data.dtype != schema.dtype:
        raise MessageError(f"{name}.data: expected dtype {schema.dtype}, got {data.dtype}")
    shape = _expected_shape(schema, meta)
    if data.shape != shape:
        if data.size == int(np.prod(shape)) and data.ndim == 1:
            data = data.reshape(shape)
        else:
            raise MessageError(f"{name}.data: expected shape {shape} ({schema.units}), got {data.shape}")
    _check_values(schema, data, meta)
    return data


def encode(name: str, data: np.ndarray, **meta: Any) -> tuple[pa.Array, dict[str, Any]]:
    """Validate and turn an array into (flat Arrow array, metadata) ready for ``node.send_output``.

    ``encoding`` and the shape fields (width/height/dim) are filled in from the schema and the
    array when not given; ``frame_id`` and ``stamp_ns`` must be given.
    """
    schema = _schema(name)
    data = np.asarray(data)
    meta = dict(meta)
    meta.setdefault("encoding", schema.encoding)
    named = [d for d in schema.shape if isinstance(d, str)]
    if named and data.ndim == len(schema.shape):
        for axis, d in enumerate(schema.shape):
            if isinstance(d, str):
                meta.setdefault(d, int(data.shape[axis]))
    for k, v in list(meta.items()):
        if isinstance(v, np.integer):
            meta[k] = int(v)
        elif isinstance(v, np.floating):
            meta[k] = float(v)
    data = validate(name, data, meta)
    if name in HUB_PRIMITIVES:  # what dora-hub's viewers (dora-rerun) read to pick a visualisation
        meta.setdefault("primitive", HUB_PRIMITIVES[name])
    flat = np.ascontiguousarray(data).reshape(-1)
    return pa.array(flat), meta


def decode(name: str, value: Any, metadata: Mapping[str, Any] | None) -> Message:
    """Turn a received Arrow array + metadata into a validated :class:`Message` (zero copy).

    An ``image`` sent compressed (``encoding: jpeg``, see :func:`encode_jpeg_image`) is decoded here to
    the bgr8 frame, so every image input takes both forms (a copy, not zero copy)."""
    if name == "image" and (metadata or {}).get("encoding") == JPEG_ENCODING:
        return decode_jpeg_image(value, metadata)
    schema = _schema(name)
    meta = {k: v for k, v in (metadata or {}).items() if k != "timestamp"}
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if isinstance(value, pa.Array):
        if value.null_count:
            raise MessageError(f"{name}.data: expected no nulls, got {value.null_count}")
        want = pa.from_numpy_dtype(schema.dtype)
        if value.type != want:
            raise MessageError(f"{name}.data: expected Arrow type {want}, got {value.type}")
        arr = value.to_numpy(zero_copy_only=True)
    elif isinstance(value, np.ndarray):
        arr = value
    else:
        raise MessageError(f"{name}.data: expected an Arrow array, got {type(value).__name__}")
    return Message(name, validate(name, arr, meta), meta)


# --- compressed camera frames (a machine boundary) ------------------------------------------------
# 640x480 bgr8 at 30 fps is 27.6 MB/s: too much for Wi-Fi and a large share of a 1 Gbit link.  The camera
# node may send each frame as a JPEG instead (SO101_CAMERA_JPEG_QUALITY); the metadata is the image's
# (width, height, frame_id, stamp_ns) with ``encoding: jpeg`` and ``jpeg_quality``; the payload is the
# JPEG file's bytes as a flat uint8 array.  ``decode("image", ...)`` turns it back into the bgr8 frame.

JPEG_ENCODING = "jpeg"
_JPEG_SOI = b"\xff\xd8"


def encode_jpeg_image(image_bgr: np.ndarray, quality: int, **meta: Any) -> tuple[pa.Array, dict[str, Any]]:
    """A bgr8 camera frame (checked as an ``image``) -> (flat uint8 Arrow array of its JPEG, metadata).

    ``quality`` is OpenCV's IMWRITE_JPEG_QUALITY (1-100); ``frame_id``/``stamp_ns`` as for :func:`encode`.
    The metadata gains ``jpeg_quality``, ``jpeg_bytes`` and ``encode_ms`` (the compression time)."""
    import cv2  # noqa: PLC0415  (only the nodes on a machine boundary need it)

    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise MessageError(f"image.jpeg_quality: expected an int in [1, 100], got {quality!r}")
    _, raw_meta = encode("image", image_bgr, **meta)  # the frame itself must be a valid image
    t0 = time.perf_counter()
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image_bgr), [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    encode_ms = (time.perf_counter() - t0) * 1e3
    if not ok:
        raise MessageError(f"image: OpenCV could not JPEG-encode a {image_bgr.shape} frame")
    data = np.frombuffer(buf.tobytes(), np.uint8)
    out = {**raw_meta, "encoding": JPEG_ENCODING, "jpeg_quality": int(quality), "jpeg_bytes": int(data.size),
           "encode_ms": round(encode_ms, 3)}
    return pa.array(data), out


def decode_jpeg_image(value: Any, metadata: Mapping[str, Any] | None) -> Message:
    """The inverse of :func:`encode_jpeg_image`: a validated bgr8 ``image`` :class:`Message` whose metadata
    says ``encoding: bgr8`` again and carries ``decode_ms`` (the decompression time here)."""
    import cv2  # noqa: PLC0415

    meta = {k: v for k, v in (metadata or {}).items() if k != "timestamp"}
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if isinstance(value, pa.Array):
        if value.type != pa.uint8() or value.null_count:
            raise MessageError(f"image.data: a jpeg image must be a uint8 Arrow array without nulls, got "
                               f"{value.type} with {value.null_count} null(s)")
        buf = value.to_numpy(zero_copy_only=True)
    elif isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1:
        buf = value
    else:
        raise MessageError(f"image.data: a jpeg image must be a flat uint8 array, got {type(value).__name__}")
    if buf.size < 4 or bytes(buf[:2]) != _JPEG_SOI:
        raise MessageError(f"image.data: encoding 'jpeg' but the {buf.size} bytes do not start with a JPEG "
                           f"marker (ff d8)")
    t0 = time.perf_counter()
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    decode_ms = (time.perf_counter() - t0) * 1e3
    if image is None:
        raise MessageError(f"image.data: OpenCV could not decode the {buf.size}-byte JPEG")
    meta = {**meta, "encoding": SCHEMAS["image"].encoding, "decode_ms": round(decode_ms, 3)}
    return Message("image", validate("image", image, meta), meta)


# --- observation layout ------------------------------------------------------------------------

OBS_RGB_SHAPE = (OBS_FRAMES, 2, OBS_SIZE, OBS_SIZE)
OBS_LOWDIM_SHAPE = (OBS_FRAMES, PROPRIO_DIM)
_OBS_RGB_N = int(np.prod(OBS_RGB_SHAPE))


def join_observation(rgb_u8: np.ndarray, low_dim_state: np.ndarray) -> np.ndarray:
    """(3,2,84,84) uint8 + (3,18) float32 -> the flat float32 observation payload (exact: 0-255 ints)."""
    if rgb_u8.shape != OBS_RGB_SHAPE or rgb_u8.dtype != np.uint8:
        raise MessageError(f"observation.rgb: expected uint8 {OBS_RGB_SHAPE}, got {rgb_u8.dtype} {rgb_u8.shape}")
    if low_dim_state.shape != OBS_LOWDIM_SHAPE:
        raise MessageError(f"observation.low_dim_state: expected {OBS_LOWDIM_SHAPE}, got {low_dim_state.shape}")
    return np.concatenate([rgb_u8.reshape(-1).astype(np.float32),
                           np.asarray(low_dim_state, np.float32).reshape(-1)])


def split_observation(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`join_observation`: rgb (3,2,84,84) float32 0-255, low_dim_state (3,18)."""
    flat = np.asarray(flat).reshape(-1)
    return flat[:_OBS_RGB_N].reshape(OBS_RGB_SHAPE), flat[_OBS_RGB_N:].reshape(OBS_LOWDIM_SHAPE)


# --- dora-hub conventions --------------------------------------------------------------------------
#
# dora-hub nodes (e.g. the `opencv-video-capture` camera) send a frame as flat uint8 with metadata
# encoding/width/height only: no frame_id, no stamp_ns.  HubStamps fills them in, per input, from a
# counter and dora's own `timestamp` metadata (the sender's clock when the message was sent), so a hub
# camera plugs into frame_gate, seg, depth and the recorder.  Going out, `encode` adds the `primitive`
# key that dora-hub's viewers read.

HUB_PRIMITIVES = {"image": "image", "disparity": "depth"}
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_STAMP_KEYS = ("frame_id", "stamp_ns")


def dora_timestamp_ns(metadata: Mapping[str, Any] | None) -> int | None:
    """dora's ``timestamp`` metadata (a datetime, or ns / s as a number) as Unix ns; None if absent."""
    ts = (metadata or {}).get("timestamp")
    if ts is None:
        return None
    if isinstance(ts, _dt.datetime):  # what dora 1.1 gives Python nodes; exact to its microseconds
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=_dt.timezone.utc)
        return (ts - _EPOCH) // _dt.timedelta(microseconds=1) * 1000
    if isinstance(ts, (int, np.integer)) and not isinstance(ts, bool):
        return int(ts)
    if isinstance(ts, (float, np.floating)):
        return int(round(float(ts) * 1e9))
    raise MessageError(f"metadata.timestamp: expected a datetime or a number, got {type(ts).__name__}")


class HubStamps:
    """Fills ``frame_id``/``stamp_ns`` into the messages of one input that come without them.

    ``frame_id`` counts the messages that needed it (0, 1, 2, ...); ``stamp_ns`` is dora's send
    timestamp, else the receive time.  A message that carries either key is left as it is (a
    half-stamped message is still rejected by the schema check).  ``filled`` counts what was filled;
    ``on_first`` is called once, with a one-line description, the first time it happens."""

    def __init__(self, input_id: str, on_first: Any = None):
        self.input_id = input_id
        self.filled = 0
        self._on_first = on_first

    def fill(self, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        meta = dict(metadata or {})
        if any(k in meta for k in _STAMP_KEYS):
            return meta
        sent = dora_timestamp_ns(meta)
        meta["frame_id"] = self.filled
        meta["stamp_ns"] = sent if sent is not None else now_ns()
        if self.filled == 0 and self._on_first is not None:
            self._on_first(f"input {self.input_id!r} has no frame_id/stamp_ns (a dora-hub node?): numbering "
                           f"its messages from 0 and stamping them with dora's "
                           f"{'send timestamp' if sent is not None else 'receive time (no timestamp metadata)'}")
        self.filled += 1
        return meta
