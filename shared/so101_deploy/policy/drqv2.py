"""The pick-101 DrQ-v2 policy, rebuilt without robobase: encoder + actor, checkpoint loading, acting.

The module tree of :class:`DrQV2Actor` reproduces robobase's attribute names, so its state-dict
keys are exactly the snapshot's ``encoder.*`` and ``actor.*`` keys:

- ``encoder.convs_per_cam.0.{0,3,6,9}``: ``Conv2d(6,32,3,s2)`` then 3x ``Conv2d(32,32,3,s1)``, each
  followed by Identity (norm) and ReLU; input ``x/255 - 0.5``; flattened (C,H,W) -> 39200.
- ``actor.actor_model.input_preprocess_modules.{fused_view_feats,low_dim_obs}.{0,1}``:
  Linear -> LayerNorm -> Tanh bottlenecks (50 each), concatenated [image, low_dim].
- ``actor.actor_model.main_mlp.{0,3,...}``: Linear, Identity, ReLU per layer (no LayerNorm).
- ``actor.actor_model.out_mlp.0``: Linear to the action; eval action = tanh(out).

Checkpoint formats accepted (:func:`canonical_state_dict`):

- training snapshot ``{"agent": state_dict, "cfg": DictConfig, ...}`` (robobase ``save_snapshot``):
  ``encoder.*`` and ``actor.*`` are used; ``critic.*``, ``critic_target.*``, the duplicate
  ``actor_model.*`` and the unused ``hidden_state`` buffers are ignored;
- the hand-off's ``{"encoder": state_dict, "actor": state_dict}``: the snapshot keys with their first
  prefix stripped, i.e. ``encoder`` holds ``convs_per_cam.0.*`` and ``actor`` holds ``actor_model.*``
  (``input_preprocess_modules.*`` etc. without ``actor_model.`` are accepted too);
- a bare agent state dict (the snapshot's ``agent`` saved on its own).

Sizes (frames, channels, state dim, hidden sizes, action dim) are read from the weights; the
action dimension says the action space: 4 = ``cartesian`` [dx, dy, dz, gripper], 6 = ``joint_delta``.
"""

from __future__ import annotations

import re
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from so101_deploy.core.messages import OBS_FRAMES, OBS_SIZE
# the node's settings and logic live in the torch-free policy.runtime; re-exported here for callers of old
from so101_deploy.policy.runtime import SETTINGS, PolicyNode, policy_runner_from_settings  # noqa: F401
from so101_deploy.policy.runtime import (ACT, ONNX_TAG, DrQV2Spec, check_policy_inputs, checked_action,
                                         onnx_policy_session, spec_to_info)
from so101_deploy.policy.safe_load import CheckpointError, TrustMismatchError, load_checkpoint  # noqa: F401

ENC = "encoder.convs_per_cam.0."
_log = logging.getLogger(__name__)


# --- architecture ---------------------------------------------------------------------------------


class _Encoder(nn.Module):
    def __init__(self, spec: DrQV2Spec):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = spec.in_channels
        for i in range(spec.n_convs):
            layers += [nn.Conv2d(c_in, spec.conv_channels, 3, stride=2 if i == 0 else 1), nn.Identity(), nn.ReLU()]
            c_in = spec.conv_channels
        self.convs_per_cam = nn.ModuleList([nn.Sequential(*layers)])


class _ActorModel(nn.Module):
    def __init__(self, spec: DrQV2Spec):
        super().__init__()

        def bottleneck(n_in):
            return nn.Sequential(nn.Linear(n_in, spec.feature_dim), nn.LayerNorm(spec.feature_dim), nn.Tanh())

        self.input_preprocess_modules = nn.ModuleDict({
            "fused_view_feats": bottleneck(spec.repr_dim),
            "low_dim_obs": bottleneck(spec.frames * spec.state_dim),
        })
        layers: list[nn.Module] = []
        n_in = 2 * spec.feature_dim
        for h in spec.hidden:
            layers += [nn.Linear(n_in, h), nn.Identity(), nn.ReLU()]
            n_in = h
        self.main_mlp = nn.Sequential(*layers)
        self.out_mlp = nn.Sequential(nn.Linear(n_in, spec.action_dim))


class _Actor(nn.Module):
    def __init__(self, spec: DrQV2Spec):
        super().__init__()
        self.actor_model = _ActorModel(spec)


