"""Run the project's dataflows from Python (the demo, the benchmark, the integration tests).

``flows_root`` finds the folder of the dataflow YAMLs and their ``nodes/`` (a source checkout, or
the copy a wheel ships as ``so101_deploy/flows``).  ``prepare`` copies a dataflow YAML with node
paths made absolute and per-node ``env`` overrides, so a run can point nodes at temporary folders
without editing the files users read.
``run_dataflow`` starts ``dora run FILE --stop-after Ns`` in its own process group and always
stops that group by its process id, even when the caller is interrupted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

FLOWS_ENV = "SO101_FLOWS"
# the folder that holds the ``so101_deploy`` package: shared/ in a checkout, site-packages when installed
LIBRARY_ROOT = Path(__file__).resolve().parents[2]
# the copy of the repository's dataflow*.yml and nodes/ that setup.py puts into a built wheel
PACKAGED_FLOWS = LIBRARY_ROOT / "so101_deploy" / "flows"


class DataflowError(RuntimeError):
    pass


def _is_flows_dir(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("dataflow*.yml"))


def source_checkout() -> Path | None:
    """The repository root when this package runs from a source checkout (editable install, PYTHONPATH)."""
    root = LIBRARY_ROOT.parent
    return root if LIBRARY_ROOT.name == "shared" and (root / "dataflow.yml").is_file() else None


def flows_root(explicit: str | Path | None = None) -> Path:
    """The folder of the dataflow YAMLs and their ``nodes/``.

    ``explicit`` (a command's ``--flows DIR``) > ``$SO101_FLOWS`` > the source checkout this package
    runs from > the copy shipped in the package.  A named folder without any ``dataflow*.yml`` is an
    error (nothing falls through past it); a missing file in a good folder is :func:`flow_file`'s error.
    """
    for value, origin in ((explicit, "--flows"), (os.environ.get(FLOWS_ENV) or None, f"${FLOWS_ENV}")):
        if value is not None:
            folder = Path(value).expanduser().resolve()
            if not _is_flows_dir(folder):
                raise DataflowError(f"{origin} {value}: no dataflow*.yml in {folder}")
            return folder
    checkout = source_checkout()
    if checkout is not None:
        return checkout
    if _is_flows_dir(PACKAGED_FLOWS):
        return PACKAGED_FLOWS
    raise DataflowError(f"no dataflows found: not in a source checkout ({LIBRARY_ROOT.parent}) and no packaged "
                        f"copy at {PACKAGED_FLOWS}; pass --flows DIR or set ${FLOWS_ENV} to a folder of "
                        f"dataflow*.yml and nodes/")


def add_flows_argument(parser: Any) -> None:
    """The ``--flows DIR`` option of the commands that run a dataflow (demo, bench, replay-demo)."""
    parser.add_argument("--flows", metavar="DIR", default=None,
                        help=f"folder with the dataflow YAMLs and nodes/ (default: ${FLOWS_ENV}, else the source "
                             f"checkout this runs from, else the copy installed with the package)")


def flow_file(name: str, explicit: str | Path | None = None) -> Path:
    """``name`` (e.g. ``dataflow.sim.yml``) in :func:`flows_root`; a missing file is a one-line error."""
    path = flows_root(explicit) / name
    if not path.is_file():
        raise DataflowError(f"{name} not found in {path.parent} (pass --flows DIR or set ${FLOWS_ENV})")
    return path


def node_script(node_id: str, explicit: str | Path | None = None) -> Path:
    """``nodes/<node_id>/main.py`` next to the flows, for nodes a command attaches (the monitor)."""
    path = flows_root(explicit) / "nodes" / node_id / "main.py"
    if not path.is_file():
        raise DataflowError(f"node script {path} not found (pass --flows DIR or set ${FLOWS_ENV})")
    return path


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise DataflowError(f"dataflow {path} does not exist")
    return yaml.safe_load(path.read_text())


def prepare(path: str | Path, out_path: str | Path, env: Mapping[str, Mapping[str, str]] | None = None,
            drop_nodes: tuple[str, ...] = (), extra_nodes: list[dict[str, Any]] | None = None,
            search: tuple[Path, ...] = ()) -> Path:
    """Write a copy of a dataflow with absolute node paths and ``env[node_id]`` merged in.

    Relative file settings are made absolute when they exist next to the original, in the installed
    library (``shared/...``), or under one of the ``search`` folders (e.g. where the demo keeps its
    fixture weights when the flows come from the package)."""
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
            node["env"] = {k: _resolve(path.parent, v, search) for k, v in node["env"].items()}
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


def _resolve(base: Path, value: Any, search: tuple[Path, ...] = ()) -> str:
    """A relative file setting made absolute: against the flow's folder; for ``shared/...`` (the
    library's own data, e.g. ``shared/so101_deploy/data/*.json``) against the library this code runs
    from (the checkout's shared/ or site-packages); then against each of ``search``."""
    v = str(value)
    if not v or os.path.isabs(v) or not ("/" in v or v.endswith((".yml", ".json", ".pt", ".ckpt"))):
        return v
    candidates = [base / v]
    if v.startswith("shared/"):
        candidates.append(LIBRARY_ROOT / v[len("shared/"):])
    candidates += [Path(folder) / v for folder in search]
    for c in candidates:
        if c.exists():
            return str(c.resolve())
    return v


@dataclass
class RunResult:
    returncode: int
    log: str
    wall_s: float
    condition_met: bool | None = None


def dora_executable(search_path: str | None = None) -> str:
    exe = shutil.which("dora", path=search_path)
    if exe is None:
        raise DataflowError("the `dora` command is not on PATH (pip install dora-rs-cli==1.1.0, or activate .venv)")
    return exe


class SessionMemory:
    """Peak resident memory (MB) per dora node of one ``dora run`` session, sampled from /proc.

    ``peak_mb``: VmRSS, which counts every page a node maps, shared libraries (dora's 66 MB extension,
    libarrow, numpy) in full in every node.  ``peak_pss_mb``: the proportional set size, where a page
    shared by n processes counts 1/n in each: their sum is what the graph really takes.
    A node is named by its ``node_id`` in the ``DORA_NODE_CONFIG`` dora gives it (else by the
    ``nodes/<id>/main.py`` of its command line); the sampling costs a few ms of CPU per period."""

    def __init__(self, period_s: float = 0.25, extra: Mapping[int, str] | None = None):
        """``extra``: pid -> name of processes outside the session to sample too (the bench's software bus)."""
        self.period_s = period_s
        self.peak_mb: dict[str, float] = {}
        self.peak_pss_mb: dict[str, float] = {}
        self.extra = dict(extra or {})
        # (pid, name) -> [(unix time s, user + system CPU ticks), ...] for the CPU census (a process that
        # exec's into a node starts a new series under the node's name)
        self._cpu: dict[tuple[int, str], list[tuple[float, int]]] = {}
        self._names: dict[int, str | None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, sid: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(sid,), daemon=True, name="session-memory")
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """Ends the sampling and rounds the peaks (MB, 0.1); returns ``peak_mb`` (``peak_pss_mb`` has the PSS)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.peak_mb, self.peak_pss_mb = ({k: round(v, 1) for k, v in sorted(d.items())}
                                          for d in (self.peak_mb, self.peak_pss_mb))
        return self.peak_mb

    def _name(self, pid: int) -> str | None:
        if pid not in self._names:
            name = None
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                config = next((e for e in environ if e.startswith(b"DORA_NODE_CONFIG=")), b"")
                m = re.search(rb"node_id:\s*['\"]?([A-Za-z0-9_./-]+)", config)
                if m is None:
                    m = re.search(rb"nodes/([A-Za-z0-9_-]+)/main\.py", Path(f"/proc/{pid}/cmdline").read_bytes())
                name = m.group(1).decode() if m else None
            except OSError:
                return None  # gone, or not readable yet: ask again next time
            if name is None:
                return None  # not a node, or a node's process caught between fork and exec: ask again
            self._names[pid] = name
        return self._names[pid]

    def sample(self, sid: int) -> None:
        now = time.time()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                pid = int(stat.parent.name)
                if pid in self.extra:
                    name = self.extra[pid]
                elif int(fields[3]) != sid:
                    continue
                else:  # the session's leader, when not a node, is `dora run`: the daemon and the coordinator
                    name = self._name(pid) or ("dora" if pid == sid else None)
                if name is None:
                    continue
                self._cpu.setdefault((pid, name), []).append((now, int(fields[11]) + int(fields[12])))
                if name == "dora" or pid in self.extra:
                    continue  # not a node: CPU only
                status = (stat.parent / "status").read_text()
            except (OSError, ValueError, IndexError):
                continue
            m = re.search(r"VmRSS:\s+(\d+) kB", status)
            if m:
                self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), int(m.group(1)) / 1024)
            try:
                m = re.search(r"^Pss:\s+(\d+) kB", (stat.parent / "smaps_rollup").read_text(), re.M)
            except OSError:
                m = None
            if m:
                self.peak_pss_mb[name] = max(self.peak_pss_mb.get(name, 0.0), int(m.group(1)) / 1024)

    def cpu_percent(self, since_unix_s: float | None = None) -> dict[str, float]:
        """CPU time per name as % of one core, from the first sample at or after ``since_unix_s`` (e.g. the
        first goal: model loading and exports left out) to the last; processes of one name are summed."""
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[str, float] = {}
        for (_, name), samples in list(self._cpu.items()):
            window = [s for s in samples if since_unix_s is None or s[0] >= since_unix_s]
            if len(window) < 2 or window[-1][0] <= window[0][0]:
                continue
            (t0, c0), (t1, c1) = window[0], window[-1]
            out[name] = out.get(name, 0.0) + 100.0 * (c1 - c0) / tick / (t1 - t0)
        return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}

    def _run(self, sid: int) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.sample(sid)
            except Exception:  # noqa: BLE001 - a process vanishing mid-scan must not end the sampling
                continue


def run_dataflow(path: str | Path, stop_after_s: float, log_path: str | Path | None = None,
                 extra_env: Mapping[str, str] | None = None, grace_s: float = 60.0,
                 until: Callable[[str], bool] | None = None, linger_s: float = 0.0,
                 memory: SessionMemory | None = None) -> RunResult:
    """``dora run PATH --stop-after Ns``; everything it started is killed if it outlives ``grace_s``.

    With ``until`` (called with the log so far), ``stop_after_s`` is a deadline, not a window: the run is
    stopped (Ctrl-C, so every node gets its STOP event) ``linger_s`` after ``until(log)`` first holds -- a slow start on a loaded
    machine only makes the wait longer.  ``RunResult.condition_met`` says whether it held in time.
    """
    env = {**os.environ, **(extra_env or {})}
    # an installed `so101-deploy` may run from a venv that is not activated: its dora, and the python
    # dora starts the nodes with, are the ones next to this interpreter
    here = str(Path(sys.executable).parent)
    if here not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = here + os.pathsep + env.get("PATH", "")
    cmd = [dora_executable(env["PATH"]), "run", str(path), "--stop-after", f"{int(round(stop_after_s))}s"]
    t0 = time.monotonic()
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: polling `until` must not block on output
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, cwd=str(Path(path).parent))
    if memory is not None:
        memory.start(proc.pid)
    met = None
    try:
        if until is not None:
            met = False
            while proc.poll() is None and time.monotonic() - t0 < stop_after_s:
                log.flush()
                log.seek(0)
                so_far = log.read()
                log.seek(0, os.SEEK_END)
                if until(so_far):
                    met = True
                    end = time.monotonic() + linger_s
                    while proc.poll() is None and time.monotonic() < end:
                        time.sleep(0.1)
                    if proc.poll() is None:
                        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: dora stops the dataflow
                    break
                time.sleep(0.2)
        try:
            proc.wait(timeout=max(1.0, stop_after_s + grace_s - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            kill_session(proc.pid)
            proc.wait()
            log.write(f"\n[so101-deploy] dora run did not stop within {stop_after_s + grace_s:.0f} s; killed\n")
    finally:
        if memory is not None:
            memory.stop()
        kill_session(proc.pid)  # dora puts each node in a process group of its own, but in this session
        log.seek(0)
        out = log.read()
        log.close()
    if log_path is not None:
        Path(log_path).write_text(out)
    return RunResult(proc.returncode, out, time.monotonic() - t0, met)


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (``dora run`` and the nodes it started; each node has a
    process group of its own, so killing the group of ``dora run`` alone would leave them behind)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # after the command name: state, ppid, pgrp, session
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
