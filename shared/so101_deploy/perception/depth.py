"""Depth: Depth Anything V2 Small through transformers (``DepthAnythingForDepthEstimation``).

Two model formats load, both without network access:

* a local folder in Hugging Face format (``config.json`` + ``model.safetensors``), as published in
  ``depth-anything/Depth-Anything-V2-Small-hf``;
* the original repository's ``depth_anything_v2_vits.pth`` (keys ``pretrained.*`` for the DINOv2
  backbone, ``depth_head.*`` for the DPT head).  Its keys are converted with the mapping of
  transformers' own ``convert_depth_anything_to_hf.py`` (fused ``qkv`` split into q/k/v; the
  original ``refinenet{1..4}`` are HF fusion layers ``{3..0}``), and the config is read off the
  tensor shapes (the V2 ``out_indices`` of the original code: ``[3, 6, 9, 12]`` for 12 blocks).

Preprocessing is the original repository's ``infer_image`` (what the real pipeline ran): BGR -> RGB,
/255, resize keeping the aspect ratio so the SHORT side is at least ``input_size`` ("lower_bound"),
each side a multiple of 14, bicubic (cv2 INTER_CUBIC), ImageNet mean/std.  For a 640x480 frame this
is also exactly the HF processor's shape (518x686 at 518, 266x350 at 266).  The output is the raw
relative disparity (larger = nearer, >= 0 from the head's ReLU) resized to the frame with bilinear
``align_corners=True``, as ``infer_image`` does.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from so101_deploy.core.messages import Message, encode
from so101_deploy.core.settings import Setting, SettingError
from so101_deploy.perception.seg import (BACKENDS, DEVICES, MODEL_RUNTIME_SETTINGS, ModelLoadError, check_bgr_frame,
                                         check_device_setting, imagenet_normalise, load_state_strict, rgb_tensor,
                                         torch_load_plain)

PATCH = 14
DEFAULT_INPUT_SIZE = 518
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# DINOv2 heads are 64 wide in every published size (vits 384/6, vitb 768/12, vitl 1024/16)
DINOV2_HEAD_DIM = 64
# original repo: intermediate_layer_idx (0-based) per depth; HF out_indices are 1-based stage numbers
V2_OUT_INDICES = {12: [3, 6, 9, 12], 24: [5, 12, 18, 24], 40: [10, 20, 30, 40]}
# preprocessor_config.json of Depth-Anything-V2-Small-hf
PREPROCESSOR_CONFIG = {
    "do_normalize": True, "do_pad": False, "do_rescale": True, "do_resize": True, "ensure_multiple_of": 14,
    "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "DPTImageProcessor",
    "image_std": [0.229, 0.224, 0.225], "keep_aspect_ratio": True, "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"height": 518, "width": 518}, "size_divisor": None,
}


# --- configs -------------------------------------------------------------------------------------------

def depth_config(hidden_size: int, num_layers: int, neck_hidden_sizes, fusion_hidden_size: int,
                 head_hidden_size: int = 32, out_indices=None, num_heads: int | None = None, mlp_ratio: int = 4,
                 image_size: int = 518, initializer_range: float = 0.02):
    """A Depth Anything (V2 layout) config: DINOv2 backbone + DPT neck/head."""
    from transformers import DepthAnythingConfig, Dinov2Config

    if num_heads is None:
        if hidden_size % DINOV2_HEAD_DIM:
            raise ValueError(f"hidden size {hidden_size} is not a multiple of the DINOv2 head width 64")
        num_heads = hidden_size // DINOV2_HEAD_DIM
    if out_indices is None:
        out_indices = V2_OUT_INDICES.get(num_layers) or [num_layers * (i + 1) // 4 for i in range(4)]
    backbone = Dinov2Config(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                            mlp_ratio=mlp_ratio, image_size=image_size, patch_size=PATCH,
                            out_indices=list(out_indices), reshape_hidden_states=False, apply_layernorm=True)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=hidden_size, patch_size=PATCH,
                               neck_hidden_sizes=list(neck_hidden_sizes), fusion_hidden_size=fusion_hidden_size,
                               head_hidden_size=head_hidden_size, reassemble_factors=[4, 2, 1, 0.5],
                               depth_estimation_type="relative", initializer_range=initializer_range)


def v2_small_config():
    """The real Depth-Anything-V2-Small: DINOv2 ViT-S/14 (384 wide, 12 blocks, 6 heads), out_indices
    [3, 6, 9, 12], neck [48, 96, 192, 384], fusion 64, head 32 (24.8 M parameters)."""
    return depth_config(384, 12, [48, 96, 192, 384], 64, 32, out_indices=[3, 6, 9, 12], num_heads=6)


def tiny_depth_config():
    """A tiny config of the same layout for fixtures/tests (one 64-wide head, 4 blocks).

    initializer_range 0.2: with the default 0.02 a random model outputs ~0 everywhere (models.md).
    """
    return depth_config(64, 4, [8, 16, 32, 64], 16, 8, out_indices=[1, 2, 3, 4], initializer_range=0.2)


# --- original <-> HF key conversion --------------------------------------------------------------------

def _attention_names(hf_keys) -> tuple[str, str, str, str]:
    """q, k, v, out projection names inside a Dinov2 layer (transformers renamed them in 5.x)."""
    if any(".attention.q_proj." in k for k in hf_keys):
        return "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"
    return ("attention.attention.query", "attention.attention.key", "attention.attention.value",
            "attention.output.dense")


def _rename_pairs(num_layers: int, attn_out: str) -> list[tuple[str, str]]:
    """(original key, HF key) for every tensor except the fused qkv (split separately)."""
    pairs = [("pretrained.cls_token", "backbone.embeddings.cls_token"),
             ("pretrained.mask_token", "backbone.embeddings.mask_token"),
             ("pretrained.pos_embed", "backbone.embeddings.position_embeddings"),
             ("pretrained.norm.weight", "backbone.layernorm.weight"),
             ("pretrained.norm.bias", "backbone.layernorm.bias")]
    for p in ("weight", "bias"):
        pairs.append((f"pretrained.patch_embed.proj.{p}", f"backbone.embeddings.patch_embeddings.projection.{p}"))
    for i in range(num_layers):
        o, h = f"pretrained.blocks.{i}", f"backbone.encoder.layer.{i}"
        pairs += [(f"{o}.ls1.gamma", f"{h}.layer_scale1.lambda1"), (f"{o}.ls2.gamma", f"{h}.layer_scale2.lambda1")]
        for p in ("weight", "bias"):
            pairs += [(f"{o}.norm1.{p}", f"{h}.norm1.{p}"), (f"{o}.norm2.{p}", f"{h}.norm2.{p}"),
                      (f"{o}.mlp.fc1.{p}", f"{h}.mlp.fc1.{p}"), (f"{o}.mlp.fc2.{p}", f"{h}.mlp.fc2.{p}"),
                      (f"{o}.attn.proj.{p}", f"{h}.{attn_out}.{p}")]
    for i in range(4):
        for p in ("weight", "bias"):
            pairs.append((f"depth_head.projects.{i}.{p}", f"neck.reassemble_stage.layers.{i}.projection.{p}"))
            if i != 2:  # the stride-1 level has an Identity resize
                pairs.append((f"depth_head.resize_layers.{i}.{p}", f"neck.reassemble_stage.layers.{i}.resize.{p}"))
        pairs.append((f"depth_head.scratch.layer{i + 1}_rn.weight", f"neck.convs.{i}.weight"))
    for i in range(1, 5):  # refinenet4 (coarsest) runs first: HF fusion layer 0
        o, h = f"depth_head.scratch.refinenet{i}", f"neck.fusion_stage.layers.{4 - i}"
        for p in ("weight", "bias"):
            pairs.append((f"{o}.out_conv.{p}", f"{h}.projection.{p}"))
            for r in (1, 2):
                for c in (1, 2):
                    pairs.append((f"{o}.resConfUnit{r}.conv{c}.{p}", f"{h}.residual_layer{r}.convolution{c}.{p}"))
    for o, h in (("output_conv1", "conv1"), ("output_conv2.0", "conv2"), ("output_conv2.2", "conv3")):
        for p in ("weight", "bias"):
            pairs.append((f"depth_head.scratch.{o}.{p}", f"head.{h}.{p}"))
    return pairs


def original_to_hf(state: Mapping[str, Any], num_layers: int, hf_keys) -> dict:
    """Original Depth-Anything-V2 state dict -> HF ``DepthAnythingForDepthEstimation`` keys.

    Keys the mapping does not know are kept as they are, so the strict load reports them.
    """
    q, k, v, out = _attention_names(hf_keys)
    src = dict(state)
    dst = {}
    for o, h in _rename_pairs(num_layers, out):
        if o in src:
            dst[h] = src.pop(o)
    for i in range(num_layers):
        for p in ("weight", "bias"):
            key = f"pretrained.blocks.{i}.attn.qkv.{p}"
            if key in src:
                fused = src.pop(key)
                d = fused.shape[0] // 3
                for j, name in enumerate((q, k, v)):
                    dst[f"backbone.encoder.layer.{i}.{name}.{p}"] = fused[j * d:(j + 1) * d].clone()
    dst.update(src)
    return dst


def hf_to_original(state: Mapping[str, Any], num_layers: int) -> dict:
    """The inverse of :func:`original_to_hf` (used to write the original-format fixture)."""
    import torch

    q, k, v, out = _attention_names(state.keys())
    src = dict(state)
    dst = {}
    for o, h in _rename_pairs(num_layers, out):
        dst[o] = src.pop(h).clone()
    for i in range(num_layers):
        for p in ("weight", "bias"):
            parts = [src.pop(f"backbone.encoder.layer.{i}.{n}.{p}") for n in (q, k, v)]
            dst[f"pretrained.blocks.{i}.attn.qkv.{p}"] = torch.cat(parts, 0).clone()
    if src:
        raise ValueError(f"hf_to_original: keys without an original name: {sorted(src)[:5]}")
    return dst


def config_from_original(state: Mapping[str, Any], what: str):
    """Read the architecture off an original-format state dict's tensor shapes."""
    try:
        hidden = int(state["pretrained.cls_token"].shape[-1])
        layers = len({m.group(1) for k in state if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k))})
        if any(".mlp.w12." in k for k in state):
            raise ModelLoadError(f"{what}: a SwiGLU (ViT-g) backbone is not supported")
        fc1 = state["pretrained.blocks.0.mlp.fc1.weight"]
        patch = int(state["pretrained.patch_embed.proj.weight"].shape[-1])
        n_pos = int(state["pretrained.pos_embed"].shape[1]) - 1
        neck = [int(state[f"depth_head.projects.{i}.weight"].shape[0]) for i in range(4)]
        fusion = int(state["depth_head.scratch.layer1_rn.weight"].shape[0])
        head = int(state["depth_head.scratch.output_conv2.0.weight"].shape[0])
    except KeyError as e:
        raise ModelLoadError(f"{what} is not an original Depth Anything V2 checkpoint (no {e.args[0]}; "
                             f"expected keys pretrained.* and depth_head.*)") from None
    except (AttributeError, IndexError, TypeError) as e:
        raise ModelLoadError(f"{what}: unexpected tensor layout ({e})") from None
    if fc1.shape[0] % hidden:
        raise ModelLoadError(f"{what}: MLP width {fc1.shape[0]} is not a multiple of the hidden size {hidden}")
    side = int(round(n_pos ** 0.5))
    if patch != PATCH or side * side != n_pos:
        raise ModelLoadError(f"{what}: patch size {patch} / {n_pos} position embeddings do not match "
                             f"a DINOv2 /14 backbone")
    try:
        return depth_config(hidden, layers, neck, fusion, head, mlp_ratio=int(fc1.shape[0]) // hidden,
                            image_size=side * PATCH)
    except Exception as e:  # noqa: BLE001 - transformers' config validation raises its own types
        raise ModelLoadError(f"{what}: {e}") from None