class DrQV2Actor(nn.Module):
    """The DrQ-v2 encoder + actor as one module (see the module doc for the layout).

    ``forward(rgb, low_dim)``: rgb (B, frames, channels, H, W) float32 raw 0-255, low_dim
    (B, frames, state_dim) -> action (B, action_dim) in [-1, 1] (tanh of the mean).
    """

    def __init__(self, spec: DrQV2Spec | None = None):
        super().__init__()
        self.spec = spec or DrQV2Spec()
        self.encoder = _Encoder(self.spec)
        self.actor = _Actor(self.spec)

    def forward(self, rgb: torch.Tensor, low_dim: torch.Tensor) -> torch.Tensor:
        b = rgb.shape[0]
        # frames oldest -> newest concatenated on channels: [f0_seg, f0_disp, f1_seg, f1_disp, ...]
        x = rgb.reshape(b, self.spec.in_channels, rgb.shape[-2], rgb.shape[-1]) / 255.0 - 0.5
        h = self.encoder.convs_per_cam[0](x).flatten(1)
        m = self.actor.actor_model
        feats = torch.cat([m.input_preprocess_modules["fused_view_feats"](h),
                           m.input_preprocess_modules["low_dim_obs"](low_dim.reshape(b, -1))], dim=1)
        return torch.tanh(m.out_mlp(m.main_mlp(feats)))


# --- checkpoint formats ---------------------------------------------------------------------------


