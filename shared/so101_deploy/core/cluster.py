"""A dora 1.1 cluster on this machine: one coordinator and one daemon per machine id, on loopback.

``dora run`` (core/dataflow.py) runs a flow in one process with no coordinator and refuses a flow with
``deploy:`` sections.  A multi-machine flow (``dataflow.two-machines.yml``) runs under a coordinator, with
one ``dora daemon --machine-id ID`` per machine, started with ``dora start``.  :class:`LocalCluster`
starts exactly that on one machine -- the coordinator on a free port with an in-memory store, each
daemon with its own machine id, local listen port and working folder (its nodes' logs land under it) --
so the tests and the benchmark run the real two-machine flow, and stops every process it started by
process group, even when the caller fails.  Zenoh multicast scouting is off (``--zenoh-no-multicast``):
the daemons find each other through the coordinator, and runs of other users on this host stay apart.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from so101_deploy.core.dataflow import DataflowError, dora_executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    """Poll ``condition`` until it holds; :class:`DataflowError` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise DataflowError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class LocalCluster:
    """Coordinator + one daemon per id in ``machines``, all on 127.0.0.1, working under ``root``.

    Use as a context manager; ``start_dataflow`` / ``node_pids`` / ``machine_of`` / ``node_log`` /
    ``kill_machine`` / ``stop_dataflow`` are what the tests and the benchmark need."""

    machines: Sequence[str]
    root: Path
    env: Mapping[str, str] | None = None
    start_timeout_s: float = 60.0
    coordinator_port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    dataflows: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(set(self.machines)) != len(self.machines) or not self.machines:
            raise DataflowError(f"LocalCluster: expected distinct machine ids, got {list(self.machines)}")
        for m in self.machines:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", m):
                raise DataflowError(f"LocalCluster: machine id {m!r} must be letters, digits, '-' or '_'")
        self.root = Path(self.root)
        self._env = {**os.environ, **(self.env or {})}
        here = str(Path(sys.executable).parent)  # the dora (and python) of this interpreter's venv
        if here not in self._env.get("PATH", "").split(os.pathsep):
            self._env["PATH"] = here + os.pathsep + self._env.get("PATH", "")
        self._dora = dora_executable(self._env["PATH"])

    # --- lifetime ---------------------------------------------------------------------------------
    def __enter__(self) -> "LocalCluster":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self, key: str, args: list[str], cwd: Path) -> subprocess.Popen:
        cwd.mkdir(parents=True, exist_ok=True)
        log = open(cwd / f"{key}.log", "w")  # noqa: SIM115 - closed with the process (it owns the fd copy)
        proc = subprocess.Popen([self._dora, *args], cwd=str(cwd), env=self._env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[key] = proc
        return proc

    def start(self) -> None:
        self.coordinator_port = self.coordinator_port or free_port()
        coord = self._spawn("coordinator", ["coordinator", "--port", str(self.coordinator_port), "--store", "memory"],
                            self.root / "coordinator")

        def listening() -> bool:
            if coord.poll() is not None:
                raise DataflowError(f"the dora coordinator exited with {coord.returncode} "
                                    f"(see {self.root / 'coordinator' / 'coordinator.log'})")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.coordinator_port)) == 0

        wait_for(listening, self.start_timeout_s, f"the dora coordinator on port {self.coordinator_port}")
        for m in self.machines:
            self._spawn(m, ["daemon", "--machine-id", m, "--coordinator-addr", "127.0.0.1",
                            "--coordinator-port", str(self.coordinator_port),
                            "--local-listen-port", str(free_port()), "--zenoh-no-multicast"], self.root / m)
        wait_for(lambda: set(self.connected_machines()) >= set(self.machines), self.start_timeout_s,
                 f"daemons {list(self.machines)} to register with the coordinator")

    def close(self) -> None:
        """Stop the dataflows (politely, bounded), then every process group this cluster started."""
        coord = self.procs.get("coordinator")
        if coord is not None and coord.poll() is None:
            for name in self.dataflows:
                self.stop_dataflow(name, timeout_s=20)
        for key in [k for k in self.procs if k != "coordinator"] + ["coordinator"]:
            proc = self.procs.get(key)
            if proc is None:
                continue
            self._kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                self._kill_group(proc, signal.SIGKILL)
                proc.wait(10)

    @staticmethod
    def _kill_group(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # --- the CLI against this coordinator ---------------------------------------------------------
    def cli(self, *args: str, timeout_s: float = 60.0, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([self._dora, *args, "--coordinator-port", str(self.coordinator_port)],
                              capture_output=True, text=True, timeout=timeout_s, env=self._env,
                              cwd=str(cwd or self.root))

    def connected_machines(self) -> list[str]:
        """Machine ids of the daemons the coordinator lists (``dora cluster status``)."""
        res = self.cli("cluster", "status", timeout_s=30)
        return [m.group(1) for m in re.finditer(r"^(\S+)-[0-9a-f]{8}-[0-9a-f-]+\s", res.stdout, re.M)]

    def start_dataflow(self, path: str | Path, name: str, timeout_s: float = 180.0) -> None:
        """``dora start PATH --name NAME --detach``; a refused start is a DataflowError with dora's reason."""
        res = self.cli("start", str(path), "--name", name, "--detach", timeout_s=timeout_s,
                       cwd=Path(path).resolve().parent)
        if res.returncode != 0:
            lines = [ln for ln in (res.stdout + res.stderr).splitlines()
                     if ln.strip() and not re.match(r"\s+(\d+:|at )", ln)]
            raise DataflowError(f"dora start {Path(path).name} failed: " + " | ".join(lines[:12]))
        self.dataflows.append(name)

    def stop_dataflow(self, name: str, timeout_s: float = 60.0) -> int:
        try:
            return self.cli("stop", "--name", name, timeout_s=timeout_s).returncode
        except subprocess.TimeoutExpired:
            return -1

    def node_pids(self, dataflow: str) -> dict[str, int]:
        """node id -> pid of the running nodes of ``dataflow`` (``dora node list``)."""
        res = self.cli("node", "list", "--dataflow", dataflow, timeout_s=30)
        out = {}
        for line in res.stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                out[parts[0]] = int(parts[2])
        return out

    def daemon_pid(self, machine: str) -> int:
        return self.procs[machine].pid

    def machine_of(self, pid: int) -> str | None:
        """The machine id of the daemon that started process ``pid`` (its parent chain), or None."""
        daemons = {p.pid: m for m, p in self.procs.items() if m in self.machines}
        seen = 0
        while pid and pid > 1 and seen < 16:
            if pid in daemons:
                return daemons[pid]
            pid, seen = parent_pid(pid) or 0, seen + 1
        return None

    def node_log(self, machine: str, node: str) -> str:
        """What node ``node`` printed, from the log files of the daemon of ``machine``
        (``<its folder>/_work/<session>/out/<dataflow>/log_<node>.jsonl``); '' before any."""
        lines = []
        for path in sorted((self.root / machine).glob(f"_work/*/out/*/log_{node}.jsonl")):
            for raw in path.read_text(errors="replace").splitlines():
                try:
                    lines.append(str(json.loads(raw).get("msg", "")))
                except json.JSONDecodeError:
                    continue  # a line being written
        return "\n".join(lines)

    def kill_machine(self, machine: str) -> list[int]:
        """SIGKILL the daemon of ``machine`` and the nodes it started (the machine is gone); returns the
        node pids that were killed."""
        daemon = self.procs[machine]
        nodes = [p for p in _children(daemon.pid)]
        self._kill_group(daemon, signal.SIGKILL)
        for pid in nodes:  # each node has a process group of its own
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        daemon.wait(10)
        return nodes


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out