# --- loading ----------------------------------------------------------------------------------------------

def load_hf_folder(folder: Path):
    """DepthAnythingForDepthEstimation from a local HF folder; every weight must be in the file."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a node's log is no place for progress bars
    what = f"depth model folder {folder}"
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"{what} has no config.json (expected a Hugging Face format folder: config.json "
                             f"+ model.safetensors, or an original depth_anything_v2_vits.pth file)")
    try:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ModelLoadError(f"{what}: config.json is not valid JSON ({e})") from None
    if model_type != "depth_anything":
        raise ModelLoadError(f"{what}: config.json model_type is {model_type!r}, expected 'depth_anything'")
    weights = [p for p in ("model.safetensors", "pytorch_model.bin") if (folder / p).is_file()]
    if not weights:
        raise ModelLoadError(f"{what} has no model.safetensors")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers' own load report is replaced by the error below
    try:
        config = DepthAnythingConfig.from_pretrained(folder, local_files_only=True)
        # mismatched sizes are loaded as "reinitialised" and then refused here, naming the keys
        model, info = DepthAnythingForDepthEstimation.from_pretrained(
            folder, config=config, local_files_only=True, dtype=torch.float32, output_loading_info=True,
            ignore_mismatched_sizes=True)
    except Exception as e:  # safetensors/transformers raise many types for a truncated file
        raise ModelLoadError(f"{what}: cannot load {weights[0]} (truncated, corrupt, or of another "
                             f"architecture): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ModelLoadError(f"{what}: {weights[0]} does not match its config.json: "
                             + "; ".join(f"{len(v)} {k} {sorted(map(str, v))[:4]}" for k, v in bad.items()))
    return model.eval()


def load_original_pth(path: Path):
    """DepthAnythingForDepthEstimation from the original repository's ``.pth`` (keys converted)."""
    from transformers import DepthAnythingForDepthEstimation

    what = f"depth checkpoint {path}"
    state = torch_load_plain(path, "depth checkpoint")
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{what}: expected a state dict, got {type(state).__name__}")
    config = config_from_original(state, what)
    model = DepthAnythingForDepthEstimation(config).eval()
    own = model.state_dict().keys()
    load_state_strict(model, original_to_hf(state, config.backbone_config.num_hidden_layers, own), what,
                      "Depth Anything V2 in the original repository's format")
    return model