def _is_tensor(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and hasattr(v, "detach")


def canonical_state_dict(payload: Any, source: str = "checkpoint") -> tuple[dict[str, Any], str]:
    """Map any accepted checkpoint payload to ``{encoder.*, actor.actor_model.*}`` keys.

    Returns (state_dict, format name: 'snapshot' | 'handoff' | 'agent_state_dict').
    """
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{source}: expected a dict checkpoint, got {type(payload).__name__}")
    if "agent" in payload:
        agent, fmt = payload["agent"], "snapshot"
        if not isinstance(agent, Mapping):
            raise CheckpointError(f"{source}: 'agent' must be a state dict, got {type(agent).__name__}")
        sd = {k: v for k, v in agent.items() if k.startswith(("encoder.", "actor."))}
        if not any(k.startswith(ACT) for k in sd):
            # only the duplicate DrQV2.actor_model.* made it: use it
            sd.update({"actor." + k: v for k, v in agent.items() if k.startswith("actor_model.")})
    elif "encoder" in payload and "actor" in payload and isinstance(payload["encoder"], Mapping):
        fmt = "handoff"
        enc, act = payload["encoder"], payload["actor"]
        if not isinstance(act, Mapping):
            raise CheckpointError(f"{source}: 'actor' must be a state dict, got {type(act).__name__}")
        sd = {"encoder." + k: v for k, v in enc.items()}
        for k, v in act.items():
            sd[("actor." if k.startswith("actor_model.") else ACT) + k] = v
    elif any(isinstance(k, str) and k.startswith(ENC) for k in payload):
        fmt = "agent_state_dict"
        sd = {k: v for k, v in payload.items() if k.startswith(("encoder.", "actor."))}
    else:
        keys = sorted(map(str, payload))[:8]
        raise CheckpointError(f"{source}: not a DrQ-v2 checkpoint: expected a snapshot {{'agent', 'cfg'}}, the "
                              f"hand-off form {{'encoder', 'actor'}} or an agent state dict with {ENC}* keys; "
                              f"top-level keys: {keys}")
    # the recurrent hidden-state buffer is unused by the MLP actor
    sd = {k: v for k, v in sd.items() if not k.endswith("hidden_state")}
    for k, v in sd.items():
        if not _is_tensor(v):
            raise CheckpointError(f"{source}: {k} is a {type(v).__name__}, expected a tensor")
    return sd, fmt


def _need(sd: Mapping[str, Any], key: str, ndim: int, source: str):
    if key not in sd:
        raise CheckpointError(f"{source}: missing key {key!r}")
    t = sd[key]
    if t.ndim != ndim:
        raise CheckpointError(f"{source}: {key} has shape {tuple(t.shape)}, expected {ndim} dimensions")
    return t


def _layer_indices(sd: Mapping[str, Any], prefix: str, layout: str, source: str) -> list[int]:
    """Indices of the parameterised layers under ``prefix``: must be 0, 3, 6, ... without gaps."""
    found: dict[int, str] = {}
    for k in sd:
        if (m := re.match(re.escape(prefix) + r"(\d+)\.", k)):
            found.setdefault(int(m.group(1)), k)
    for i, k in sorted(found.items()):
        if i % 3:
            raise CheckpointError(f"{source}: unexpected key {k!r}: {layout}, so parameters sit at indices 0, 3, 6, ...")
    idx = sorted(found)
    for n, i in enumerate(idx):
        if i != 3 * n:
            raise CheckpointError(f"{source}: missing key {prefix}{3 * n}.weight (layers found at {idx})")
    if not idx:
        raise CheckpointError(f"{source}: missing key {prefix}0.weight")
    return idx


def spec_from_state_dict(sd: Mapping[str, Any], source: str = "checkpoint") -> DrQV2Spec:
    """Read the architecture's sizes from the weights (canonical keys)."""
    w0 = _need(sd, ENC + "0.weight", 4, source)
    conv_idx = _layer_indices(sd, ENC, "encoder layers are Conv2d, Identity, ReLU", source)
    n_convs = len(conv_idx)
    in_ch = int(w0.shape[1])
    if in_ch % OBS_FRAMES:
        raise CheckpointError(f"{source}: {ENC}0.weight has {in_ch} input channels, expected a multiple of "
                              f"{OBS_FRAMES} frames (seg + disparity per frame = 6)")
    low = _need(sd, ACT + "input_preprocess_modules.low_dim_obs.0.weight", 2, source)
    img = _need(sd, ACT + "input_preprocess_modules.fused_view_feats.0.weight", 2, source)
    if int(low.shape[1]) % OBS_FRAMES:
        raise CheckpointError(f"{source}: low_dim_obs.0.weight takes {int(low.shape[1])} inputs, expected "
                              f"{OBS_FRAMES} x state dim")
    mlp_idx = _layer_indices(sd, ACT + "main_mlp.", "main_mlp layers are Linear, Identity, ReLU (no LayerNorm)",
                             source)
    for i in conv_idx:
        _need(sd, f"{ENC}{i}.weight", 4, source)
    hidden = tuple(int(_need(sd, f"{ACT}main_mlp.{i}.weight", 2, source).shape[0]) for i in mlp_idx)
    out = _need(sd, ACT + "out_mlp.0.weight", 2, source)
    return DrQV2Spec(frames=OBS_FRAMES, channels_per_frame=in_ch // OBS_FRAMES, image_size=OBS_SIZE,
                     conv_channels=int(w0.shape[0]), n_convs=n_convs, state_dim=int(low.shape[1]) // OBS_FRAMES,
                     feature_dim=int(img.shape[0]), hidden=hidden, action_dim=int(out.shape[0]))


def build_actor(sd: Mapping[str, Any], source: str = "checkpoint"):
    """A :func:`DrQV2Actor` with ``sd`` loaded; every key and shape is checked and named on mismatch."""
    spec = spec_from_state_dict(sd, source)
    spec.action_space  # noqa: B018 - validates the action dimension
    model = DrQV2Actor(spec)
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r}" +
                              (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [k for k in sd if k not in want]
    if extra:
        raise CheckpointError(f"{source}: unexpected key {extra[0]!r}: the architecture differs from DrQ-v2 "
                              f"(robobase) as rebuilt here")
    for k, t in want.items():
        if tuple(sd[k].shape) != tuple(t.shape):
            raise CheckpointError(f"{source}: key {k!r} has shape {tuple(sd[k].shape)}, expected "
                                  f"{tuple(t.shape)} for {spec}")
        if not sd[k].dtype.is_floating_point:
            raise CheckpointError(f"{source}: key {k!r} has dtype {sd[k].dtype}, expected floating point")
        if not bool(torch.isfinite(sd[k]).all()):
            raise CheckpointError(f"{source}: key {k!r} contains NaN/inf")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval()


@dataclass
class LoadedPolicy:
    model: Any
    spec: DrQV2Spec
    format: str
    cfg: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


def load_policy(path: str | Path, *, trusted_sha256: str | None = None,
                legacy_trust_set: bool = False) -> LoadedPolicy:
    """Load a snapshot / hand-off / agent-state-dict file into a CPU model (see module doc).
    ``trusted_sha256``: full pickle loading of this file if it has that hash (see ``safe_load``)."""
    payload = load_checkpoint(path, trusted_sha256=trusted_sha256, legacy_trust_set=legacy_trust_set)
    sd, fmt = canonical_state_dict(payload, str(path))
    model = build_actor(sd, str(path))
    meta = {k: payload[k] for k in ("_pretrain_step", "_main_loop_iterations", "_global_env_episode")
            if isinstance(payload, Mapping) and k in payload}
    return LoadedPolicy(model, model.spec, fmt, payload.get("cfg") if fmt == "snapshot" else None, meta)


# --- running --------------------------------------------------------------------------------------


class PolicyRunner:
    """Runs the actor on one observation: ``act(rgb (3,2,84,84) float32 0-255, low_dim (3,18))``."""

    def __init__(self, model, device: str = "cpu", backend: str = "torch", onnx_path: str | Path | None = None):
        if backend not in ("torch", "onnx"):
            raise ValueError(f"policy backend {backend!r}: expected 'torch' or 'onnx'")
        if device.startswith("cuda") and backend == "torch" and not torch.cuda.is_available():
            raise RuntimeError(f"policy device {device!r} asked for, but torch sees no CUDA GPU")
        self.spec: DrQV2Spec = model.spec
        self.action_space = self.spec.action_space
        self.device = device
        self.backend = backend
        self._ort = None
        if backend == "onnx":  # exported from the CPU weights; runs on the device's execution provider
            self.model = model.cpu().eval()
            self._ort = onnx_policy_session(onnx_path, device) if onnx_path is not None else \
                _onnx_session(self.model, self.spec, device)
        else:
            self.model = model.to(device).eval()

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu", backend: str = "torch",
             trusted_sha256: str | None = None, legacy_trust_set: bool = False,
             onnx_cache_dir: str | Path | None = None) -> "PolicyRunner":
        """``onnx_cache_dir``: with the onnx backend, keep the export there with a manifest naming the
        checkpoint file's sha256, so the next start runs it without torch (policy.runtime)."""
        loaded = load_policy(path, trusted_sha256=trusted_sha256, legacy_trust_set=legacy_trust_set)
        onnx_path = None
        if backend == "onnx" and onnx_cache_dir is not None:
            from so101_deploy.perception.onnx_backend import cache_path, file_digest, write_manifest

            key = file_digest(path)
            s = loaded.spec
            onnx_path = _export_onnx_file(loaded.model.cpu().eval(), s, cache_path(
                onnx_cache_dir, ONNX_TAG, key, (s.frames, s.channels_per_frame, s.image_size, s.image_size)))
            write_manifest(onnx_cache_dir, ONNX_TAG, key, onnx_path, spec_to_info(s, loaded.format))
        runner = cls(loaded.model, device=device, backend=backend, onnx_path=onnx_path)
        runner.loaded = loaded
        return runner

    def act(self, rgb_f32: np.ndarray, low_dim: np.ndarray) -> tuple[np.ndarray, str]:
        """The eval action (tanh of the mean) as float32 (action_dim,), and its action space."""
        rgb, low = check_policy_inputs(rgb_f32, low_dim, self.spec)
        if self._ort is not None:
            out = self._ort.run(None, {"rgb": rgb, "low_dim_state": low})[0]
        else:
            with torch.inference_mode():
                out = self.model(torch.from_numpy(rgb).to(self.device),
                                 torch.from_numpy(low).to(self.device)).cpu().numpy()
        return checked_action(out, self.spec.action_dim), self.action_space


def _onnx_bytes(model, spec: DrQV2Spec) -> bytes:
    import io
    import warnings

    rgb = torch.zeros(1, spec.frames, spec.channels_per_frame, spec.image_size, spec.image_size)
    low = torch.zeros(1, spec.frames, spec.state_dim)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter is chosen on purpose (fixed shapes, no onnxscript)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (rgb, low), buf, input_names=["rgb", "low_dim_state"], output_names=["action"],
                          opset_version=17, dynamo=False)
    return buf.getvalue()


def _onnx_session(model, spec: DrQV2Spec, device: str):
    return onnx_policy_session(_onnx_bytes(model, spec), device)


def _export_onnx_file(model, spec: DrQV2Spec, path: Path) -> Path:
    """The actor's export at ``path`` (written atomically; an existing file is the same export)."""
    from so101_deploy.perception.onnx_backend import write_atomically

    path = Path(path)
    if path.is_file():
        return path
    return write_atomically(path, lambda tmp: tmp.write_bytes(_onnx_bytes(model, spec)))


# --- the node's logic -----------------------------------------------------------------------------


