"""The policy's observation, built exactly as pick-101's simulator wrapper built it (facts §2).

Per camera frame (640x480), by default:

- disparity: per-frame min-max over the FULL frame ``(d - min) / (max - min)`` (all ones if the
  range is <= 1e-6) -> ``(d * 255).astype(uint8)`` (truncation) -> centre crop columns 80:560 ->
  84x84 ``INTER_AREA``;
- mask: real 6 classes -> sim 5 classes ``clip(id - 1, 0, 4)`` (masks with ``classes='sim5'``, e.g.
  the simulator's oracle, are already sim classes) -> same crop -> 84x84 ``INTER_NEAREST``;
- the frame is ``[mask, disparity]`` (2, 84, 84) uint8; 3 frames are stacked oldest first, the
  stack being filled with copies of the first frame at start and after :meth:`reset`;
- proprioception (3, 18) stacked the same way (:mod:`so101_deploy.policy.proprio`).

The variants the hand-off or the upstream real script used are options, never the default:
``SO101_OBS_DISPARITY_INTERP=linear`` (INTER_LINEAR), ``SO101_OBS_NORMALISE=crop`` (crop, then
min-max over the crop), ``SO101_OBS_REMAP=false`` (real ids 0-5 go in unchanged).
"""

from __future__ import annotations

from collections import deque
import logging
from dataclasses import dataclass, field
from typing import Mapping

import cv2
import numpy as np

from so101_deploy.core import trace
from so101_deploy.core.messages import OBS_FRAMES, OBS_SIZE, PROPRIO_DIM, Message, join_observation
from so101_deploy.core.settings import Setting
from so101_deploy.policy.proprio import VELOCITY_SOURCES

logger = logging.getLogger(__name__)

DISPARITY_INTERPS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
NORMALISE_MODES = ("frame", "crop")
CONSTANT_RANGE = 1e-6  # sim: "all ones if the range <= 1e-6"


class ObservationError(ValueError):
    """An input that cannot become an observation (wrong shape, mismatched frames)."""


@dataclass(frozen=True)
class ObservationOptions:
    disparity_interp: str = "area"
    normalise: str = "frame"
    remap: bool = True

    def __post_init__(self):
        if self.disparity_interp not in DISPARITY_INTERPS:
            raise ValueError(f"disparity_interp {self.disparity_interp!r}: expected one of {list(DISPARITY_INTERPS)}")
        if self.normalise not in NORMALISE_MODES:
            raise ValueError(f"normalise {self.normalise!r}: expected one of {list(NORMALISE_MODES)}")

    @classmethod
    def from_settings(cls, settings) -> "ObservationOptions":
        """From a node's :class:`~so101_deploy.core.settings.Settings` (:data:`SETTINGS`)."""
        return cls(disparity_interp=settings["SO101_OBS_DISPARITY_INTERP"], normalise=settings["SO101_OBS_NORMALISE"],
                   remap=settings["SO101_OBS_REMAP"])

    @property
    def is_training_default(self) -> bool:
        return self == ObservationOptions()


# --- the exact pipeline functions -----------------------------------------------------------------


def crop_cols(width: int, height: int) -> slice:
    """The centre square crop's columns: 80:560 for 640x480."""
    if width < height:
        raise ObservationError(f"frame {width}x{height}: expected a landscape frame (width >= height) to centre-crop")
    left = (width - height) // 2
    return slice(left, left + height)


