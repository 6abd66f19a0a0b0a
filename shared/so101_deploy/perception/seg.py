"""Segmentation: the pick-101 EfficientViT-B0 + FPN model, loaded from the Lightning ``best.ckpt``.

The module is rebuilt exactly as ``src/training/train_efficientvit_seg.py`` (pick-101, feat/seg-obs)
defines it, with the same attribute names so the checkpoint's ``state_dict`` loads key for key:
``backbone`` (timm ``efficientvit_b0``, ``features_only``, stages 0-3: 16/32/64/128 channels at
strides 4/8/16/32), ``lateral_convs`` (1x1 to 64), a top-down bilinear add, ``output_convs``
(3x3 conv-BN-ReLU per level; only the stride-4 one is used), bilinear upsample to the input size,
then ``seg_head`` (1x1 to the 6 real classes).  The backbone is built with ``pretrained=False``:
every weight comes from the checkpoint, nothing from the network.

Preprocessing is training's: BGR -> RGB, bilinear resize to the checkpoint's training size (PIL,
as torchvision's ``Resize`` did on the PIL images in training), ImageNet mean/std; argmax; nearest
resize back to the frame size.
"""

from __future__ import annotations

import pickle
import time
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from so101_deploy.core.messages import Message, encode
from so101_deploy.core.settings import Setting, SettingError

NUM_CLASSES = 6
FPN_CHANNELS = 64
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
BACKENDS = ("torch", "onnx")
ONNX_TAG = "seg_efficientvit_b0_fpn_mask"  # the export gives the logits and the argmax mask
DEVICES = ("cpu", "cuda")


class ModelLoadError(RuntimeError):
    """A model file that is missing, unreadable, or not the expected architecture."""


# --- shared checks for the perception models -------------------------------------------------------

def check_bgr_frame(bgr_u8: Any) -> np.ndarray:
    """A camera frame as the models take it: (H, W, 3) uint8 BGR."""
    if not isinstance(bgr_u8, np.ndarray):
        raise ValueError(f"expected a (H, W, 3) uint8 BGR numpy array, got {type(bgr_u8).__name__}")
    if bgr_u8.dtype != np.uint8 or bgr_u8.ndim != 3 or bgr_u8.shape[2] != 3 or 0 in bgr_u8.shape:
        raise ValueError(f"expected a (H, W, 3) uint8 BGR frame, got {bgr_u8.dtype} {bgr_u8.shape}")
    return bgr_u8


def rgb_tensor(bgr_u8: np.ndarray, device: str):
    """(H, W, 3) uint8 BGR -> (1, 3, H, W) float32 RGB in [0, 1] on ``device`` (uploaded as uint8)."""
    import torch

    # decoded messages are read-only views; torch wants a writable buffer (one 1 MB copy)
    t = torch.from_numpy(np.require(bgr_u8, requirements=["C", "W"])).to(device)
    return t.permute(2, 0, 1)[[2, 1, 0]].unsqueeze(0).float() * (1 / 255)


