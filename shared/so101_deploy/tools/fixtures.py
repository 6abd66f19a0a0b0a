"""``so101-deploy fixtures``: deterministic random-weight model files in the exact real formats.

Tests and the demo job load these through the very code paths that load the real checkpoints:

* ``seg/best.ckpt``: a Lightning checkpoint dict of the full pick-101 EfficientViT-B0 + FPN
  (it is small: 0.85 M parameters), hyper-parameters as training saved them, 480x640;
* ``depth_hf/``: a Hugging Face folder (config.json, model.safetensors, preprocessor_config.json)
  of a tiny Depth Anything config of the V2 layout;
* ``depth_anything_v2_vits_tiny.pth``: the same tiny weights in the original repository's key
  names, made by inverting the project's own original -> HF conversion;
* ``policy_snapshot.pt`` / ``policy_handoff.pt``: a robobase DrQ-v2 training snapshot of the
  pick-101 run's sizes and the same weights in the hand-off form (:func:`write_fixture_snapshots`).

Everything but the snapshot (its ``cfg`` is an OmegaConf DictConfig, as training saved it) is plain
tensors/dicts and loads with ``torch.load(weights_only=True)``; the same seed gives the same weights.
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from so101_deploy.policy.drqv2 import DrQV2Spec

SEG_CHECKPOINT = "seg/best.ckpt"
DEPTH_HF_DIR = "depth_hf"
DEPTH_PTH = "depth_anything_v2_vits_tiny.pth"


@contextmanager
def _seeded(seed: int):
    """Seed torch's RNG inside the block only; the caller's global RNG state is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def write_seg_checkpoint(path, img_hw: tuple[int, int] = (480, 640), seed: int = 0, num_classes: int = 6,
                         legacy_img_size: bool = False) -> Path:
    """A Lightning ``best.ckpt`` of the real seg architecture with random weights.

    ``legacy_img_size`` writes the older ``img_size`` hyper-parameter instead of height/width.
    """
    import torch

    from so101_deploy.perception.seg import build_seg_module

    path = Path(path)
    with _seeded(seed):
        module = build_seg_module(num_classes)
        for m in module.modules():  # non-trivial BatchNorm statistics, as a trained model has
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(1000)
    h, w = int(img_hw[0]), int(img_hw[1])
    hparams = {"num_classes": num_classes, "lr": 1e-4, "weight_decay": 1e-4, "loss_type": "soft_iou"}
    hparams.update({"img_size": h} if legacy_img_size and h == w else {"img_height": h, "img_width": w})
    ckpt = {
        "epoch": 42,
        "global_step": 1505,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": OrderedDict((k, v.clone()) for k, v in module.state_dict().items()),
        "loops": {},
        "callbacks": {"ModelCheckpoint{'monitor': 'val/iou', 'mode': 'max', 'every_n_train_steps': 0, "
                      "'every_n_epochs': 1, 'train_time_interval': None}": {"best_model_score": 0.811}},
        "optimizer_states": [],  # training state is not needed for inference and is left out
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def tiny_depth_module(seed: int = 0):
    from transformers import DepthAnythingForDepthEstimation

    from so101_deploy.perception.depth import tiny_depth_config

    with _seeded(seed):
        return DepthAnythingForDepthEstimation(tiny_depth_config()).eval()


def write_depth_fixtures(out_dir, seed: int = 0) -> dict[str, Path]:
    """The tiny depth model as an HF folder and as an original-format ``.pth`` of the same weights."""
    import torch

    from so101_deploy.perception.depth import PREPROCESSOR_CONFIG, hf_to_original

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out_dir = Path(out_dir)
    model = tiny_depth_module(seed)
    hf_dir = out_dir / DEPTH_HF_DIR
    hf_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(hf_dir, safe_serialization=True)
    (hf_dir / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
    pth = out_dir / DEPTH_PTH
    torch.save(OrderedDict(hf_to_original(model.state_dict(), model.config.backbone_config.num_hidden_layers)),
               pth)
    return {"depth_hf_dir": hf_dir, "depth_pth": pth}


# --- the policy snapshot (robobase DrQ-v2) ---------------------------------------------------------

def training_config(action_dim: int = 4):
    """An OmegaConf config shaped like pick-101's ``drqv2_lift_seg_depth_v19`` run (the snapshot's ``cfg``)."""
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "method": {
            "_target_": "robobase.method.drqv2.DrQV2",
            "is_rl": True, "num_explore_steps": 2000, "actor_lr": 1e-4, "critic_lr": 1e-4, "encoder_lr": 1e-4,
            "weight_decay": 0.0, "critic_target_tau": 0.01, "num_critics": 2, "bc_lambda": 0.0,
            "stddev_schedule": "linear(1.0,0.1,500000)", "stddev_clip": 0.3, "use_augmentation": True,
            "distributional_critic": False, "always_bootstrap": False,
            "actor_model": {"_target_": "robobase.models.fully_connected.MLPWithBottleneckFeaturesAndSequenceOutput",
                            "_partial_": True, "input_time_dim_size": 1, "mlp_nodes": [256, 256],
                            "output_sequence_network_type": "mlp", "norm_after_bottleneck": True,
                            "tanh_after_bottleneck": True, "bottleneck_size": 50},
            "critic_model": {"_target_": "robobase.models.fully_connected.MLPWithBottleneckFeatures",
                             "_partial_": True, "mlp_nodes": [256, 256], "bottleneck_size": 50},
            "encoder_model": {"_target_": "robobase.models.encoder.EncoderCNNMultiViewDownsampleWithStrides",
                              "_partial_": True, "channels": 32, "num_downsample_convs": 1,
                              "num_post_downsample_convs": 3, "kernel_size": 3, "padding": 0,
                              "channels_multiplier": 1, "norm": "identity", "activation": "relu"},
            "view_fusion_model": {"_target_": "robobase.models.fusion.FusionMultiCamFeature", "_partial_": True,
                                  "mode": "flatten"},
        },
        "env": {"env_name": "so101_lift_cube", "obs_type": "seg_depth", "image_size": 84, "episode_length": 200,
                "curriculum_stage": 3, "reward_version": "v19", "lock_wrist": False, "action_dim": action_dim,
                "cameras": ["wrist_cam"]},
        "pixels": True, "visual_observation_shape": [84, 84], "frame_stack": 3, "frame_stack_on_channel": True,
        "action_repeat": 2, "action_sequence": 1, "num_train_envs": 8, "num_eval_episodes": 10,
        "num_train_frames": 2000000, "replay_size_before_train": 2000, "batch_size": 256, "norm_obs": False,
        "demos": 0, "seed": 1, "log_every": 1000, "snapshot_every_n": 200000, "save_snapshot": True,
        "replay": {"size": 1000000, "nstep": 3, "gamma": 0.99, "num_workers": 4, "pin_memory": True},
        "experiment_name": "seg_depth_rl", "wandb": {"use": False, "project": None},
    })


