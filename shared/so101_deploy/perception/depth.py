"""Depth: Depth Anything V2 Small through transformers (``DepthAnythingForDepthEstimation``).

Two model formats load, both without network access: a local Hugging Face folder, or the original
repository's ``depth_anything_v2_vits.pth`` (see :mod:`so101_deploy.perception.depth_checkpoint`).

Preprocessing is the original repository's ``infer_image`` (what the real pipeline ran): BGR -> RGB,
/255, resize keeping the aspect ratio so the SHORT side is at least ``input_size`` ("lower_bound"),
each side a multiple of 14, bicubic (cv2 INTER_CUBIC), ImageNet mean/std.  For a 640x480 frame this
is also exactly the HF processor's shape (518x686 at 518, 266x350 at 266).  The output is the raw
relative disparity (larger = nearer, >= 0 from the head's ReLU) resized to the frame with bilinear
``align_corners=True``, as ``infer_image`` does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from so101_deploy.core.messages import Message, encode
from so101_deploy.core.settings import Setting, SettingError
from so101_deploy.perception.depth_checkpoint import PATCH, load_depth_module
from so101_deploy.perception.ort_attention import CONTRIB_OPSET
from so101_deploy.perception.seg import (BACKENDS, DEVICES, MODEL_RUNTIME_SETTINGS, ModelLoadError,
                                         apply_runtime_settings, check_bgr_frame, check_device_setting,
                                         imagenet_normalise, rgb_tensor)

DEFAULT_INPUT_SIZE = 518
ONNX_TAG = "depth_anything"
INT8_TAG = "depth_anything_int8"  # static int8 (QDQ) exports made by `so101-deploy quantize-depth`
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


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


def _align_corners_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the lower input index, the upper one and the weight of the upper, with
    the corners of input and output aligned (source = i * (n_in - 1) / (n_out - 1), as torch)."""
    scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
    src = np.arange(n_out, dtype=np.float32) * scale
    lo = np.minimum(src.astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_bilinear_align_corners(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) float32 -> (height, width) float32: torch's ``F.interpolate(mode="bilinear",
    align_corners=True)`` in numpy (equal to float rounding, tested), what the original ``infer_image``
    did to the network's output."""
    x = np.asarray(x, np.float32)
    lo, hi, wy = _align_corners_taps(x.shape[0], height)
    rows = x[lo] + (x[hi] - x[lo]) * wy[:, None]
    lo, hi, wx = _align_corners_taps(x.shape[1], width)
    return np.ascontiguousarray(rows[:, lo] + (rows[:, hi] - rows[:, lo]) * wx[None, :])