def imagenet_normalise(x):
    import torch

    mean = torch.as_tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def torch_load_plain(path: str | Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` with an error that says what is wrong with the file."""
    import torch

    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ModelLoadError(f"{what} {path} is not a file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{what} {path} is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelLoadError(
            f"{what} {path} holds more than plain tensors/dicts, so it was refused (loaded with "
            f"weights_only=True; such a file can run code): {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise ModelLoadError(f"{what} {path} cannot be read (truncated, corrupt, or not a PyTorch "
                             f"file): {str(e).splitlines()[0]}") from None


def load_state_strict(module, state_dict: Mapping[str, Any], what: str, expected: str) -> None:
    """Load a state dict requiring every key to match: a partial load would run random weights."""
    import torch

    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ModelLoadError(f"{what}: the state dict is not a mapping of name -> tensor")
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(own[k].shape)})"
             for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        def few(xs):
            return ", ".join(xs[:4]) + (f", ... ({len(xs)} in all)" if len(xs) > 4 else "")
        parts = [f"{len(missing)} missing keys [{few(missing)}]" if missing else "",
                 f"{len(unexpected)} unexpected keys [{few(unexpected)}]" if unexpected else "",
                 f"{len(wrong)} wrong shapes [{few(wrong)}]" if wrong else ""]
        raise ModelLoadError(f"{what} is not {expected}: " + "; ".join(p for p in parts if p))
    module.load_state_dict(state_dict, strict=True)


# --- the model ---------------------------------------------------------------------------------------

def _module_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class EfficientViTFPNSeg(nn.Module):
        """pick-101's EfficientViTSegModule network (attribute names = checkpoint key prefixes)."""

        def __init__(self, num_classes: int = NUM_CLASSES):
            super().__init__()
            import timm

            self.backbone = timm.create_model("efficientvit_b0", pretrained=False, features_only=True,
                                              out_indices=(0, 1, 2, 3))
            channels = self.backbone.feature_info.channels()  # [16, 32, 64, 128]
            self.lateral_convs = nn.ModuleList([nn.Conv2d(c, FPN_CHANNELS, 1) for c in channels])
            self.output_convs = nn.ModuleList([
                nn.Sequential(nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 3, padding=1), nn.BatchNorm2d(FPN_CHANNELS),
                              nn.ReLU(inplace=True))
                for _ in channels])
            self.seg_head = nn.Conv2d(FPN_CHANNELS, num_classes, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            feats = self.backbone(x)
            lat = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
            for i in range(len(lat) - 1, 0, -1):  # top-down, coarse to fine
                lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="bilinear",
                                                        align_corners=False)
            # training computed output_convs[1..3] too and discarded them; only stride 4 feeds the head
            out = self.output_convs[0](lat[0])
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return self.seg_head(out)  # the classifier runs after the upsampling, as in training

    return EfficientViTFPNSeg


def _with_mask(module):
    """The module for the ONNX export: (logits, uint8 argmax mask), the mask as the node uses it."""
    import torch

    class LogitsAndMask(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            logits = self.m(x)
            return logits, logits.argmax(1).to(torch.uint8)

    return LogitsAndMask(module).eval()


def build_seg_module(num_classes: int = NUM_CLASSES):
    """Backbone + FPN + seg_head with the checkpoint's key names, random weights, eval mode."""
    return _module_class()(num_classes).eval()


def train_hw_from_hparams(hparams: Mapping[str, Any], what: str) -> tuple[int, int]:
    """(height, width) the checkpoint was trained at: img_height/img_width, or the older img_size."""
    if "img_height" in hparams and "img_width" in hparams:
        hw = (hparams["img_height"], hparams["img_width"])
    elif "img_size" in hparams:
        size = hparams["img_size"]
        hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    else:
        raise ModelLoadError(f"{what}: hyper_parameters has neither img_height/img_width nor img_size "
                             f"(got keys {sorted(hparams)})")
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ModelLoadError(f"{what}: training image size must be two positive ints, got {hw!r}")
    return int(hw[0]), int(hw[1])


def read_seg_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(state_dict, hyper_parameters) of a pick-101 Lightning seg checkpoint, checked."""
    what = f"seg checkpoint {path}"
    ckpt = torch_load_plain(path, "seg checkpoint")
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ModelLoadError(f"{what} is not a Lightning checkpoint (no 'state_dict'; got {keys})")
    hparams = ckpt.get("hyper_parameters") or {}
    if not isinstance(hparams, Mapping):
        raise ModelLoadError(f"{what}: hyper_parameters is {type(hparams).__name__}, expected a dict")
    return dict(ckpt["state_dict"]), dict(hparams)


class SegModel:
    """The seg network with its preprocessing, on torch or onnxruntime."""

    def __init__(self, module, num_classes: int, train_hw: tuple[int, int], device: str = "cpu",
                 backend: str = "torch", session=None, source: str = ""):
        self.module = module
        self.num_classes = int(num_classes)
        self.train_hw = (int(train_hw[0]), int(train_hw[1]))
        self.device = device
        self.backend = backend
        self.session = session
        self.source = source

    @classmethod
    def load(cls, checkpoint_path, device="cpu", backend="torch", onnx_cache_dir=None,
             threads=None) -> "SegModel":
        if backend not in BACKENDS:
            raise ValueError(f"seg backend must be one of {BACKENDS}, got {backend!r}")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if backend == "onnx" and device == "cpu" and Path(checkpoint_path).is_file():
            cached = cls._from_manifest(checkpoint_path, onnx_cache_dir, threads)
            if cached is not None:
                return cached
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device cuda asked for, but torch sees no CUDA GPU")
        if threads and backend == "torch":
            torch.set_num_threads(int(threads))
        state, hparams = read_seg_checkpoint(checkpoint_path)
        what = f"seg checkpoint {checkpoint_path}"
        head = state.get("seg_head.weight")
        num_classes = int(hparams.get("num_classes", head.shape[0] if head is not None else NUM_CLASSES))
        if num_classes != NUM_CLASSES:  # the observation node remaps exactly the 6 real classes
            raise ModelLoadError(f"{what} predicts {num_classes} classes; the pipeline expects the 6 real "
                                 f"classes (0 unlabeled, 1 background, 2 table, 3 cube, 4 static_finger, "
                                 f"5 moving_finger)")
        train_hw = train_hw_from_hparams(hparams, what)
        module = build_seg_module(num_classes)
        load_state_strict(module, state, what, "the pick-101 EfficientViT-B0 + FPN segmentation model "
                          f"({num_classes} classes; keys backbone.*, lateral_convs.*, output_convs.*, seg_head.*)")
        session = None
        if backend == "onnx":
            from so101_deploy.perception.onnx_backend import file_digest, session_for, write_manifest

            session = session_for(_with_mask(module), (1, 3, *train_hw), ONNX_TAG, "pixel_values", ("logits", "mask"),
                                  cache_dir=onnx_cache_dir, device=device, threads=threads)
            write_manifest(onnx_cache_dir, ONNX_TAG, file_digest(checkpoint_path), session.path,
                           {"num_classes": num_classes, "train_hw": list(train_hw)})
        else:
            module.to(device)
        return cls(module, num_classes, train_hw, device, backend, session, str(checkpoint_path))

    @classmethod
    def _from_manifest(cls, checkpoint_path, onnx_cache_dir, threads) -> "SegModel | None":
        """The onnx model of this very checkpoint file when it was exported before: no torch, no timm."""
        from so101_deploy.perception.onnx_backend import OnnxBackendError, OnnxSession, file_digest, read_manifest

        found = read_manifest(onnx_cache_dir, ONNX_TAG, file_digest(checkpoint_path))
        if found is None:
            return None
        onnx_path, info = found
        try:
            num_classes, train_hw = int(info["num_classes"]), tuple(int(v) for v in info["train_hw"])
            session = OnnxSession(onnx_path, (1, 3, *train_hw), "cpu", threads)
        except (OnnxBackendError, KeyError, TypeError, ValueError):
            return None  # an unusable cache entry: export again from the checkpoint
        return cls(None, num_classes, train_hw, "cpu", "onnx", session, str(checkpoint_path))

    def preprocess(self, bgr_u8: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR -> (1, 3, h, w) float32 normalised RGB at the training size."""
        import cv2

        check_bgr_frame(bgr_u8)
        rgb = cv2.cvtColor(bgr_u8, cv2.COLOR_BGR2RGB)
        h, w = self.train_hw
        if rgb.shape[:2] != (h, w):
            from PIL import Image

            # PIL's bilinear (antialiased when shrinking) is what torchvision's Resize ran in training
            rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        x = (rgb.astype(np.float32) * np.float32(1 / 255) - IMAGENET_MEAN) / IMAGENET_STD
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def input_tensor(self, bgr_u8: np.ndarray):
        """:meth:`preprocess` as a torch tensor on the model's device; on the GPU a frame already at
        the training size is normalised there (a resize still goes through PIL, as in training)."""
        import torch

        check_bgr_frame(bgr_u8)
        if self.device != "cuda" or bgr_u8.shape[:2] != self.train_hw:
            return torch.from_numpy(self.preprocess(bgr_u8)).to(self.device)
        return imagenet_normalise(rgb_tensor(bgr_u8, self.device))

    def logits(self, bgr_u8: np.ndarray) -> np.ndarray:
        """(1, num_classes, h, w) float32 class scores at the training size."""
        if self.session is not None:
            return self.session.run(self.preprocess(bgr_u8), "logits")
        import torch

        with torch.inference_mode():
            return self.module(self.input_tensor(bgr_u8)).float().cpu().numpy()

    def predict(self, bgr_u8: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR -> (H, W) uint8 real class ids 0..num_classes-1."""
        import cv2

        check_bgr_frame(bgr_u8)
        if self.session is not None:
            # the argmax runs in the graph: ~1 ms on 2 threads, where numpy's over the class axis took ~11 ms
            mask = self.session.run(self.preprocess(bgr_u8), "mask")[0]
        else:
            import torch

            with torch.inference_mode():
                mask = self.module(self.input_tensor(bgr_u8))[0].argmax(0).to(torch.uint8).cpu().numpy()
        H, W = bgr_u8.shape[:2]
        if mask.shape != (H, W):
            mask = cv2.resize(mask, (W, H), interpolation=cv2.INTER_NEAREST)
        return mask


# --- the node's logic ---------------------------------------------------------------------------------

class SegNode:
    """image message -> seg_mask message (same frame_id and stamp_ns, ``latency_ms`` added)."""

    def __init__(self, model: SegModel):
        self.model = model

    def handle(self, msg: Message):
        t0 = time.perf_counter()
        mask = self.model.predict(msg.data)
        latency_ms = (time.perf_counter() - t0) * 1e3
        return encode("seg_mask", mask, frame_id=msg.frame_id, stamp_ns=msg.stamp_ns, classes="real6",
                      latency_ms=round(latency_ms, 3))


# What a model node on a CPU or a GPU reads besides its checkpoint (seg and depth share them).
MODEL_RUNTIME_SETTINGS = (
    Setting("SO101_DEVICE", "choice", "cpu", "where the model runs", choices=DEVICES),
    Setting("SO101_ONNX_CACHE", "str", str(Path("~/.cache/so101-deploy/onnx")),
            "folder of the ONNX exports (one per weights and input shape)"),
    Setting("SO101_THREADS", "int", 0, "CPU threads for the model (0: the library's default)", min=0),
    Setting("SO101_ORT_SPIN", "bool", False, "onnx backend: idle threads spin (onnxruntime's own default: a "
            "little faster for a model alone on its cores); false lets them sleep, leaving the cores to the other "
            "nodes (measured: 4.0 Hz instead of 3.5 Hz for dataflow.yml on 2 cores)"),
)


def apply_runtime_settings(settings) -> None:
    """Process-wide options of the onnx sessions this node will create."""
    from so101_deploy.perception.onnx_backend import SESSION_DEFAULTS

    SESSION_DEFAULTS["spinning"] = bool(settings["SO101_ORT_SPIN"])

SETTINGS = (
    Setting("SO101_SEG_CHECKPOINT", "str", required=True, doc="the Lightning best.ckpt of training"),
    Setting("SO101_SEG_BACKEND", "choice", "torch", "torch, or onnxruntime on an export of the same weights",
            choices=BACKENDS),
) + MODEL_RUNTIME_SETTINGS


def check_device_setting(settings, device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SettingError(f"{settings.node}: SO101_DEVICE=cuda but torch sees no CUDA GPU")


def seg_model_from_settings(settings) -> SegModel:
    """Build the model from the node's settings (:data:`SETTINGS`); any failure names the setting and
    the file."""
    path = settings["SO101_SEG_CHECKPOINT"]
    device = settings["SO101_DEVICE"]
    check_device_setting(settings, device)
    apply_runtime_settings(settings)
    try:
        return SegModel.load(path, device=device, backend=settings["SO101_SEG_BACKEND"],
                             onnx_cache_dir=settings["SO101_ONNX_CACHE"], threads=settings["SO101_THREADS"] or None)
    except (ModelLoadError, RuntimeError, ValueError) as e:
        raise SettingError(f"{settings.node}: SO101_SEG_CHECKPOINT={path}: {e}") from None
