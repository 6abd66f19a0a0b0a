"""``so101-deploy fixtures``: deterministic random-weight model files in the exact real formats.

Tests and the demo job load these through the very code paths that load the real checkpoints:

* ``seg/best.ckpt``: a Lightning checkpoint dict of the full pick-101 EfficientViT-B0 + FPN
  (it is small: 0.85 M parameters), hyper-parameters as training saved them, 480x640;
* ``depth_hf/``: a Hugging Face folder (config.json, model.safetensors, preprocessor_config.json)
  of a tiny Depth Anything config of the V2 layout;
* ``depth_anything_v2_vits_tiny.pth``: the same tiny weights in the original repository's key
  names, made by inverting the project's own original -> HF conversion;
* the two policy snapshot formats, written by :func:`so101_deploy.policy.drqv2.write_fixture_snapshots`.

Everything is plain tensors/dicts (loads with ``torch.load(weights_only=True)``); the same seed
gives the same weights.
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

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


def write_fixtures(out_dir, seed: int = 0) -> dict[str, Path]:
    """All fixture files under ``out_dir``; keys seg_checkpoint, depth_hf_dir, depth_pth,
    policy_snapshot, policy_handoff."""
    from so101_deploy.policy.drqv2 import write_fixture_snapshots

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
