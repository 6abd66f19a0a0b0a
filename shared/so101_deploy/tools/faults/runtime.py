"""The fault matrix's runtime: constants, the outcome of a scenario, processes (sessions, CPU hog),
the software bus and its write log, ``dora run`` and the servo's state log."""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from so101_deploy.arm.calibration import EXAMPLE_PATH, RAD_PER_STEP, Calibration
from so101_deploy.core.dataflow import dora_executable

IDS = (1, 2, 3, 4, 5, 6)
CAL = Calibration.load(EXAMPLE_PATH)
START_STEPS = np.round((CAL.range_min + CAL.range_max) / 2.0)  # the software bus starts at mid-range
# the scenarios' short settings: a quick hold, a short park to a rest pose near the start pose
HOLD_S = 0.5
PARK_AFTER_S = 2.0
PARK_SPEED_RAD_S = 0.3
REST_POSE_RAD = (0.2, -0.2, 0.2, 0.2, 0.0, 0.8)
MAX_STEP_RAD = 0.05  # dataflow.yml's servo SO101_MAX_STEP_RAD
STEP_BOUND = MAX_STEP_RAD / RAD_PER_STEP + 1.0  # per write, in steps (+1: both ends rounded)
PARK_STEP = PARK_SPEED_RAD_S * 0.1 / RAD_PER_STEP + 1.0  # one park write (the node caps a tick at 0.1 s)
DEADLINE_UP_S = 90.0  # a run is up (the servo node publishes) -- generous: a loaded 2-core machine


# --- outcome --------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """One row of the matrix."""

    name: str
    fault: str
    expected: str
    observed: str = ""
    time_to_safe_s: float | None = None
    time_what: str = ""  # what ``time_to_safe_s`` measures
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    known_issue: str | None = None  # a known, reported gap (the test is xfail with this reason)
    wall_s: float = 0.0
    folder: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    def check(self, ok: Any, what: str) -> bool:
        if not ok:
            self.failures.append(what)
        return bool(ok)

    def summary(self) -> str:
        head = f"{self.name}: {'PASS' if self.passed else 'FAIL'}"
        if self.time_to_safe_s is not None:
            head += f" ({self.time_what} {self.time_to_safe_s:.3f} s)"
        lines = [head, f"  observed: {self.observed}"]
        lines += [f"  FAILED: {f}" for f in self.failures]
        lines += [f"  note: {n}" for n in self.notes]
        if self.known_issue:
            lines.append(f"  known issue: {self.known_issue}")
        lines.append(f"  artifacts: {self.folder}")
        return "\n".join(lines)


class ScenarioError(RuntimeError):
    """A deadline passed: the scenario cannot go on (recorded as a failure)."""


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.02) -> Any:
    """The predicate's first truthy value; :class:`ScenarioError` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ScenarioError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


# --- processes ------------------------------------------------------------------------------------

def _stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 5.0) -> None:
    """Stop a process group we started (``start_new_session``) by its id, then reap the leader."""
    for s in (sig, signal.SIGKILL):
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait_s)
            # the leader is gone; members may linger (a killed `dora run` leaves its nodes)
            if s == signal.SIGKILL or not _group_alive(proc.pid):
                break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, session) of a process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[3])


def session_pids(sid: int) -> list[tuple[int, str]]:
    """(pid, cmdline) of the live processes in a session.  ``dora run`` started as a session leader keeps
    its nodes in its session (dora 1.1 gives each node a process group of its own), also after it died."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        st = _proc_stat(int(d.name))
        if st is None or st[2] != sid or st[0] == "Z":
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out.append((int(d.name), cmd))
    return out


@contextlib.contextmanager
def cpu_hog(n: int = 2) -> Iterator[list[int]]:
    """``n`` busy-looping Python processes (one per core here), stopped by their pids at the end."""
    procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"], start_new_session=True)
             for _ in range(n)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            _stop_group(p, signal.SIGKILL)


