"""What the policy node runs, without torch: settings, the node's logic, and the onnx runner.

A DrQ-v2 checkpoint is loaded (and checked) by :mod:`so101_deploy.policy.drqv2`, which needs torch.  With
the onnx backend on a CPU, that happens once: the export is cached with a manifest named by the sha256 of
the checkpoint file (see so101_deploy.perception.onnx_backend), and later starts run the export with
:class:`OnnxPolicyRunner` alone -- the node then holds ~100 MB instead of ~700 MB and starts seconds sooner.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from so101_deploy.core.messages import ACTION_SPACES, OBS_FRAMES, OBS_SIZE, PROPRIO_DIM
from so101_deploy.core.settings import Setting, SettingError
from so101_deploy.policy.safe_load import (LEGACY_NOTE, LEGACY_TRUST_ENV, TRUST_SHA256_ENV, CheckpointError,
                                           TrustMismatchError, legacy_trust_in, parse_sha256)

ACT = "actor.actor_model."
ACTION_SPACE_BY_DIM = {v: k for k, v in ACTION_SPACES.items()}
ONNX_TAG = "policy_drqv2"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrQV2Spec:
    """The sizes of a DrQ-v2 encoder + actor (defaults: the pick-101 seg+depth run)."""

    frames: int = OBS_FRAMES
    channels_per_frame: int = 2
    image_size: int = OBS_SIZE
    conv_channels: int = 32
    n_convs: int = 4
    state_dim: int = PROPRIO_DIM  # per frame
    feature_dim: int = 50
    hidden: tuple[int, ...] = (256, 256)
    action_dim: int = 4

    @property
    def in_channels(self) -> int:
        return self.frames * self.channels_per_frame

    @property
    def conv_out_size(self) -> int:
        s = (self.image_size - 3) // 2 + 1  # first conv: k3 s2 p0
        return s - 2 * (self.n_convs - 1)  # then k3 s1 p0

    @property
    def repr_dim(self) -> int:
        return self.conv_channels * self.conv_out_size ** 2

    @property
    def action_space(self) -> str:
        try:
            return ACTION_SPACE_BY_DIM[self.action_dim]
        except KeyError:
            raise CheckpointError(f"action dimension {self.action_dim} (from {ACT}out_mlp.0.weight) is neither "
                                  f"4 (cartesian) nor 6 (joint_delta)") from None


def check_policy_inputs(rgb: Any, low: Any, spec: DrQV2Spec):
    """The observation as the actor takes it, checked: (1, *rgb_shape) and (1, *low_shape) float32 copies."""
    rgb_shape = (spec.frames, spec.channels_per_frame, spec.image_size, spec.image_size)
    low_shape = (spec.frames, spec.state_dim)
    rgb, low = np.asarray(rgb), np.asarray(low)
    if rgb.shape != rgb_shape:
        raise ValueError(f"policy input rgb: expected shape {rgb_shape} (frames, seg+disparity, H, W) "
                         f"raw 0-255, got {rgb.shape}")
    if low.shape != low_shape:
        raise ValueError(f"policy input low_dim_state: expected shape {low_shape}, got {low.shape}")
    if not (np.isfinite(rgb).all() and np.isfinite(low).all()):
        raise ValueError("policy input: expected finite values, got NaN/inf")
    if rgb.size and (rgb.min() < 0 or rgb.max() > 255):
        raise ValueError(f"policy input rgb: expected raw values in [0, 255] (the encoder does x/255 - 0.5), "
                         f"got [{rgb.min()}, {rgb.max()}]")
    # writable copies: decoded messages are read-only views
    return np.array(rgb, np.float32)[None], np.array(low, np.float32)[None]


def checked_action(out: Any, action_dim: int) -> np.ndarray:
    action = np.asarray(out, np.float32).reshape(action_dim)
    if not np.isfinite(action).all():
        raise ValueError(f"policy produced a non-finite action {action}")
    return np.clip(action, -1.0, 1.0)


def spec_to_info(spec: DrQV2Spec, fmt: str) -> dict:
    return {"spec": dataclasses.asdict(spec), "format": fmt}


@dataclass
class CachedPolicy:
    """What a node reports about a policy started from its export (``runner.loaded``)."""
    spec: DrQV2Spec
    format: str


class OnnxPolicyRunner:
    """The actor's ONNX export on onnxruntime (CPU), found by the checkpoint file's sha256."""

    backend = "onnx"
    device = "cpu"

    def __init__(self, session, spec: DrQV2Spec, fmt: str, source: str):
        self._ort = session
        self.spec = spec
        self.action_space = spec.action_space
        self.loaded = CachedPolicy(spec, f"{fmt}, from its ONNX export")
        self.source = source

    @classmethod
    def from_manifest(cls, path: str | Path, cache_dir: str | Path | None) -> "OnnxPolicyRunner | None":
        from so101_deploy.perception.onnx_backend import file_digest, read_manifest

        found = read_manifest(cache_dir, ONNX_TAG, file_digest(path))
        if found is None:
            return None
        onnx_path, info = found
        try:
            raw = dict(info["spec"])
            spec = DrQV2Spec(**{**raw, "hidden": tuple(int(h) for h in raw["hidden"])})
            session = onnx_policy_session(onnx_path, "cpu")
        except Exception as e:  # noqa: BLE001 - an unusable cache entry: load and export again
            _log.warning(f"cached policy export {onnx_path} is unusable ({e}); loading the checkpoint")
            return None
        return cls(session, spec, str(info.get("format", "?")), str(path))

    def act(self, rgb_f32: np.ndarray, low_dim: np.ndarray) -> tuple[np.ndarray, str]:
        rgb, low = check_policy_inputs(rgb_f32, low_dim, self.spec)
        out = self._ort.run(None, {"rgb": rgb, "low_dim_state": low})[0]
        return checked_action(out, self.spec.action_dim), self.action_space


def onnx_policy_session(onnx_path: str | bytes | Path, device: str):
    """The actor's export (a file, or its bytes) on onnxruntime.  One thread: the actor takes ~1 ms, and a
    second thread's pool spun after every call, taking ~16 % of a core from seg and depth on a 2-core CPU."""
    import onnxruntime as ort

    from so101_deploy.perception.onnx_backend import _providers

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # fails when cuda is asked for and onnxruntime has no CUDA provider, instead of running on the CPU unasked
    return ort.InferenceSession(onnx_path if isinstance(onnx_path, bytes) else str(onnx_path), options,
                                providers=_providers(device))