def _export_wrapper(module):
    """The module as ``pixel_values -> predicted_depth``; traced for ONNX, its attention is exported as
    fused ``MultiHeadAttention`` nodes (:mod:`so101_deploy.perception.ort_attention`)."""
    import torch

    from so101_deploy.perception.ort_attention import fused_attention

    class PredictedDepth(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            if torch.jit.is_tracing():
                with fused_attention(self.m):
                    return self.m(pixel_values=pixel_values).predicted_depth
            return self.m(pixel_values=pixel_values).predicted_depth

    return PredictedDepth(module).eval()


class DepthModel:
    """Depth Anything V2 with its preprocessing, on torch (CPU/CUDA, fp16 on CUDA) or onnxruntime."""

    def __init__(self, module, device="cpu", backend="torch", input_size=DEFAULT_INPUT_SIZE, fp16=False,
                 onnx_cache_dir=None, threads=None, source="", int8=False):
        self.module = module
        self.int8 = bool(int8)
        self.device = device
        self.backend = backend
        self.input_size = int(input_size)
        self.fp16 = bool(fp16)
        self.onnx_cache_dir = onnx_cache_dir
        self.threads = threads
        self.source = source
        self._sessions: dict[tuple[int, ...], Any] = {}  # one fixed-shape export per input shape
        self._file_key: str | None = None

    @property
    def file_key(self) -> str:
        """The sha256 of the checkpoint's bytes, naming its exports' manifests."""
        if self._file_key is None:
            from so101_deploy.perception.onnx_backend import file_digest

            self._file_key = file_digest(self.source)
        return self._file_key

    def _no_int8(self, input_shape: tuple[int, ...]) -> str:
        return (f"no int8 export of {self.source} for input {input_shape} in {self.onnx_cache_dir}: make it (and "
                f"see its agreement with fp32) with `so101-deploy quantize-depth --model {self.source} "
                f"--input-size {self.input_size} --frames FOLDER_OF_CAMERA_FRAMES`, or set SO101_DEPTH_INT8=false")

    def _cached_session(self, input_shape: tuple[int, ...]):
        from so101_deploy.perception.onnx_backend import OnnxBackendError, OnnxSession, read_manifest

        found = read_manifest(self.onnx_cache_dir, INT8_TAG if self.int8 else ONNX_TAG, self.file_key, input_shape)
        if found is None:
            return None
        try:
            s = OnnxSession(found[0], input_shape, self.device, self.threads)
        except OnnxBackendError:
            return None  # an unusable cache entry: export again from the checkpoint
        self._sessions[input_shape] = s
        return s

    @classmethod
    def load(cls, model_path, device="cpu", backend="torch", input_size=518, fp16=False, onnx_cache_dir=None,
             threads=None, int8=False) -> "DepthModel":
        if backend not in BACKENDS:
            raise ValueError(f"depth backend must be one of {BACKENDS}, got {backend!r}")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if int(input_size) < PATCH or int(input_size) % PATCH:
            raise ValueError(f"depth input size must be a positive multiple of {PATCH}, got {input_size}")
        if int8 and (backend != "onnx" or device != "cpu"):
            raise ValueError("int8 depth runs only with the onnx backend on device cpu")
        if int8 and not Path(model_path).exists():
            raise ModelLoadError(f"{model_path} does not exist")
        if backend == "onnx" and device == "cpu" and not fp16 and Path(model_path).exists():
            model = cls(None, device, backend, input_size, fp16, onnx_cache_dir, threads, str(model_path), int8=int8)
            # exported before from this very checkpoint at a 640x480 frame's shape: no torch, no transformers
            shape = (1, 3, *model.input_hw((480, 640)))
            if model._cached_session(shape) is not None:
                return model
            if int8:  # made only by quantize-depth, never here
                raise ModelLoadError(model._no_int8(shape))
        import torch

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
        s = self._sessions.get(input_shape) or self._cached_session(input_shape)
        if s is None and self.int8:
            raise ModelLoadError(self._no_int8(input_shape))
        if s is None:
            from so101_deploy.perception.onnx_backend import session_for, write_manifest

            if self.module is None:  # started from a manifest; a frame of another size needs a new export
                self.module = load_depth_module(self.source)
            s = self._sessions[input_shape] = session_for(
                _export_wrapper(self.module), input_shape, ONNX_TAG, "pixel_values", "predicted_depth",
                cache_dir=self.onnx_cache_dir, device=self.device, threads=self.threads, custom_opsets=CONTRIB_OPSET)
            write_manifest(self.onnx_cache_dir, ONNX_TAG, self.file_key, s.path, {}, input_shape)
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
        check_bgr_frame(bgr_u8)
        H, W = bgr_u8.shape[:2]
        if self.backend == "onnx":  # numpy all the way: the node needs no torch
            x = self.preprocess(bgr_u8)
            out = resize_bilinear_align_corners(self.session(x.shape).run(x)[0], H, W)
        else:
            import torch
            import torch.nn.functional as F

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
    Setting("SO101_DEPTH_INT8", "bool", False, "the static int8 export made by `so101-deploy quantize-depth` "
            "(onnx on cpu only; it checks its agreement with fp32 when it makes it)"),
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
    apply_runtime_settings(settings)
    try:
        return DepthModel.load(path, device=device, backend=backend, input_size=size, fp16=fp16,
                               onnx_cache_dir=cache, threads=threads, int8=settings["SO101_DEPTH_INT8"])
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