class BusLog:
    """The software bus's write log (JSONL), read incrementally (also any JSONL file with a "t" per row)."""

    def __init__(self, path: Path, stamped: bool = False):
        self.path = path
        self.stamped = stamped  # rows carry the sender's stamp_ns: that is their time, "t_recv" the receipt
        self._rows: list[dict] = []
        self._offset = 0
        self._partial = b""
        self._gi = 0  # rows already grouped into goal batches
        self._batches: list[tuple[float, np.ndarray]] = []
        self._cur: dict[int, int] = {}
        self._last_id: int | None = None
        self._last_t: float | None = None

    def rows(self) -> list[dict]:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            self._offset += len(data)
            data = self._partial + data
            *lines, self._partial = data.split(b"\n")
            new = [json.loads(line) for line in lines if line.strip()]
            if self.stamped:
                for r in new:
                    r["t_recv"], r["t"] = r["t"], r["stamp_ns"] / 1e9
            self._rows += new
        return self._rows

    def after(self, t: float) -> list[dict]:
        """The rows from time ``t`` on (rows are in time order: one writer appends them)."""
        rows = self.rows()
        return rows[bisect.bisect_left(rows, t, key=lambda r: r["t"]):]

    def goals(self, after_t: float = 0.0) -> list[dict]:
        return [r for r in self.rows() if r["name"] == "Goal_Position" and r["t"] >= after_t]

    def torque(self, after_t: float = 0.0) -> list[dict]:
        return [r for r in self.rows() if r["name"] == "Torque_Enable" and r["t"] >= after_t]

    def torque_on_at(self, after_t: float = 0.0) -> float | None:
        """When torque was first enabled on every servo (after ``after_t``)."""
        first = {}
        for r in self.torque(after_t):
            if r["value"] == 1:
                first.setdefault(r["id"], r["t"])
        return max(first.values()) if len(first) == len(IDS) else None

    def all_off_at(self, after_t: float = 0.0) -> float | None:
        """The time by which the last Torque_Enable written to each servo (after ``after_t``) is 0."""
        last: dict[int, dict] = {}
        for r in self.torque(after_t):
            last[r["id"]] = r
        if len(last) < len(IDS) or any(r["value"] != 0 for r in last.values()):
            return None
        return max(r["t"] for r in last.values())

    def pose_steps(self, before_t: float | None = None) -> np.ndarray | None:
        """The last goal written to each servo (steps, ids 1-6), optionally before a time."""
        last = {}
        for r in self.goals():
            if before_t is None or r["t"] < before_t:
                last[r["id"]] = r["value"]
        return np.array([last[i] for i in IDS], float) if len(last) == len(IDS) else None

    def goal_batches(self, after_t: float = 0.0) -> list[tuple[float, np.ndarray]]:
        """Goal writes as (t, steps of ids 1-6), one per sync write (a write starts again at a lower id;
        an id it missed keeps its last value); t is the write's last row.  Grouped incrementally."""
        rows = self.rows()
        for r in rows[self._gi:]:
            if r["name"] != "Goal_Position":
                continue
            if self._last_id is not None and r["id"] <= self._last_id:
                self._flush()
            self._cur[r["id"]] = r["value"]
            self._last_id, self._last_t = r["id"], r["t"]
        self._gi = len(rows)
        out = self._batches[bisect.bisect_left(self._batches, after_t, key=lambda b: b[0]):]
        if self._last_t is not None and self._last_t >= after_t and len(self._cur) == len(IDS):
            out = out + [(self._last_t, np.array([self._cur[i] for i in IDS], float))]  # the newest, maybe partial
        return out

    def _flush(self) -> None:
        if len(self._cur) == len(IDS):
            self._batches.append((self._last_t, np.array([self._cur[i] for i in IDS], float)))


class Bus:
    """The software STS3215 bus in its own process group: ``so101-deploy emulate-bus``, or (``control``)
    the same emulator served by this module so that a scenario can move the arm (``set_present_steps``,
    as gravity does to a limp arm)."""

    def __init__(self, folder: Path, control: bool = False):
        self.folder = folder
        self.link = folder / "ttySO101"
        self.log = BusLog(folder / "bus_writes.jsonl")
        self.control_file = folder / "bus_control.json" if control else None
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Bus":
        if self.control_file is None:
            cmd = [sys.executable, "-m", "so101_deploy.tools.cli", "emulate-bus", "--link", str(self.link),
                   "--calibration", str(EXAMPLE_PATH), "--log", str(self.log.path)]
        else:
            cmd = [sys.executable, "-m", "so101_deploy.tools.faults", "--serve-bus", str(self.link),
                   str(self.log.path), str(self.control_file)]
        self.proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=open(self.folder / "bus.err", "w"))
        wait_for(lambda: (self.link.is_symlink() and os.path.exists(self.link)) or self.proc.poll() is not None,
                 60, "the software bus")
        if self.proc.poll() is not None:
            raise ScenarioError(f"the software bus exited ({self.proc.returncode}): "
                                f"{(self.folder / 'bus.err').read_text()[-500:]}")
        return self

    def set_present_steps(self, steps: dict[int, float]) -> None:
        """Move the (limp) arm: the bus process applies it within ~50 ms; returns once it has."""
        assert self.control_file is not None, "Bus(control=True) moves the arm"
        tmp = self.control_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in steps.items()}))
        tmp.rename(self.control_file)
        wait_for(lambda: not self.control_file.exists(), 10, "the bus to move the arm")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            _stop_group(self.proc, signal.SIGTERM)


