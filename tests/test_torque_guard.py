"""Process death releases torque: the torque guard (so101_deploy.arm.torque_guard).

* dora: the real servo node (nodes/servo/main.py) with tests/nodes/goal_source.py under a real
  `dora run`, the software bus as its own process: kill -9 of the servo node, kill -9 of `dora run`
  -> Torque_Enable=0 on all six within 1 s of the kill (times from the emulator's write log, which
  stamps every accepted write with time.time()); a clean stop -> the node releases once, the guard
  exits without writing.
* the guard alone against the in-process software bus: its stdin closed -> torque off; "released"
  -> nothing written; its parent killed while a forked child keeps the pipe open -> torque off
  (the getppid poll); a guard that cannot start keeps torque off.
Every wait has a deadline; no check rests on a fixed sleep.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from so101_deploy.arm.emulator import EmulatedBus
from so101_deploy.arm.torque_guard import TorqueGuard, TorqueGuardError

from conftest import stop_group
from test_servo_node import (CAL, CAL_PATH, IDS, DoraRun, _servo_pid, emulator, js_rows, read_log,  # noqa: F401
                             wait_for, write_dataflow)

pytestmark = pytest.mark.integration

KILL_TO_TORQUE_OFF_S = 1.0


def torque_off_at(rows: list[dict], since: float) -> float | None:
    """The time by which every servo had Torque_Enable=0 written at or after ``since`` (None: not yet)."""
    firsts = []
    for servo_id in IDS:
        t = next((r["t"] for r in rows if r["id"] == servo_id and r["name"] == "Torque_Enable" and r["value"] == 0
                  and r["t"] >= since), None)
        if t is None:
            return None
        firsts.append(t)
    return max(firsts)


def torque_was_on(rows: list[dict]) -> bool:
    return all(any(r["id"] == i and r["name"] == "Torque_Enable" and r["value"] == 1 for r in rows) for i in IDS)


def assert_ends_released(rows: list[dict]) -> None:
    for servo_id in IDS:
        torque = [r["value"] for r in rows if r["id"] == servo_id and r["name"] == "Torque_Enable"]
        assert torque and torque[-1] == 0, f"id {servo_id}: torque writes {torque}"


def _pids(*needles: str) -> list[int]:
    """Processes whose command line holds every needle."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if all(n in cmd for n in needles) and state != "Z":  # a zombie has exited (nobody reaped it yet)
            found.append(int(d.name))
    return found


def guard_pids(link: Path) -> list[int]:
    return _pids("so101_deploy.arm.torque_guard", str(link))


@pytest.fixture
def no_stray_guards():
    """Kill (by pid) any torque guard a failed test left behind on its link."""
    links = []
    yield links.append
    for link in links:
        for pid in guard_pids(link):
            os.kill(pid, signal.SIGKILL)


def start_flow(tmp_path, emulator, venv_bin, stop_after_s: int = 90):
    link, log = emulator()
    flow, out = write_dataflow(tmp_path, link, {})
    run = DoraRun(flow, venv_bin, stop_after_s=stop_after_s)
    return link, log, out, run


def wait_until_driving(link: Path, log: Path, out: Path) -> tuple[int, list[int]]:
    """The node publishes joint_state with torque on and its guard runs; returns (node pid, guard pids)."""
    wait_for(lambda: len(js_rows(out)) > 10, 90, "joint_state from the servo node")
    assert torque_was_on(read_log(log))
    node = wait_for(lambda: _servo_pid(link), 10, "the servo node's pid")
    guards = wait_for(lambda: guard_pids(link), 10, "the torque guard's pid")
    assert len(guards) == 1, guards
    return node, guards


def kill_and_measure(pid: int, log: Path) -> tuple[float, float]:
    """SIGKILL ``pid``; returns (the kill's time.time(), seconds until all six had Torque_Enable=0)."""
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    t_off = wait_for(lambda: torque_off_at(read_log(log), t_kill), 20, "Torque_Enable=0 on all six after the kill")
    return t_kill, t_off - t_kill


