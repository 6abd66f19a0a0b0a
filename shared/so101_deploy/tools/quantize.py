"""``so101-deploy quantize-depth``: a static int8 (QDQ) export of the depth model, accepted only when the
84x84 disparity observation it gives agrees with fp32's.

Dynamic int8 quantisation of every op (convolutions included) was slower than fp32 on a CPU; static QDQ
with activation ranges calibrated on real frames lets onnxruntime run the linear layers and convolutions in
int8 (VNNI where the CPU has it).  The fp32 export's attention is one fused ``MultiHeadAttention`` node per
block (:mod:`so101_deploy.perception.ort_attention`), which QDQ leaves in fp32: quantising the plain
attention's Softmax and activation-by-activation matmuls made int8 slower than fp32 at depth 518 (695 vs
627 ms); with the fused node int8 is ~1.5x faster than fp32 at 518 and ~1.6x at 266.

Calibration uses the first frames of ``--frames``, the check the others: each held-out frame's 84x84
disparity observation (per-frame min-max -> uint8 -> crop -> AREA, exactly what the policy sees) is
correlated with fp32's, and the export is written to the ONNX cache (where the depth node finds it with
``SO101_DEPTH_INT8=true``) only when the lowest correlation is at least ``--min-correlation`` (0.99).
Calibrate with frames from your own camera over your own scene.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from so101_deploy.perception.depth import INT8_TAG, DepthModel, resize_bilinear_align_corners
from so101_deploy.perception.onnx_backend import cache_path, write_manifest
from so101_deploy.policy.observation import crop_resize, disparity_to_u8

MIN_CORRELATION = 0.99
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class QuantizationRejected(RuntimeError):
    """The int8 export disagrees with fp32 more than allowed; nothing was written to the cache."""


@dataclass
class QuantReport:
    model: str
    input_shape: list[int]
    calibration_frames: int
    check_frames: int
    correlation_min: float
    correlation_mean: float
    fp32_ms: float
    int8_ms: float
    accepted: bool
    onnx: str | None


def disparity_observation(disparity: np.ndarray) -> np.ndarray:
    """The 84x84 uint8 disparity channel of the observation for one full-frame disparity."""
    return crop_resize(disparity_to_u8(disparity), cv2.INTER_AREA)


def read_frames(folder: str | Path) -> list[np.ndarray]:
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files]
    frames = [f for f in frames if f is not None]
    if len(frames) < 4:
        raise ValueError(f"--frames {folder}: expected a folder with at least 4 camera images "
                         f"({', '.join(IMAGE_SUFFIXES)}), found {len(frames)}")
    return frames


def _median_ms(session, x: np.ndarray, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def quantize_depth(model_path: str | Path, frames: list[np.ndarray], input_size: int, cache_dir: str | Path,
                   min_correlation: float = MIN_CORRELATION, threads: int | None = None) -> QuantReport:
    """Calibrate on the first two thirds of ``frames``, check on the rest; raise QuantizationRejected
    (and write nothing) when the check fails."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from so101_deploy.perception.onnx_backend import OnnxSession

    fp32 = DepthModel.load(model_path, backend="onnx", input_size=input_size, onnx_cache_dir=cache_dir,
                           threads=threads)
    h, w = frames[0].shape[:2]
    xs = [fp32.preprocess(f) for f in frames]
    shape = xs[0].shape
    if any(x.shape != shape for x in xs):
        raise ValueError("--frames: every frame must have the same size")
    fp32_session = fp32.session(shape)
    n_cal = max(2, (2 * len(xs)) // 3)
    calibration, check = xs[:n_cal], xs[n_cal:]

    class Frames(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {fp32_session.input_name: x}

    out_path = cache_path(cache_dir, INT8_TAG, fp32.file_key, shape)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_session.path), str(pre), skip_symbolic_shape=True)
        # matmuls and convolutions in int8; activations uint8 (asymmetric), weights int8 per channel
        quantize_static(str(pre), str(q), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Conv", "Gemm"])
        int8_session = OnnxSession(q, shape, "cpu", threads)
        correlations = []
        for x in check:
            a = disparity_observation(resize_bilinear_align_corners(fp32_session.run(x)[0], h, w)).astype(np.float64)
            b = disparity_observation(resize_bilinear_align_corners(int8_session.run(x)[0], h, w)).astype(np.float64)
            correlations.append(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) if a.std() and b.std() else
                                float(np.array_equal(a, b)))
        report = QuantReport(str(model_path), list(shape), len(calibration), len(check),
                             round(min(correlations), 5), round(float(np.mean(correlations)), 5),
                             round(_median_ms(fp32_session, check[0]), 1), round(_median_ms(int8_session, check[0]), 1),
                             min(correlations) >= min_correlation, None)
        if not report.accepted:
            raise QuantizationRejected(
                f"int8 depth rejected: its 84x84 disparity observation correlates {report.correlation_min} with "
                f"fp32's on the worst of {len(check)} held-out frames (mean {report.correlation_mean}); "
                f"at least {min_correlation} is needed. fp32 stays in use.")
        q.replace(out_path)
    report.onnx = str(out_path)
    write_manifest(cache_dir, INT8_TAG, fp32.file_key, out_path, asdict(report), shape)
    return report


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the depth model (HF folder or depth_anything_v2_vits.pth)")
    p.add_argument("--frames", required=True, help="a folder of >= 4 camera images of your scene (6-30 is plenty)")
    p.add_argument("--input-size", type=int, default=266, help="the depth node's SO101_DEPTH_INPUT_SIZE")
    p.add_argument("--onnx-cache", default=str(Path("~/.cache/so101-deploy/onnx")),
                   help="the depth node's SO101_ONNX_CACHE")
    p.add_argument("--min-correlation", type=float, default=MIN_CORRELATION)
    p.add_argument("--threads", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    try:
        frames = read_frames(args.frames)
        report = quantize_depth(args.model, frames, args.input_size, Path(args.onnx_cache).expanduser(),
                                args.min_correlation, args.threads)
    except QuantizationRejected as e:
        print(f"quantize-depth: {e}")
        return 1
    except (ValueError, OSError, RuntimeError) as e:
        print(f"quantize-depth: error: {e}")
        return 2
    print(json.dumps(asdict(report), indent=2))
    print(f"quantize-depth: accepted (worst correlation {report.correlation_min}); int8 {report.int8_ms} ms vs "
          f"fp32 {report.fp32_ms} ms per frame here. Use it with SO101_DEPTH_INT8: \"true\" on the depth node.")
    return 0