def use_original_pos_interpolation(model) -> None:
    """Make the HF backbone resize its position embeddings the way the original DINOv2 code does.

    Both resize the 37x37 grid bicubically, but the original passes ``scale_factor=(n + 0.1) / 37``
    (DINOv2's offset), which also sets where PyTorch samples, while transformers passes ``size=n``.
    At any input other than 518x518 the two embeddings differ (about 1-2 % of the output measured on
    the real-size architecture); the real pipeline ran the original code, so that is matched here.
    """
    import math

    import torch
    import torch.nn.functional as F

    emb = model.backbone.embeddings

    def interpolate_pos_encoding(embeddings, height: int, width: int):
        pos = emb.position_embeddings
        n_pos = pos.shape[1] - 1
        # plain ints: under ONNX tracing the sizes are tensors, and the export is fixed-shape anyway
        grid_h, grid_w = int(height) // PATCH, int(width) // PATCH
        if grid_h * grid_w == n_pos and int(height) == int(width):
            return pos
        side = math.sqrt(n_pos)
        grid = pos[:, 1:].float().reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side), mode="bicubic",
                             align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1).to(pos.dtype)
        return torch.cat((pos[:, :1], grid), dim=1)

    emb.interpolate_pos_encoding = interpolate_pos_encoding


def load_depth_module(model_path):
    path = Path(model_path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"depth model {path} does not exist (expected a Hugging Face folder or an "
                             f"original .pth file)")
    model = load_hf_folder(path) if path.is_dir() else load_original_pth(path)
    use_original_pos_interpolation(model)
    return model