@pytest.mark.timeout(180)
def test_kill_9_of_the_servo_node_releases_torque_within_1s(tmp_path, emulator, venv_bin, no_stray_guards):
    link, log, out, run = start_flow(tmp_path, emulator, venv_bin)
    no_stray_guards(link)
    with run:
        node, _ = wait_until_driving(link, log, out)
        _, dt = kill_and_measure(node, log)
        print(f"kill -9 servo node -> torque off on all six: {dt * 1e3:.0f} ms")
        assert dt < KILL_TO_TORQUE_OFF_S, f"torque off {dt:.3f} s after the kill"
        wait_for(lambda: not guard_pids(link), 10, "the guard to exit after its release")
    assert_ends_released(read_log(log))


@pytest.mark.timeout(180)
def test_kill_9_of_dora_run_releases_torque_within_1s(tmp_path, emulator, venv_bin, no_stray_guards):
    link, log, out, run = start_flow(tmp_path, emulator, venv_bin)
    no_stray_guards(link)
    with run:
        node, _ = wait_until_driving(link, log, out)
        t_kill, dt = kill_and_measure(run.proc.pid, log)  # dora run only: the nodes are their own groups
        print(f"kill -9 dora run -> torque off on all six: {dt * 1e3:.0f} ms")
        assert dt < KILL_TO_TORQUE_OFF_S, f"torque off {dt:.3f} s after the kill"
        # dora's orphan guard ends the node within ~0.5 s; the torque guard ends after it
        wait_for(lambda: not _servo_pid(link), 10, "the orphaned servo node to end")
        wait_for(lambda: not guard_pids(link), 10, "the torque guard to end")
    rows = read_log(log)
    assert_ends_released(rows)
    # who released: the node itself (its release writes Lock=0 too) or, when dora's orphan guard
    # killed it first, the torque guard (Torque_Enable only)
    by_node = all(any(r["id"] == i and r["name"] == "Lock" and r["value"] == 0 and r["t"] >= t_kill for r in rows)
                  for i in IDS)
    print(f"  released by: {'the node itself (orphan path)' if by_node else 'the torque guard'}")