def disparity_to_u8(disparity: np.ndarray) -> np.ndarray:
    """Per-frame min-max to [0, 1] (all ones if the range <= 1e-6), then ``(d * 255)`` truncated to uint8."""
    d = np.asarray(disparity, np.float32)
    if d.ndim != 2 or d.size == 0:
        raise ObservationError(f"disparity: expected a non-empty (H, W) map, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ObservationError("disparity: expected finite values, got NaN/inf")
    lo, hi = d.min(), d.max()
    if hi - lo <= CONSTANT_RANGE:
        norm = np.ones_like(d)
    else:
        norm = (d - lo) / (hi - lo)
    return (norm * 255).astype(np.uint8)


def mask_to_sim(mask: np.ndarray, classes: str = "real6", remap: bool = True) -> np.ndarray:
    """Real 6-class ids -> the simulator's 5 classes ``clip(id - 1, 0, 4)``; ``sim5`` masks pass as they are."""
    m = np.asarray(mask)
    if m.ndim != 2 or m.dtype != np.uint8:
        raise ObservationError(f"mask: expected (H, W) uint8 class ids, got {m.dtype} {m.shape}")
    if classes == "sim5" or not remap:
        return m
    if classes != "real6":
        raise ObservationError(f"mask classes {classes!r}: expected 'real6' or 'sim5'")
    return np.clip(m.astype(np.int32) - 1, 0, 4).astype(np.uint8)


def crop_resize(image: np.ndarray, interpolation: int, size: int = OBS_SIZE) -> np.ndarray:
    """Centre crop to a square (columns 80:560 of 640x480), then resize to size x size."""
    h, w = image.shape[:2]
    crop = np.ascontiguousarray(image[:, crop_cols(w, h)])
    return cv2.resize(crop, (size, size), interpolation=interpolation)


def build_frame(mask: np.ndarray, disparity: np.ndarray, classes: str = "real6",
                options: ObservationOptions = ObservationOptions()) -> np.ndarray:
    """One camera frame -> (2, 84, 84) uint8 ``[mask, disparity]`` as the sim wrapper made it."""
    mask = np.asarray(mask)
    disparity = np.asarray(disparity)
    if mask.shape != disparity.shape or mask.ndim != 2:
        raise ObservationError(f"mask {mask.shape} and disparity {disparity.shape}: expected the same (H, W) frame")
    seg = crop_resize(mask_to_sim(mask, classes, options.remap), cv2.INTER_NEAREST)
    interp = DISPARITY_INTERPS[options.disparity_interp]
    if options.normalise == "frame":
        disp = crop_resize(disparity_to_u8(disparity), interp)
    else:  # the upstream real script: the map was made on the crop, so min-max runs over the crop
        h, w = disparity.shape
        disp = crop_resize(disparity_to_u8(disparity[:, crop_cols(w, h)]), interp)
    return np.stack([seg, disp], axis=0)


class FrameStack:
    """The last ``n`` items, oldest first; the first item after a reset fills every slot."""

    def __init__(self, n: int = OBS_FRAMES):
        self.n = n
        self._items: deque = deque(maxlen=n)

    def reset(self) -> None:
        self._items.clear()

    def push(self, item: np.ndarray) -> np.ndarray:
        if not self._items:
            self._items.extend(item.copy() for _ in range(self.n))
        else:
            self._items.append(item.copy())
        return np.stack(list(self._items), axis=0)


# --- pairing and stacking -------------------------------------------------------------------------


@dataclass
class Observation:
    rgb_u8: np.ndarray  # (3, 2, 84, 84) uint8, oldest first
    low_dim_state: np.ndarray  # (3, 18) float32
    frame_id: int
    stamp_ns: int
    stamps: Mapping[str, int] = field(default_factory=dict)  # the mask's and disparity's timeline stamps

    @property
    def flat(self) -> np.ndarray:
        """The observation message payload (``join_observation``)."""
        return join_observation(self.rgb_u8, self.low_dim_state)

    @property
    def rgb_f32(self) -> np.ndarray:
        """The image as the policy takes it: raw 0-255 values as float32 (no /255)."""
        return self.rgb_u8.astype(np.float32)


@dataclass
class ObservationCounters:
    built: int = 0
    stale: int = 0  # a mask/disparity of a frame not newer than the last observation
    unmatched: int = 0  # a mask/disparity whose partner never came before a newer frame was paired
    duplicate: int = 0  # a second mask/disparity for the same pending frame (the newer one is kept)
    no_joint_state: int = 0  # a complete frame before any joint state arrived
    resets: int = 0
    camera_restarts: int = 0  # frame ids went back with newer capture times: the camera node restarted

    def as_meta(self) -> dict[str, int]:
        return {f"obs_{k}": int(v) for k, v in self.__dict__.items()}


@dataclass
class _Pending:
    mask: Message | None = None
    disparity: Message | None = None


class ObservationBuilder:
    """Pairs the mask and disparity of the same ``frame_id`` and stacks frames into observations.

    A frame is built as soon as both halves are there; halves of older frames still waiting are
    then dropped as unmatched, halves of frames not newer than the last built one as stale.  The
    proprioception of a frame is that of the latest joint state received before it was built.
    """

    def __init__(self, options: ObservationOptions = ObservationOptions(), proprio=None, max_pending: int = 8):
        if proprio is None:
            from so101_deploy.policy.proprio import Proprioception

            proprio = Proprioception()
        self.options = options
        self.proprio = proprio
        self.max_pending = max_pending
        self.counters = ObservationCounters()
        self._pending: dict[int, _Pending] = {}
        self._last_frame_id: int | None = None
        self._last_stamp_ns: int | None = None
        self._images = FrameStack()
        self._low_dim = FrameStack()

    def reset(self) -> None:
        """Start a new episode: the next frame fills the whole stack again."""
        self._images.reset()
        self._low_dim.reset()
        self._pending.clear()
        self.counters.resets += 1

    def add_joint_state(self, msg: Message) -> None:
        q, qvel = np.asarray(msg.data)[0], np.asarray(msg.data)[1]
        self.proprio.update(q, msg.stamp_ns, qvel)

    def add_mask(self, msg: Message) -> Observation | None:
        return self._add(msg, "mask")

    def add_disparity(self, msg: Message) -> Observation | None:
        return self._add(msg, "disparity")

    def _add(self, msg: Message, half: str) -> Observation | None:
        fid = msg.frame_id
        if self._last_frame_id is not None and fid <= self._last_frame_id:
            if msg.stamp_ns <= self._last_stamp_ns:
                self.counters.stale += 1
                return None
            # an older id captured later: a restarted camera counts from 0 again; pair anew, and restart
            # the stack (the frames before are seconds old, as after a reset)
            self.counters.camera_restarts += 1
            logger.warning(f"frame ids went back ({fid} after {self._last_frame_id}) with a newer capture time: "
                           f"the camera restarted; the frame stack starts again")
            self._last_frame_id = None
            self.reset()
        pending = self._pending.setdefault(fid, _Pending())
        if getattr(pending, half) is not None:
            self.counters.duplicate += 1
        setattr(pending, half, msg)
        if pending.mask is None or pending.disparity is None:
            while len(self._pending) > self.max_pending:  # a partner that never comes must not pile up
                oldest = min(self._pending)
                self.counters.unmatched += self._halves(self._pending.pop(oldest))
            return None
        del self._pending[fid]
        for old in [k for k in self._pending if k < fid]:
            self.counters.unmatched += self._halves(self._pending.pop(old))
        self._last_frame_id, self._last_stamp_ns = fid, pending.mask.stamp_ns
        obs = self.build(pending.mask.data, pending.disparity.data, pending.mask.meta.get("classes", "real6"),
                         fid, pending.mask.stamp_ns)
        if obs is not None:
            obs.stamps = trace.merged(pending.mask.meta, pending.disparity.meta)
        return obs

    @staticmethod
    def _halves(p: _Pending) -> int:
        return (p.mask is not None) + (p.disparity is not None)

    def build(self, mask: np.ndarray, disparity: np.ndarray, classes: str, frame_id: int,
              stamp_ns: int) -> Observation | None:
        """Build the observation of one paired frame (None if no joint state has come yet)."""
        low = self.proprio.vector
        if low is None:
            self.counters.no_joint_state += 1
            return None
        frame = build_frame(mask, disparity, classes, self.options)
        rgb = self._images.push(frame)
        low_dim = self._low_dim.push(np.asarray(low, np.float32))
        self.counters.built += 1
        assert rgb.shape == (OBS_FRAMES, 2, OBS_SIZE, OBS_SIZE) and low_dim.shape == (OBS_FRAMES, PROPRIO_DIM)
        return Observation(rgb, low_dim, int(frame_id), int(stamp_ns))

    def meta(self) -> Mapping[str, object]:
        """Metadata for the observation message: the counters and the options used."""
        return {**self.counters.as_meta(), "obs_disparity_interp": self.options.disparity_interp,
                "obs_normalise": self.options.normalise, "obs_remap": int(self.options.remap)}


# --- the node's logic -----------------------------------------------------------------------------


class ObservationNode:
    """mask / disparity / joint_state messages in -> encoded observation messages out.

    The observation carries the camera frame's ``frame_id`` and ``stamp_ns``, and the builder's
    counters and options as metadata (``obs_built``, ``obs_stale``, ``obs_unmatched``, ...).
    """

    def __init__(self, builder: ObservationBuilder):
        self.builder = builder

    def _encode(self, obs: Observation | None):
        if obs is None:
            return None
        from so101_deploy.core.messages import encode

        return encode("observation", obs.flat, frame_id=obs.frame_id, stamp_ns=obs.stamp_ns, **self.builder.meta(),
                      **obs.stamps)

    def on_mask(self, msg: Message):
        return self._encode(self.builder.add_mask(msg))

    def on_disparity(self, msg: Message):
        return self._encode(self.builder.add_disparity(msg))

    def on_joint_state(self, msg: Message) -> None:
        self.builder.add_joint_state(msg)

    def reset(self) -> None:
        self.builder.reset()


SETTINGS = (
    Setting("SO101_OBS_DISPARITY_INTERP", "choice", "area", "84x84 resize of the disparity: area (training) or "
            "linear (the hand-off's)", choices=tuple(DISPARITY_INTERPS)),
    Setting("SO101_OBS_NORMALISE", "choice", "frame", "min-max of the disparity over the full frame (training) "
            "or after the crop (the upstream real script's)", choices=NORMALISE_MODES),
    Setting("SO101_OBS_REMAP", "bool", True, "real 6 classes -> sim 5 with clip(id-1, 0, 4) (training)"),
    Setting("SO101_OBS_VELOCITY", "choice", "timestamps", "joint velocities from the readings' timestamps, or "
            "from the message's own velocities", choices=VELOCITY_SOURCES),
    Setting("SO101_OBS_MAX_VELOCITY_GAP_S", "float", 0.5, "readings further apart than this give zero velocity",
            min=0.001, max=10.0),
)


def observation_node_from_settings(settings) -> ObservationNode:
    """The observation node's logic from its settings (:data:`SETTINGS`)."""
    from so101_deploy.policy.proprio import Proprioception

    options = ObservationOptions.from_settings(settings)
    proprio = Proprioception(velocity_source=settings["SO101_OBS_VELOCITY"],
                             max_gap_s=settings["SO101_OBS_MAX_VELOCITY_GAP_S"])
    return ObservationNode(ObservationBuilder(options, proprio))