# --- the node's logic -----------------------------------------------------------------------------

class PolicyNode:
    """observation message -> action message (same frame_id and stamp_ns, ``action_space`` metadata)."""

    def __init__(self, runner):
        self.runner = runner

    def handle(self, msg):
        import time

        from so101_deploy.core.messages import encode, split_observation

        rgb, low_dim = split_observation(msg.data)
        t0 = time.perf_counter()
        action, space = self.runner.act(rgb, low_dim)
        latency_ms = (time.perf_counter() - t0) * 1e3
        # sent_ns: when it left, so the receiver can time the hop (another machine: with synced clocks only)
        return encode("action", action, frame_id=msg.frame_id, stamp_ns=msg.stamp_ns, action_space=space,
                      latency_ms=round(latency_ms, 3), sent_ns=time.time_ns())


@dataclass(frozen=True)
class _Sha256Setting(Setting):
    """A str setting that must be a sha256 (64 hex digits); parsed to lowercase."""

    def parse(self, node: str, raw: str | None) -> Any:
        v = super().parse(node, raw)
        if v is None:
            return None
        try:
            return parse_sha256(v)
        except ValueError:
            raise SettingError(f"{node}: {self.key}={v!r} must be the sha256 of the checkpoint file, 64 hex digits "
                               f"(as sha256sum prints)") from None


SETTINGS = (
    Setting("SO101_POLICY_CHECKPOINT", "str", required=True,
            doc="a training snapshot (*_snapshot.pt) or the hand-off's {encoder, actor} file"),
    Setting("SO101_POLICY_BACKEND", "choice", "torch", "torch, or onnxruntime on an export of the same weights",
            choices=("torch", "onnx")),
    Setting("SO101_DEVICE", "choice", "cpu", "where the policy runs", choices=("cpu", "cuda")),
    Setting("SO101_ONNX_CACHE", "str", str(Path("~/.cache/so101-deploy/onnx")),
            "folder of the ONNX exports (the onnx backend; one per checkpoint file)"),
    _Sha256Setting(TRUST_SHA256_ENV, "str", None,
                   "the sha256 of SO101_POLICY_CHECKPOINT to load it as a full pickle (runs code in it): only for "
                   "a file you made or trust; any other file is refused"),
)


def policy_runner_from_settings(settings):
    """The policy from the node's settings (:data:`SETTINGS`); any failure names the setting and the file.
    With the onnx backend on a CPU, a checkpoint exported before runs without importing torch."""
    path = settings["SO101_POLICY_CHECKPOINT"]
    backend = settings["SO101_POLICY_BACKEND"]
    device = settings["SO101_DEVICE"]
    cache = settings["SO101_ONNX_CACHE"]
    trusted_sha256 = settings[TRUST_SHA256_ENV]
    # the retired blanket switch (a shell export, or a YAML entry: both reach the node's env) enables nothing
    legacy = settings.is_set(LEGACY_TRUST_ENV) or legacy_trust_in()
    if legacy:
        _log.warning(f"{LEGACY_NOTE} It is ignored.")
    if backend == "onnx" and device == "cpu" and Path(path).is_file():
        runner = OnnxPolicyRunner.from_manifest(path, cache)
        if runner is not None:
            return runner
    import torch  # noqa: PLC0415

    from so101_deploy.policy.drqv2 import PolicyRunner  # noqa: PLC0415

    if device == "cuda" and not torch.cuda.is_available():
        raise SettingError(f"{settings.node}: SO101_DEVICE=cuda but torch sees no CUDA GPU")
    try:
        return PolicyRunner.load(path, device=device, backend=backend, trusted_sha256=trusted_sha256,
                                 legacy_trust_set=legacy, onnx_cache_dir=cache)
    except TrustMismatchError as e:
        raise SettingError(f"{settings.node}: {TRUST_SHA256_ENV}={e.expected} does not match SO101_POLICY_CHECKPOINT="
                           f"{path}, whose sha256 is {e.actual}: refused, nothing in it was unpickled. If this "
                           f"file is one you trust, set '{TRUST_SHA256_ENV}: {e.actual}'.") from None
    except CheckpointError as e:
        raise SettingError(f"{settings.node}: SO101_POLICY_CHECKPOINT={path}: {e}") from None
    except (RuntimeError, ValueError) as e:  # backend/device problems (e.g. no CUDA provider for onnx)
        raise SettingError(f"{settings.node}: SO101_POLICY_BACKEND={backend} SO101_DEVICE={device}: {e}") from None