def _head_state(prefix: str, spec: DrQV2Spec, gen, out_dim: int, extra_in: int = 0,
                out_gain: float = 1.0) -> dict[str, Any]:
    """One MLPWithBottleneckFeatures* head (actor or a critic Q) with PyTorch's default init."""
    import numpy as np
    import torch

    def linear(n_out, n_in, gain=1.0):
        bound = 1.0 / np.sqrt(n_in)  # nn.Linear's default init range
        w = (torch.rand(n_out, n_in, generator=gen) * 2 - 1) * bound * gain
        b = (torch.rand(n_out, generator=gen) * 2 - 1) * bound
        return w, b

    sd: dict[str, Any] = {}
    for name, n_in in (("fused_view_feats", spec.repr_dim), ("low_dim_obs", spec.frames * spec.state_dim)):
        p = f"{prefix}input_preprocess_modules.{name}."
        sd[p + "0.weight"], sd[p + "0.bias"] = linear(spec.feature_dim, n_in)
        # not the identity LayerNorm of a fresh model, so a loader that drops it is caught
        sd[p + "1.weight"] = 1.0 + 0.2 * torch.randn(spec.feature_dim, generator=gen)
        sd[p + "1.bias"] = 0.1 * torch.randn(spec.feature_dim, generator=gen)
    n_in = 2 * spec.feature_dim + extra_in
    for i, h in enumerate(spec.hidden):
        sd[f"{prefix}main_mlp.{3 * i}.weight"], sd[f"{prefix}main_mlp.{3 * i}.bias"] = linear(h, n_in)
        n_in = h
    sd[f"{prefix}out_mlp.0.weight"], sd[f"{prefix}out_mlp.0.bias"] = linear(out_dim, n_in, out_gain)
    sd[f"{prefix}hidden_state"] = torch.zeros(1, 9, 128)  # robobase's unused recurrent buffer
    return sd