@pytest.mark.timeout(180)
def test_a_clean_stop_releases_once_and_the_guard_writes_nothing(tmp_path, emulator, venv_bin, no_stray_guards):
    link, log, out, run = start_flow(tmp_path, emulator, venv_bin, stop_after_s=6)
    no_stray_guards(link)
    with run:
        wait_until_driving(link, log, out)
        text, _ = run.proc.communicate(timeout=120)  # --stop-after: STOP to every node
    assert run.proc.returncode == 0, text[-3000:]
    assert "torque released on all servos" in text
    assert "[torque_guard]" not in text
    wait_for(lambda: not guard_pids(link), 10, "the guard to exit after 'released'")
    rows = read_log(log)
    assert_ends_released(rows)
    last_on = max(n for n, r in enumerate(rows) if r["name"] == "Torque_Enable" and r["value"] == 1)
    tail = rows[last_on + 1:]
    tail = tail[next(n for n, r in enumerate(tail) if r["name"] == "Torque_Enable"):]  # goals before the release
    # the node's release writes Torque_Enable=0 twice to each servo (broadcast, then its own write) and
    # Lock=0 once; a release by the guard too would add two more Torque_Enable=0 per servo
    assert {r["name"] for r in tail} == {"Torque_Enable", "Lock"} and all(r["value"] == 0 for r in tail)
    for servo_id in IDS:
        mine = [r["name"] for r in tail if r["id"] == servo_id]
        assert mine.count("Torque_Enable") == 2 and mine.count("Lock") == 1, (servo_id, mine)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env_pids(needle: str) -> list[int]:
    """Processes whose environment holds ``needle`` (the nodes of one test's dataflow)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle.encode() in (d / "environ").read_bytes():
                    found.append(int(d.name))
            except OSError:
                continue
    return found


@pytest.mark.timeout(180)
def test_kill_9_of_the_daemon_releases_torque_within_1s(tmp_path, emulator, venv_bin, no_stray_guards):
    """`dora coordinator` + `dora daemon` (what `dora up` starts; here on free ports, store in memory,
    no multicast, so nothing is shared with other dora users of this machine) + `dora start`."""
    link, log = emulator()
    no_stray_guards(link)
    flow, out = write_dataflow(tmp_path, link, {})
    cport, lport = _free_port(), _free_port()
    dora = str(venv_bin / "dora")
    procs = []

    def spawn(*args):
        procs.append(subprocess.Popen([dora, *args], cwd=tmp_path, start_new_session=True,
                                      stdout=open(tmp_path / f"{args[0]}.log", "w"), stderr=subprocess.STDOUT))
        return procs[-1]

    try:
        spawn("coordinator", "--port", str(cport), "--store", "memory", "--quiet")
        daemon = spawn("daemon", "--coordinator-port", str(cport), "--local-listen-port", str(lport),
                       "--zenoh-no-multicast")
        wait_for(lambda: "Connected to dora-coordinator" in (tmp_path / "daemon.log").read_text(), 60,
                 "the daemon to register with the coordinator")
        res = subprocess.run([dora, "start", str(flow), "--coordinator-port", str(cport), "--detach"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        wait_until_driving(link, log, out)
        t_kill, dt = kill_and_measure(daemon.pid, log)
        print(f"kill -9 dora daemon -> torque off on all six: {dt * 1e3:.0f} ms")
        assert dt < KILL_TO_TORQUE_OFF_S, f"torque off {dt:.3f} s after the kill"
        wait_for(lambda: not _servo_pid(link), 10, "the orphaned servo node to end")
        wait_for(lambda: not guard_pids(link), 10, "the torque guard to end")
    finally:
        for pid in _env_pids(str(tmp_path)):  # the dataflow's nodes (the goal source may stay blocked)
            os.kill(pid, signal.SIGKILL)
        for proc in procs:
            stop_group(proc, wait_s=10)
    rows = read_log(log)
    assert_ends_released(rows)
    by_node = all(any(r["id"] == i and r["name"] == "Lock" and r["value"] == 0 and r["t"] >= t_kill for r in rows)
                  for i in IDS)
    print(f"  released by: {'the node itself (orphan path)' if by_node else 'the torque guard'}")


# --- the guard alone ----------------------------------------------------------------------------------------

@pytest.fixture
def bus(tmp_path):
    log = tmp_path / "writes.jsonl"
    with EmulatedBus(tmp_path / "tty", calibration=CAL, log_path=log) as emu:
        for s in emu.servos.values():
            s.set("Torque_Enable", 1)
        yield emu, log


def test_guard_releases_torque_when_its_pipe_closes(bus):
    emu, log = bus
    guard = TorqueGuard(emu.path, 1_000_000, IDS).start()
    try:
        assert all(emu.torque_enabled().values())
        t0 = time.time()
        guard.proc.stdin.close()  # what the kernel does when the node dies
        t_off = wait_for(lambda: torque_off_at(read_log(log), t0), 10, "torque off after EOF")
        assert guard.proc.wait(10) == 0
    finally:
        guard._kill()
    assert not any(emu.torque_enabled().values())
    rows = read_log(log)
    # broadcast first (all six at once), then each servo acknowledged
    assert [(r["id"], r["name"], r["value"]) for r in rows] == \
        [(i, "Torque_Enable", 0) for i in IDS] + [(i, "Torque_Enable", 0) for i in IDS]
    print(f"guard alone: EOF -> torque off in {(t_off - t0) * 1e3:.1f} ms")


def test_guard_told_released_exits_without_writing(bus):
    emu, log = bus
    guard = TorqueGuard(emu.path, 1_000_000, IDS).start()
    guard.released()
    assert guard.proc.returncode == 0
    guard.released()  # idempotent
    assert guard.check()
    assert read_log(log) == [] and all(emu.torque_enabled().values())


def test_guard_notices_its_parent_gone_while_a_forked_child_holds_the_pipe(bus, tmp_path):
    """The pipe never reaches EOF (a fork of the parent holds its write end); the getppid poll acts."""
    emu, log = bus
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from so101_deploy.arm.torque_guard import TorqueGuard\n"
        f"g = TorqueGuard({emu.path!r}, 1_000_000, {IDS!r}).start()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    time.sleep(120); os._exit(0)\n"
        "print(g.proc.pid, child, flush=True)\n"
        "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        guard_pid, child = map(int, parent.stdout.readline().split())
        t0 = time.time()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        t_off = wait_for(lambda: torque_off_at(read_log(log), t0), 10, "torque off after the parent's death")
        wait_for(lambda: not _pids("so101_deploy.arm.torque_guard", emu.path), 10, "the guard to exit")
        os.kill(child, 0)  # the fork (holding the pipe) is still alive: it was the poll, not EOF
        print(f"guard alone, parent killed, pipe held open: torque off in {(t_off - t0) * 1e3:.0f} ms")
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)  # the fork is in the parent's group; the guard is not
        except ProcessLookupError:
            pass
    assert not any(emu.torque_enabled().values())


def test_a_guard_that_cannot_start_keeps_torque_off(bus, monkeypatch):
    emu, log = bus
    monkeypatch.setattr(TorqueGuard, "command", lambda self: [sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(TorqueGuardError, match="exited with code 3 before it was ready"):
        TorqueGuard(emu.path, 1_000_000, IDS).start()


def test_the_servo_node_refuses_to_start_without_its_guard(bus, monkeypatch, capsys):
    """No guard -> StartError before torque is enabled; SO101_TORQUE_GUARD=false runs without one."""
    import importlib.util

    emu, log = bus
    for s in emu.servos.values():
        s.set("Torque_Enable", 0)
    repo = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("servo_main_guard", repo / "nodes" / "servo" / "main.py")
    servo_main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(servo_main)
    monkeypatch.setattr(TorqueGuard, "command", lambda self: [sys.executable, "-c", "import sys; sys.exit(3)"])
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    env = {"SO101_PORT": emu.path, "SO101_CALIBRATION": str(CAL_PATH), "SO101_SERVO_REPLY_WINDOW_MS": "120"}
    try:
        assert servo_main.main(node=[], env=env) == 2
        assert "torque guard exited with code 3" in capsys.readouterr().err
        assert not any(r["name"] == "Torque_Enable" and r["value"] == 1 for r in read_log(log))
        # without the guard the node runs (an empty event stream: it starts, waits for a goal that never
        # comes, so torque is never enabled, then stops and releases)
        assert servo_main.main(node=[], env={**env, "SO101_TORQUE_GUARD": "false"}) == 0
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
    rows = read_log(log)
    assert any(r["name"] == "Lock" for r in rows)  # it configured the servos: it really started
    assert not any(r["name"] == "Torque_Enable" and r["value"] == 1 for r in rows)
    assert_ends_released(rows)


def test_the_guard_imports_nothing_heavy():
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", "import so101_deploy.arm.torque_guard"],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    assert res.returncode == 0, res.stderr
    modules = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines() if "|" in line}
    assert "scservo_sdk" in modules
    assert not modules & {"numpy", "torch", "mujoco", "cv2", "dora", "pyarrow"}, modules
    total_us = sum(int(line.split("|")[0].split(":")[1]) for line in res.stderr.splitlines()
                   if "|" in line and line.split("|")[0].split(":")[1].strip().isdigit())
    print(f"torque guard imports: {total_us / 1e3:.0f} ms")