def lower_bound_hw(height: int, width: int, input_size: int = DEFAULT_INPUT_SIZE, multiple: int = PATCH):
    """Network input size for a frame: the original repo's Resize(keep_aspect_ratio, lower_bound).

    Scale so both sides are >= input_size (the short side lands on it), round each side to the
    nearest multiple of 14 (np.round, as the original), or up when rounding would go below.
    """
    scale = max(input_size / height, input_size / width)

    def fit(x: float) -> int:
        y = int(np.round(x / multiple) * multiple)
        return y if y >= input_size else int(np.ceil(x / multiple) * multiple)

    return fit(scale * height), fit(scale * width)


def _export_wrapper(module):
    import torch

    class PredictedDepth(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).predicted_depth

    return PredictedDepth(module).eval()


class DepthModel:
    """Depth Anything V2 with its preprocessing, on torch (CPU/CUDA, fp16 on CUDA) or onnxruntime."""

    def __init__(self, module, device="cpu", backend="torch", input_size=DEFAULT_INPUT_SIZE, fp16=False,
                 onnx_cache_dir=None, threads=None, source=""):
        self.module = module
        self.device = device
        self.backend = backend
        self.input_size = int(input_size)
        self.fp16 = bool(fp16)
        self.onnx_cache_dir = onnx_cache_dir
        self.threads = threads
        self.source = source
        self._sessions: dict[tuple[int, ...], Any] = {}  # one fixed-shape export per input shape

    @classmethod
    def load(cls, model_path, device="cpu", backend="torch", input_size=518, fp16=False, onnx_cache_dir=None,
             threads=None) -> "DepthModel":
        import torch

        if backend not in BACKENDS:
            raise ValueError(f"depth backend must be one of {BACKENDS}, got {backend!r}")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if int(input_size) < PATCH or int(input_size) % PATCH:
            raise ValueError(f"depth input size must be a positive multiple of {PATCH}, got {input_size}")
        if fp16 and (device != "cuda" or backend != "torch"):
            raise ValueError("fp16 depth runs only with the torch backend on device cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device cuda asked for, but torch sees no CUDA GPU")
        if threads and backend == "torch":
            torch.set_num_threads(int(threads))
        module = load_depth_module(model_path)
        if backend == "torch":
            module.to(device)
            if fp16:
                module.half()
        model = cls(module, device, backend, input_size, fp16, onnx_cache_dir, threads, str(model_path))
        if backend == "onnx":
            from so101_deploy.perception.onnx_backend import _providers

            _providers(device)  # fail at start, not at the first frame, when the provider is missing
        return model

    def input_hw(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        return lower_bound_hw(int(frame_hw[0]), int(frame_hw[1]), self.input_size)

    def preprocess(self, bgr_u8: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR -> (1, 3, h, w) float32 pixel_values (h, w multiples of 14)."""
        import cv2

        check_bgr_frame(bgr_u8)
        h, w = self.input_hw(bgr_u8.shape[:2])
        rgb = cv2.cvtColor(bgr_u8, cv2.COLOR_BGR2RGB).astype(np.float32) * np.float32(1 / 255)
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_CUBIC)
        x = (rgb - IMAGENET_MEAN) / IMAGENET_STD
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def preprocess_torch(self, bgr_u8: np.ndarray, device: str | None = None):
        """:meth:`preprocess` done by torch on ``device`` (used on the GPU, where it saves the
        CPU resize): the uint8 frame is uploaded, then bicubic with a=-0.75 and half-pixel centres,
        the same kernel as cv2 INTER_CUBIC (they agree to 5e-5 on [0, 1] images)."""
        import torch.nn.functional as F

        check_bgr_frame(bgr_u8)
        h, w = self.input_hw(bgr_u8.shape[:2])
        x = rgb_tensor(bgr_u8, device or self.device)
        return imagenet_normalise(F.interpolate(x, (h, w), mode="bicubic", align_corners=False))

    def session(self, input_shape: tuple[int, ...]):
        s = self._sessions.get(input_shape)
        if s is None:
            from so101_deploy.perception.onnx_backend import session_for

            s = self._sessions[input_shape] = session_for(
                _export_wrapper(self.module), input_shape, "depth_anything", "pixel_values", "predicted_depth",
                cache_dir=self.onnx_cache_dir, device=self.device, threads=self.threads)
        return s

    def warmup(self, frame_hw: tuple[int, int] = (480, 640)) -> None:
        """Export (onnx) and run once, so the first camera frame is not the slow one."""
        self.predict(np.zeros((*frame_hw, 3), np.uint8))

    def raw(self, bgr_u8: np.ndarray):
        """The network's predicted_depth (1, h, w) at input resolution, as a float32 torch tensor."""
        import torch

        if self.backend == "onnx":
            x = self.preprocess(bgr_u8)
            return torch.from_numpy(self.session(x.shape).run(x))
        with torch.inference_mode():
            if self.device == "cuda":
                t = self.preprocess_torch(bgr_u8)
            else:
                t = torch.from_numpy(self.preprocess(bgr_u8))
            return self.module(pixel_values=t.half() if self.fp16 else t).predicted_depth.float()

    def predict(self, bgr_u8: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR -> (H, W) float32 raw relative disparity, larger = nearer."""
        import torch
        import torch.nn.functional as F

        check_bgr_frame(bgr_u8)
        H, W = bgr_u8.shape[:2]
        with torch.inference_mode():
            d = F.interpolate(self.raw(bgr_u8)[:, None], (H, W), mode="bilinear", align_corners=True)
            out = d[0, 0].cpu().numpy().astype(np.float32, copy=False)
        if not np.isfinite(out).all():  # fp16 overflow or a broken model: never emit garbage
            raise FloatingPointError(f"depth model produced {int((~np.isfinite(out)).sum())} non-finite values")
        return out


# --- the node's logic ----------------------------------------------------------------------------------

class DepthNode:
    """image message -> disparity message (same frame_id and stamp_ns, ``latency_ms`` added)."""

    def __init__(self, model: DepthModel):
        self.model = model

    def handle(self, msg: Message):
        t0 = time.perf_counter()
        disparity = self.model.predict(msg.data)
        latency_ms = (time.perf_counter() - t0) * 1e3
        return encode("disparity", disparity, frame_id=msg.frame_id, stamp_ns=msg.stamp_ns,
                      latency_ms=round(latency_ms, 3))


SETTINGS = (
    Setting("SO101_DEPTH_MODEL", "str", required=True,
            doc="a Hugging Face Depth-Anything-V2-Small folder, or the original depth_anything_v2_vits.pth"),
    Setting("SO101_DEPTH_BACKEND", "choice", "torch", "torch, or onnxruntime on an export of the same weights",
            choices=BACKENDS),
    Setting("SO101_DEPTH_INPUT_SIZE", "int", DEFAULT_INPUT_SIZE, "short side fed to the model (518: its own; "
            "266 on a CPU)", min=PATCH, max=2048),
    Setting("SO101_DEPTH_FP16", "bool", False, "half precision (cuda + torch only)"),
    Setting("SO101_DEPTH_WARMUP_HW", "str", "480x640", "frame size HxW to export/run once at start, or none"),
) + MODEL_RUNTIME_SETTINGS


def depth_model_from_settings(settings) -> DepthModel:
    """Build the model from the node's settings (:data:`SETTINGS`); any failure names the setting and
    the file.  The warm-up (SO101_DEPTH_WARMUP_HW) is the node's: :func:`warmup_from_settings`."""
    path = settings["SO101_DEPTH_MODEL"]
    backend = settings["SO101_DEPTH_BACKEND"]
    device = settings["SO101_DEVICE"]
    size = settings["SO101_DEPTH_INPUT_SIZE"]
    fp16 = settings["SO101_DEPTH_FP16"]
    cache = settings["SO101_ONNX_CACHE"]
    threads = settings["SO101_THREADS"] or None
    if fp16 and (device != "cuda" or backend != "torch"):
        raise SettingError(f"{settings.node}: SO101_DEPTH_FP16=true needs SO101_DEVICE=cuda and "
                           f"SO101_DEPTH_BACKEND=torch (got {device}, {backend})")
    check_device_setting(settings, device)
    try:
        return DepthModel.load(path, device=device, backend=backend, input_size=size, fp16=fp16,
                               onnx_cache_dir=cache, threads=threads)
    except (ModelLoadError, RuntimeError, ValueError) as e:
        raise SettingError(f"{settings.node}: SO101_DEPTH_MODEL={path}: {e}") from None


def warmup_from_settings(model: DepthModel, settings) -> None:
    """Export (onnx) and run the model once at SO101_DEPTH_WARMUP_HW before the first frame, so the
    first frame is not late; a failure is a :class:`SettingError` (a retry would fail the same way)."""
    text = settings["SO101_DEPTH_WARMUP_HW"]
    if text.lower() == "none":
        return
    try:
        hw = tuple(int(v) for v in text.lower().split("x"))
        if len(hw) != 2 or min(hw) <= 0:
            raise ValueError
    except ValueError:
        raise SettingError(f"{settings.node}: SO101_DEPTH_WARMUP_HW={text!r} must be HxW (e.g. 480x640) or none") \
            from None
    try:
        model.warmup(hw)
    except Exception as e:  # noqa: BLE001 - reported once at start
        raise SettingError(f"{settings.node}: warm-up of SO101_DEPTH_MODEL={model.source} at {text} failed: {e}") \
            from None