def _serve_bus(link: str, log: str, control: str) -> int:
    """The emulated bus with a control file (``--serve-bus``): ``{"id": steps}`` moves the servos."""
    from so101_deploy.arm.emulator import EmulatedBus  # noqa: PLC0415

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    bus = EmulatedBus(link, calibration=str(EXAMPLE_PATH), log_path=log).start()
    path = Path(control)
    try:
        while not stop:
            if path.exists():
                steps = {int(k): float(v) for k, v in json.loads(path.read_text()).items()}
                bus.set_present_steps(steps)
                path.unlink()
            time.sleep(0.02)
    finally:
        bus.stop()
    return 0


class DoraRun:
    """``dora run FLOW`` as a session leader (its nodes stay in its session), output to a log file."""

    def __init__(self, flow: Path, stop_after_s: float = 180.0, extra_env: dict[str, str] | None = None):
        self.flow = flow.resolve()
        self.extra_env = extra_env or {}
        self.log_path = flow.parent / "dora.log"
        self.stop_after_s = stop_after_s
        self.proc: subprocess.Popen | None = None
        self.t_start = self.t_end = 0.0

    def __enter__(self) -> "DoraRun":
        env = dict(os.environ)
        here = str(Path(sys.executable).parent)  # the dora and python next to this interpreter
        env["PATH"] = here + os.pathsep + env.get("PATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.extra_env)
        self.t_start = time.time()
        self.proc = subprocess.Popen([dora_executable(env["PATH"]), "run", str(self.flow), "--stop-after",
                                      f"{int(self.stop_after_s)}s"], cwd=self.flow.parent, env=env,
                                     start_new_session=True, stdout=open(self.log_path, "w"),
                                     stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def exited(self) -> bool:
        if self.proc.poll() is not None:
            if not self.t_end:
                self.t_end = time.time()
            return True
        return False

    def wait(self, timeout_s: float, what: str = "dora run to exit") -> int:
        wait_for(self.exited, timeout_s, what, poll_s=0.05)
        return self.proc.returncode

    def node_pid(self, script: str) -> int | None:
        """The pid of the node whose command line names ``script`` (e.g. ``nodes/policy/main.py``)."""
        for pid, cmd in session_pids(self.pid):
            if script in cmd and pid != self.pid:
                return pid
        return None

    def kill_node(self, script: str, timeout_s: float = 30.0) -> tuple[int, float]:
        """``kill -9`` that node; returns (pid, time.time() of the kill)."""
        pid = wait_for(lambda: self.node_pid(script), timeout_s, f"the process of {script}")
        t = time.time()
        os.kill(pid, signal.SIGKILL)
        return pid, t

    def interrupt(self, timeout_s: float = 60.0) -> int:
        """Ctrl-C: dora stops every node (STOP), then exits."""
        if not self.exited():
            os.killpg(self.pid, signal.SIGINT)
        return self.wait(timeout_s, "dora run to stop after Ctrl-C")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.exited()
            # every process of the run's session, by pid: `dora run` itself and its nodes (which have
            # process groups of their own, and outlive a killed `dora run`)
            for pid, _ in session_pids(self.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            wait_for(lambda: not session_pids(self.pid), 10, "the run's processes to go")


class StateLog:
    """The servo node's joint_state as a node of the run logged it (JSONL: state, torque, estop, events...);
    a row's time ``t`` is the servo's own stamp (sent right after the tick that decided the state), not
    when the logging node got it (``t_recv``: later, by how loaded the machine is)."""

    def __init__(self, path: Path):
        self.log = BusLog(path, stamped=True)

    def rows(self) -> list[dict]:
        return self.log.rows()

    def first(self, pred: Callable[[dict], bool], after_t: float = 0.0) -> dict | None:
        return next((r for r in self.log.after(after_t) if pred(r)), None)

    def last(self) -> dict | None:
        rows = self.rows()
        return rows[-1] if rows else None

    def final_hold(self) -> dict | None:
        """The first HOLD row after the last RUN row.  On a loaded machine a late action can make a brief
        HOLD while actions still flow (RUN again from the present pose); this is the hold that lasted."""
        rows = self.rows()
        last_run = max((i for i, r in enumerate(rows) if r["state"] == "run"), default=-1)
        return next((r for r in rows[last_run + 1:] if r["state"] == "hold"), None)

    def hold_lasting(self, span_s: float) -> dict | None:
        """The final hold once it has lasted ``span_s`` (every row since is HOLD), else None."""
        h = self.final_hold()
        if h is None:
            return None
        since = self.log.after(h["t"])
        return h if since[-1]["t"] - h["t"] >= span_s and all(r["state"] == "hold" for r in since) else None
