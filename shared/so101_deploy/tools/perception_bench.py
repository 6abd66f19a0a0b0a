"""Per-node latency of the perception models at their real size (random weights; weights do not
change the latency of these architectures), torch and onnxruntime.

Each figure is the whole ``predict`` a node runs per frame (preprocessing, network, resize back),
on one 640x480 frame, after warm-up runs; the ONNX export happens before timing.  Called by the
lead's ``so101-deploy bench``; never run it from a test (seconds per depth frame on a CPU).
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def time_call(fn: Callable[[], object], runs: int, warmup: int = 2) -> dict:
    """Wall time of ``fn()`` after ``warmup`` calls: p50/min/max/mean in ms over ``runs`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 2), "min_ms": round(samples[0], 2),
            "max_ms": round(samples[-1], 2), "mean_ms": round(statistics.mean(samples), 2), "runs": runs}


def _real_size_depth_folder(folder: Path) -> Path:
    """Depth-Anything-V2-Small's real architecture with random weights, saved as an HF folder."""
    import json

    import torch
    from transformers import DepthAnythingForDepthEstimation

    from so101_deploy.perception.depth_checkpoint import PREPROCESSOR_CONFIG, v2_small_config

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DepthAnythingForDepthEstimation(v2_small_config()).eval()
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    return folder


def bench_perception(seg_checkpoint=None, depth_model=None, backends: Sequence[str] = ("torch", "onnx"),
                     depth_sizes: Sequence[int] = (518, 266), frame_hw: tuple[int, int] = (480, 640),
                     device: str = "cpu", threads: int | None = 2, runs: int = 5, warmup: int = 2,
                     depth_runs: int | None = None, fp16: bool = False, onnx_cache_dir=None,
                     seg: bool = True, depth: bool = True, log: Callable[[str], None] | None = print) -> dict:
    """Latency of SegModel.predict and DepthModel.predict per backend (and depth input size).

    ``seg_checkpoint`` / ``depth_model``: real files to time; None builds the real-size
    architectures with random weights in a temporary folder.  ``depth_runs`` defaults to ``runs``.
    ``fp16`` times the torch depth model in half precision (cuda only).  Returns
    ``{"machine": {...}, "seg": {backend: stats}, "depth": {"518": {backend: stats}, ...}}`` with
    stats ``{"p50_ms", "min_ms", "max_ms", "runs"}`` (plus ``"input"``: the network input HxW).
    """
    import torch

    from so101_deploy.perception.depth import DepthModel
    from so101_deploy.tools.fixtures import write_seg_checkpoint
    from so101_deploy.perception.seg import SegModel

    say = log or (lambda _m: None)
    frame = np.random.default_rng(0).integers(0, 256, (*frame_hw, 3), dtype=np.uint8)
    result: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                                "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                                "threads": threads, "frame": f"{frame_hw[0]}x{frame_hw[1]}"}}
    with tempfile.TemporaryDirectory(prefix="so101-bench-") as tmp:
        tmp = Path(tmp)
        cache = onnx_cache_dir or tmp / "onnx"
        if seg:
            ckpt = seg_checkpoint or write_seg_checkpoint(tmp / "seg" / "best.ckpt", img_hw=frame_hw)
            result["seg"] = {}
            for backend in backends:
                model = SegModel.load(ckpt, device=device, backend=backend, onnx_cache_dir=cache, threads=threads)
                stats = time_call(lambda: model.predict(frame), runs, warmup)
                stats["input"] = f"{model.train_hw[0]}x{model.train_hw[1]}"
                result["seg"][backend] = stats
                say(f"seg {backend} {stats['input']}: p50 {stats['p50_ms']} ms")
        if depth:
            source = depth_model or _real_size_depth_folder(tmp / "depth_hf")
            result["depth"] = {}
            for size in depth_sizes:
                result["depth"][str(size)] = {}
                for backend in backends:
                    half = fp16 and backend == "torch"
                    model = DepthModel.load(source, device=device, backend=backend, input_size=size, fp16=half,
                                            onnx_cache_dir=cache, threads=threads)
                    model.warmup(frame_hw)  # exports the fixed-shape graph outside the timing
                    stats = time_call(lambda: model.predict(frame), depth_runs or runs, warmup)
                    h, w = model.input_hw(frame_hw)
                    stats["input"] = f"{h}x{w}"
                    key = backend + ("_fp16" if half else "")
                    result["depth"][str(size)][key] = stats
                    say(f"depth {size} {key} {stats['input']}: p50 {stats['p50_ms']} ms")
    return result


if __name__ == "__main__":  # python -m so101_deploy.tools.perception_bench [cuda]
    import json
    import sys

    dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    print(json.dumps(bench_perception(device=dev, threads=None if dev == "cuda" else 2,
                                      backends=("torch",) if dev == "cuda" else ("torch", "onnx")), indent=2))
