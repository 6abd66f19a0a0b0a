"""onnxruntime backend shared by the perception models (seg, depth).

A model is exported by the project itself from the very weights the torch backend loads, with the
legacy TorchScript exporter (``dynamo=False``, opset 17) at ONE fixed input shape: Depth Anything's
head bakes its output size into the graph, so a graph fed another shape returns a wrong-size map
without any error (models.md, "ONNX export").  Hence the cache file name carries a hash of the
weights and the input shape, and :class:`OnnxSession` refuses any input of another shape.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

OPSET = 17
# bump when the export itself changes (wrapper, opset, names) so stale cache files are not reused
EXPORT_FORMAT = "v2"  # v2: depth's attention as fused MultiHeadAttention nodes
DEFAULT_CACHE_DIR = Path("~/.cache/so101-deploy/onnx")
# process-wide session options, set by a model node from its settings (SO101_ORT_SPIN) before it loads
SESSION_DEFAULTS: dict = {"spinning": False}


class OnnxBackendError(RuntimeError):
    """The onnxruntime backend cannot be built or was fed the wrong input."""


def weights_digest(module) -> str:
    """A short sha256 of a module's state (names, dtypes, shapes and bytes of every tensor)."""
    import torch

    h = hashlib.sha256(EXPORT_FORMAT.encode())
    for name, t in module.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16
            t = t.float()
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def cache_path(cache_dir: str | Path | None, tag: str, digest: str, input_shape: Sequence[int]) -> Path:
    folder = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    shape = "x".join(str(int(d)) for d in input_shape)
    return folder / f"{tag}-{digest}-{shape}.onnx"


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it to ``path`` (mode 644): a crash
    mid-write never leaves a half-written cache file, and a failed write leaves nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_onnx(module, input_shape: Sequence[int], path: str | Path, input_name: str,
                output_name: str | Sequence[str], custom_opsets: dict[str, int] | None = None) -> Path:
    """Export ``module`` (fp32, eval, CPU) at a fixed ``input_shape``; written atomically.  ``output_name``:
    one name, or one per output of a module that returns a tuple.  ``custom_opsets``: domains of contrib
    ops the module's symbolics emit (e.g. ``{"com.microsoft": 1}``)."""
    import torch

    example = torch.zeros(tuple(int(d) for d in input_shape), dtype=torch.float32)

    def export(tmp: Path) -> None:
        # no_grad, not inference_mode: the tracer cannot record custom ops on inference tensors
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer warns that shapes become constants: exactly what a fixed-shape export means
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (example,), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=[input_name],
                              output_names=[output_name] if isinstance(output_name, str) else list(output_name),
                              custom_opsets=custom_opsets)

    write_atomically(path, export)
    return path


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise OnnxBackendError(
                "device cuda with the onnx backend needs onnxruntime's CUDAExecutionProvider (the "
                f"onnxruntime-gpu package); this onnxruntime offers {ort.get_available_providers()}. "
                "Use the torch backend on the GPU, or device cpu.")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "cpu":
        raise OnnxBackendError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return ["CPUExecutionProvider"]


