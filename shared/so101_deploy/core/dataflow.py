"""Run the project's dataflows from Python (the demo, the benchmark, the integration tests).

``prepare`` copies a dataflow YAML with node paths made absolute and per-node ``env`` overrides,
so a run can point nodes at temporary folders without editing the files users read.
``run_dataflow`` starts ``dora run FILE --stop-after Ns`` in its own process group and always
stops that group by its process id, even when the caller is interrupted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]


class DataflowError(RuntimeError):
    pass


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise DataflowError(f"dataflow {path} does not exist")
    return yaml.safe_load(path.read_text())


def prepare(path: str | Path, out_path: str | Path, env: Mapping[str, Mapping[str, str]] | None = None,
            drop_nodes: tuple[str, ...] = (), extra_nodes: list[dict[str, Any]] | None = None) -> Path:
    """Write a copy of a dataflow with absolute node paths and ``env[node_id]`` merged in."""
    path = Path(path).resolve()
    df = load(path)
    nodes = []
    for node in df.get("nodes", []):
        if node["id"] in drop_nodes:
            continue
        node = dict(node)
        p = node.get("path")
        if p and not p.startswith("dora") and not os.path.isabs(p) and (path.parent / p).exists():
            node["path"] = str((path.parent / p).resolve())
        if env and node["id"] in env:
            node["env"] = {**(node.get("env") or {}), **{k: str(v) for k, v in env[node["id"]].items()}}
        if node.get("env"):
            # the copy may live elsewhere: settings that name files next to the original stay valid
            node["env"] = {k: _resolve(path.parent, v) for k, v in node["env"].items()}
        nodes.append(node)
    unknown = set(env or {}) - {n["id"] for n in nodes}
    if unknown:
        raise DataflowError(f"env overrides for nodes not in {path.name}: {sorted(unknown)}")
    nodes.extend(extra_nodes or [])
    df["nodes"] = nodes
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(yaml.safe_dump(df, sort_keys=False))
    return out_path


def _resolve(base: Path, value: Any) -> str:
    v = str(value)
    if v and not os.path.isabs(v) and ("/" in v or v.endswith((".yml", ".json", ".pt", ".ckpt"))) \
            and (base / v).exists():
        return str((base / v).resolve())
    return v


@dataclass
class RunResult:
    returncode: int
    log: str
    wall_s: float


def dora_executable() -> str:
    exe = shutil.which("dora")
    if exe is None:
        raise DataflowError("the `dora` command is not on PATH (pip install dora-rs-cli==1.1.0, or activate .venv)")
    return exe


def run_dataflow(path: str | Path, stop_after_s: float, log_path: str | Path | None = None,
                 extra_env: Mapping[str, str] | None = None, grace_s: float = 60.0) -> RunResult:
    """``dora run PATH --stop-after Ns``; the process group is killed if it outlives ``grace_s``."""
    env = {**os.environ, **(extra_env or {})}
    cmd = [dora_executable(), "run", str(path), "--stop-after", f"{int(round(stop_after_s))}s"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, cwd=str(Path(path).parent))
    try:
        out, _ = proc.communicate(timeout=stop_after_s + grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += f"\n[so101-deploy] dora run did not stop within {stop_after_s + grace_s:.0f} s; killed\n"
    finally:
        try:  # nodes left behind by a crashed daemon still belong to the group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if log_path is not None:
        Path(log_path).write_text(out)
    return RunResult(proc.returncode, out, time.monotonic() - t0)