def fixture_agent_state_dict(seed: int = 0, action_dim: int = 4, spec: DrQV2Spec | None = None) -> dict[str, Any]:
    """A robobase DrQ-v2 agent state dict with random weights: the 98 tensors of a real snapshot.

    Keys and shapes are those of pick-101's snapshot: encoder, actor (with its hidden_state),
    the duplicate ``actor_model.*`` (same tensors, as in robobase), two critic Q heads and the
    target critic.  The output layer is scaled (x4) so actions vary with the input yet stay well inside (-1, 1).
    """
    import numpy as np
    import torch

    from so101_deploy.policy.drqv2 import ACT, ENC, DrQV2Spec

    spec = spec or DrQV2Spec(action_dim=action_dim)
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, Any] = {}
    c_in = spec.in_channels
    for i in range(spec.n_convs):
        fan_in = c_in * 9
        bound = 1.0 / np.sqrt(fan_in)
        sd[f"{ENC}{3 * i}.weight"] = (torch.rand(spec.conv_channels, c_in, 3, 3, generator=gen) * 2 - 1) * bound * 2
        sd[f"{ENC}{3 * i}.bias"] = (torch.rand(spec.conv_channels, generator=gen) * 2 - 1) * bound
        c_in = spec.conv_channels
    actor = _head_state(ACT, spec, gen, spec.action_dim, out_gain=4.0)
    sd.update(actor)
    sd.update({k[len("actor."):]: v for k, v in actor.items()})  # DrQV2.actor_model is the same module
    for q in range(2):
        critic = _head_state(f"critic.qs.{q}.", spec, gen, 1, extra_in=spec.action_dim)
        sd.update(critic)
        # the target starts as a copy; sharing the tensors keeps the fixture file small
        sd.update({"critic_target." + k[len("critic."):]: v for k, v in critic.items()})
    return sd


def write_fixture_snapshots(out_dir, seed: int = 0) -> dict[str, Path]:
    """Write a training snapshot and the same weights in the hand-off form; return their paths.

    ``policy_snapshot.pt``: ``{"_pretrain_step", "_main_loop_iterations", "_global_env_episode",
    "agent": state_dict (98 tensors), "cfg": OmegaConf DictConfig}`` as robobase's ``save_snapshot``;
    ``policy_handoff.pt``: ``{"encoder": convs_per_cam.0.*, "actor": actor_model.*}``.
    """
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    agent = fixture_agent_state_dict(seed)
    snapshot = {"_pretrain_step": 0, "_main_loop_iterations": 75000, "_global_env_episode": 3000,
                "agent": agent, "cfg": training_config()}
    paths = {"policy_snapshot": out_dir / "policy_snapshot.pt", "policy_handoff": out_dir / "policy_handoff.pt"}
    torch.save(snapshot, paths["policy_snapshot"])
    handoff = {"encoder": {k[len("encoder."):]: v for k, v in agent.items() if k.startswith("encoder.")},
               "actor": {k[len("actor."):]: v for k, v in agent.items() if k.startswith("actor.")}}
    torch.save(handoff, paths["policy_handoff"])
    return paths


def write_fixtures(out_dir, seed: int = 0) -> dict[str, Path]:
    """All fixture files under ``out_dir``; keys seg_checkpoint, depth_hf_dir, depth_pth,
    policy_snapshot, policy_handoff."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"seg_checkpoint": write_seg_checkpoint(out_dir / SEG_CHECKPOINT, seed=seed)}
    paths.update(write_depth_fixtures(out_dir, seed=seed))
    paths.update(write_fixture_snapshots(out_dir, seed=seed))
    return paths


# --- command line -------------------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder to write the fixture files into")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")


def run(args: argparse.Namespace) -> int:
    paths = write_fixtures(args.out, seed=args.seed)
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0