class OnnxSession:
    """An onnxruntime session for one fixed-shape graph with one float32 input and one output."""

    def __init__(self, path: str | Path, input_shape: Sequence[int], device: str = "cpu",
                 threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.input_shape = tuple(int(d) for d in input_shape)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        if not SESSION_DEFAULTS["spinning"]:
            # idle intra-op threads sleep instead of spinning: on 2 cores shared by seg, depth and the rest
            # of the graph, a spinning thread takes the core another model needs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=_providers(device))
        except OnnxBackendError:
            raise
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise OnnxBackendError(f"onnxruntime cannot load {self.path}: {e}") from e
        inp = self.session.get_inputs()[0]
        graph_shape = tuple(inp.shape)
        if graph_shape != self.input_shape:
            raise OnnxBackendError(f"{self.path}: graph input shape {graph_shape}, expected {self.input_shape}")
        self.input_name = inp.name

    def run(self, x: np.ndarray, output: str | None = None) -> np.ndarray:
        """The graph's first output for ``x``, or the one named ``output`` (only that one is copied out)."""
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.shape != self.input_shape:
            got = (getattr(x, "dtype", type(x).__name__), getattr(x, "shape", None))
            raise OnnxBackendError(
                f"{self.path.name} was exported for float32 input of shape {self.input_shape}, got "
                f"{got[0]} {got[1]}; a graph fed another shape would return a wrong-size result")
        return self.session.run(None if output is None else [output], {self.input_name: np.ascontiguousarray(x)})[0]


def session_for(module, input_shape: Sequence[int], tag: str, input_name: str, output_name: str | Sequence[str],
                cache_dir: str | Path | None = None, device: str = "cpu", threads: int | None = None,
                custom_opsets: dict[str, int] | None = None) -> OnnxSession:
    """The session for ``module`` at ``input_shape``, exporting it into the cache when missing.

    A cache file that onnxruntime cannot load (truncated by a crash, say) is exported again once.
    """
    path = cache_path(cache_dir, tag, weights_digest(module), input_shape)
    if not path.exists():
        logger.info(f"exporting {tag} to ONNX at input shape {tuple(input_shape)} -> {path}")
        export_onnx(module, input_shape, path, input_name, output_name, custom_opsets)
        return OnnxSession(path, input_shape, device, threads)
    try:
        return OnnxSession(path, input_shape, device, threads)
    except OnnxBackendError as e:
        if "CUDAExecutionProvider" in str(e) or "device must be" in str(e):
            raise
        logger.warning(f"cached {path} is unusable ({e}); exporting again")
        export_onnx(module, input_shape, path, input_name, output_name, custom_opsets)
        return OnnxSession(path, input_shape, device, threads)


# --- exports found by the checkpoint file itself: no torch in the node ------------------------------------
#
# Importing torch costs a node ~480 MB of memory and seconds of start-up; with the onnx backend it is only
# needed to export.  After the first export, a manifest named by the sha256 of the checkpoint's bytes (and
# the input shape) points at the export and holds what the node needs to know about the model (classes,
# sizes); a node that finds it runs the export without importing torch.  The export was made from exactly
# these bytes by this code (EXPORT_FORMAT), so it is the same model the torch path would load.


def file_digest(path: str | Path) -> str:
    """sha256 (16 hex) of a checkpoint: a file's bytes, or a folder's files (relative names and bytes)."""
    path = Path(path)
    h = hashlib.sha256(f"{EXPORT_FORMAT}|file".encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else "").encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def manifest_path(cache_dir: str | Path | None, tag: str, file_key: str, input_shape: Sequence[int] = ()) -> Path:
    folder = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    shape = "-" + "x".join(str(int(d)) for d in input_shape) if input_shape else ""
    return folder / f"{tag}-file-{file_key}{shape}.json"


def read_manifest(cache_dir: str | Path | None, tag: str, file_key: str,
                  input_shape: Sequence[int] = ()) -> tuple[Path, dict] | None:
    """(export path, info) recorded for this checkpoint, or None (never exported, or the export is gone)."""
    mpath = manifest_path(cache_dir, tag, file_key, input_shape)
    try:
        record = json.loads(mpath.read_text())
        onnx_path = mpath.parent / str(record["onnx"])
        info = dict(record["info"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (onnx_path, info) if onnx_path.is_file() else None


def write_manifest(cache_dir: str | Path | None, tag: str, file_key: str, onnx_path: str | Path, info: dict,
                   input_shape: Sequence[int] = ()) -> Path:
    """Record that ``onnx_path`` is the export of the checkpoint ``file_key`` (written atomically)."""
    record = json.dumps({"onnx": Path(onnx_path).name, "info": info})
    return write_atomically(manifest_path(cache_dir, tag, file_key, input_shape), lambda tmp: tmp.write_text(record))
