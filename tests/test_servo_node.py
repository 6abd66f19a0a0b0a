"""The servo node against the software bus through the real scservo_sdk.

* dora: the real node (nodes/servo/main.py) in a small dataflow with tests/nodes/goal_source.py and
  `so101-deploy emulate-bus` as a separate process; stopped normally and by SIGTERM.
* in-process: main() with a dora event source that raises (an exception inside the loop), and the
  node logic (ServoNode) under each injected fault and the e-stop.
Every check of what reached the arm is made on the emulator's write log.
"""

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from so101_deploy.arm.calibration import EXAMPLE_PATH, RAD_PER_STEP, Calibration
from so101_deploy.arm.emulator import EmulatedBus
from so101_deploy.arm.safety import JointLimits
from so101_deploy.arm.servo_node import ServoNode, ServoSettings
from so101_deploy.arm.servo_node import SETTINGS as SERVO_SETTINGS
from conftest import stop_group

REPO = Path(__file__).resolve().parent.parent
CAL_PATH = EXAMPLE_PATH
CAL = Calibration.example()
MAX_STEP_RAD = 0.05
IDS = [1, 2, 3, 4, 5, 6]


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def assert_goals_safe(rows: list[dict], skip_ids=()) -> int:
    """Every Goal_Position written is inside the limits and within one step of the goal before it."""
    limits = JointLimits.from_model().intersect(JointLimits(*CAL.limits_rad()))
    bound_steps = MAX_STEP_RAD / RAD_PER_STEP + 1.0  # +1: both ends are rounded to whole steps
    count = 0
    for k, servo_id in enumerate(IDS):
        if servo_id in skip_ids:
            continue
        goals = [r["value"] for r in rows if r["id"] == servo_id and r["name"] == "Goal_Position"]
        assert goals, f"no goal written to id {servo_id}"
        steps = np.array(goals, dtype=float)
        rad = np.array([CAL.steps_to_rad(np.full(6, s))[k] for s in steps])
        tol = RAD_PER_STEP
        assert np.all(rad >= limits.lower_rad[k] - tol) and np.all(rad <= limits.upper_rad[k] + tol), \
            f"id {servo_id}: goal outside limits: {rad.min():.3f}..{rad.max():.3f}"
        jumps = np.abs(np.diff(steps))
        assert jumps.max(initial=0) <= bound_steps, f"id {servo_id}: a goal jumped {jumps.max()} steps"
        count += len(goals)
    return count


def assert_torque_released_last(rows: list[dict], ids=IDS) -> None:
    for servo_id in ids:
        torque = [(n, r["value"]) for n, r in enumerate(rows) if r["id"] == servo_id and r["name"] == "Torque_Enable"]
        goals = [n for n, r in enumerate(rows) if r["id"] == servo_id and r["name"] == "Goal_Position"]
        assert torque and torque[-1][1] == 0, f"id {servo_id}: torque not released (writes {torque})"
        assert not goals or goals[-1] < torque[-1][0], f"id {servo_id}: a goal was written after the release"


def released(rows: list[dict]) -> bool:
    """Torque was on, and the last Torque_Enable written to every servo is 0."""
    for servo_id in IDS:
        torque = [r["value"] for r in rows if r["id"] == servo_id and r["name"] == "Torque_Enable"]
        if 1 not in torque or torque[-1] != 0:
            return False
    return True


def assert_slow_start(rows: list[dict]) -> None:
    """Goal_Position := the present pose before torque on, for every servo."""
    for m in CAL.motors:
        mine = [r for r in rows if r["id"] == m.id and r["name"] in ("Goal_Position", "Torque_Enable")]
        first_on = next(n for n, r in enumerate(mine) if r["name"] == "Torque_Enable" and r["value"] == 1)
        before = [r["value"] for r in mine[:first_on] if r["name"] == "Goal_Position"]
        assert before == [round((m.range_min + m.range_max) / 2)], f"{m.name}: goals before torque on {before}"


@pytest.fixture
def emulator(tmp_path, venv_bin):
    """`so101-deploy emulate-bus` as its own process group; yields (link, write log); killed afterwards."""
    procs = []

    def start(*flags):
        link, log = tmp_path / "ttySO101", tmp_path / "writes.jsonl"
        proc = subprocess.Popen([str(venv_bin / "so101-deploy"), "emulate-bus", "--link", str(link), "--log", str(log),
                                 "--calibration", str(CAL_PATH), *flags], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_for(lambda: link.is_symlink() and os.path.exists(link), 30, "the emulated bus")
        return link, log

    yield start
    for proc in procs:
        stop_group(proc)


def write_dataflow(tmp_path: Path, link: Path, source_env: dict) -> tuple[Path, Path]:
    out = tmp_path / "joint_state.jsonl"
    flow = {"nodes": [
        {"id": "source", "path": str(REPO / "tests" / "nodes" / "goal_source.py"),
         "env": {"SO101_TEST_OUT": str(out), **source_env},
         "inputs": {"tick": "dora/timer/millis/20", "joint_state": "servo/joint_state"},
         "outputs": ["goal", "estop"]},
        {"id": "servo", "path": str(REPO / "nodes" / "servo" / "main.py"),
         "env": {"SO101_PORT": str(link), "SO101_CALIBRATION": str(CAL_PATH), "SO101_SERVO_WATCHDOG_S": "0.3",
                 "SO101_MAX_STEP_RAD": str(MAX_STEP_RAD), "SO101_SERVO_REPLY_WINDOW_MS": "120"},
         "inputs": {"goal": {"source": "source/goal", "queue_size": 1}, "estop": "source/estop",
                    "tick": {"source": "dora/timer/millis/20", "queue_size": 1}},
         "outputs": ["joint_state"]},
    ]}
    path = tmp_path / "servo_test.yml"
    path.write_text(yaml.safe_dump(flow))
    return path, out


class DoraRun:
    """`dora run` in its own process group; always killed at exit."""

    def __init__(self, path: Path, venv_bin: Path, stop_after_s: int = 60):
        self.proc = subprocess.Popen([str(venv_bin / "dora"), "run", str(path), "--stop-after", f"{stop_after_s}s"],
                                     cwd=path.parent, start_new_session=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)

    def __enter__(self):
        return self

    def stop(self, timeout_s: float = 30) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C: dora stops the dataflow (STOP to each node)
        out, _ = self.proc.communicate(timeout=timeout_s)
        return out

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate(timeout=10)


def js_rows(path: Path) -> list[dict]:
    return read_log(path)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_dataflow_moves_safely_holds_on_watchdog_and_releases_torque_on_stop(tmp_path, emulator, venv_bin):
    link, log = emulator()
    flow, out = write_dataflow(tmp_path, link, {"SO101_GOAL_STOP_AFTER_S": "2.0"})
    with DoraRun(flow, venv_bin) as run:
        # goals for 2 s after the node is up, then none: the watchdog (0.3 s) must hold
        def late_watchdog_hold():  # after the goals stop (a hold right at start-up, before goals, is fine too)
            rows = js_rows(out)
            return rows and any("watchdog_hold" in r["events"] and r["stamp_ns"] > rows[0]["stamp_ns"] + 2.0e9
                                for r in rows)

        wait_for(late_watchdog_hold, 90, "the watchdog hold after the goals stop")
        time.sleep(0.3)
        text = run.stop()
    rows, states = read_log(log), js_rows(out)
    assert "torque released on all servos" in text
    assert_slow_start(rows)
    n_goals = assert_goals_safe(rows)
    assert n_goals > 6 * 40
    assert_torque_released_last(rows)
    pos = np.array([s["pos"] for s in states])
    assert np.abs(pos[:, 0]).max() > 0.3  # the arm really followed the wave
    # torque waits for the first goal, then stays on until the stop
    torque = [s["torque"] for s in states]
    assert "on" in torque and all(v == "on" for v in torque[torque.index("on"):]), torque
    assert states[-1]["errors"] <= len(states) // 10, states[-1]["error_kinds"]  # a loaded CI box may time out a few reads
    assert [s["frame_id"] for s in states] == sorted(s["frame_id"] for s in states)
    assert states[-1]["hold"] is True
    vel = np.array([s["vel"] for s in states])
    assert np.abs(vel[:, 0]).max() > 0.2  # velocities from timestamps, rad/s


def _servo_pid(link: Path) -> int | None:
    """The servo node process of this test (its environment names our bus link)."""
    needle = f"SO101_PORT={link}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if b"nodes/servo/main.py" in (d / "cmdline").read_bytes() and needle in (d / "environ").read_bytes():
                return int(d.name)
        except OSError:
            continue
    return None


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_sigterm_to_the_node_releases_torque(tmp_path, emulator, venv_bin):
    link, log = emulator()
    flow, out = write_dataflow(tmp_path, link, {})
    with DoraRun(flow, venv_bin):
        wait_for(lambda: len(js_rows(out)) > 10, 90, "joint_state from the servo node")
        pid = wait_for(lambda: _servo_pid(link), 10, "the servo node's pid")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: released(read_log(log)), 20, "torque release after SIGTERM")
    assert_torque_released_last(read_log(log))


class _ScriptedEvents:
    """A stand-in for the dora event stream: a goal at the middle of the range (the emulator's pose) and a
    tick, `ticks` times, then the given exception."""

    def __init__(self, ticks: int, error: Exception):
        self.ticks, self.error, self.sent = ticks, error, []

    def __iter__(self):
        from so101_deploy.core.messages import encode, now_ns

        for i in range(self.ticks):
            time.sleep(0.02)
            value, meta = encode("joint_goal", np.zeros(6), frame_id=i, stamp_ns=now_ns(), source="action")
            yield {"type": "INPUT", "id": "goal", "value": value, "metadata": meta}
            yield {"type": "INPUT", "id": "tick", "value": None, "metadata": {}}
        raise self.error

    def send_output(self, output_id, value, metadata):
        self.sent.append((output_id, metadata))


@pytest.mark.integration
def test_an_exception_inside_the_loop_releases_torque(emulator):
    import importlib.util

    link, log = emulator()
    spec = importlib.util.spec_from_file_location("servo_main", REPO / "nodes" / "servo" / "main.py")
    servo_main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(servo_main)
    events = _ScriptedEvents(5, RuntimeError("boom inside the loop"))
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(RuntimeError, match="boom inside the loop"):
            servo_main.main(node=events, env={"SO101_PORT": str(link), "SO101_CALIBRATION": str(CAL_PATH),
                                              "SO101_SERVO_REPLY_WINDOW_MS": "120"})
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
    assert [o for o, _ in events.sent] == ["joint_state"] * 5
    rows = read_log(log)
    assert_slow_start(rows)
    assert_torque_released_last(rows)


def test_missing_settings_or_port_exit_with_a_clear_message(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("servo_main2", REPO / "nodes" / "servo" / "main.py")
    servo_main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(servo_main)
    assert servo_main.main(node=[], env={"SO101_CALIBRATION": str(CAL_PATH)}) == 2
    assert "SO101_PORT is required" in capsys.readouterr().err
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        t0 = time.monotonic()
        assert servo_main.main(node=[], env={"SO101_PORT": str(tmp_path / "ttyACM7"), "SO101_PORT_WAIT_S": "0.5",
                                             "SO101_CALIBRATION": str(CAL_PATH)}) == 2
        assert time.monotonic() - t0 >= 0.5  # it waited for the port to appear before giving up
        # a path that exists but is no serial port: the bus cannot open it
        (tmp_path / "not-a-tty").write_text("")
        assert servo_main.main(node=[], env={"SO101_PORT": str(tmp_path / "not-a-tty"),
                                             "SO101_CALIBRATION": str(CAL_PATH)}) == 2
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
    err = capsys.readouterr().err
    assert "ttyACM7: no such port after 0 s; is the bus adapter plugged in" in err
    assert "not-a-tty" in err


# --- the node logic under injected faults (in-process bus, real scservo_sdk) -------------------------

def _node(emu: EmulatedBus, watchdog_s: float = 1.0) -> ServoNode:
    return ServoNode.from_settings(ServoSettings(port=emu.path, calibration=str(CAL_PATH), watchdog_s=watchdog_s,
                                                 max_step_rad=MAX_STEP_RAD, reply_window_ms=120))


def _drive(node: ServoNode, min_s: float, min_goals: int = 60) -> list[dict]:
    """Goals (a wave, a far-out goal every 7th, a NaN every 11th), each followed by a read, until
    both ``min_s`` seconds and ``min_goals`` goals have passed."""
    metas, n, t0 = [], 0, time.monotonic()
    while time.monotonic() - t0 < min_s or n < min_goals:
        n += 1
        a = 0.8 * math.sin(2 * math.pi * (time.monotonic() - t0))
        goal = np.array([a, -a, a, -a, a, 0.5 + a])
        if n % 7 == 0:
            goal = np.array([4.0, -4.0, 4.0, 4.0, -4.0, 4.0])
        if n % 11 == 0:
            goal[2] = np.nan
        node.on_goal(goal)
        out = node.on_tick()
        assert out is not None and out[0].shape == (2, 6) and np.all(np.isfinite(out[0]))
        metas.append(out[1])
        time.sleep(0.01)
    return metas


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["drop", "corrupt", "silent", "overload"])
def test_node_keeps_running_reports_and_stays_safe_under_faults(tmp_path, fault):
    faults = {"drop": {"drop_rate": 0.15}, "corrupt": {"corrupt_rate": 0.15}, "silent": {"silent_ids": {3}},
              "overload": {"overload_ids": {6}}}[fault]
    log = tmp_path / "writes.jsonl"
    with EmulatedBus(tmp_path / "tty", calibration=CAL, log_path=log, seed=3) as emu:
        node = _node(emu)
        node.start()
        try:
            node.on_goal(node._prev.positions_rad)  # the first goal: torque on, RUN
            emu.set_faults(**faults)
            metas = _drive(node, 2.0)
        finally:
            node.shutdown()
    rows = read_log(log)
    assert_slow_start(rows)
    skip = (3,) if fault == "silent" else ()
    assert_goals_safe(rows)  # a silent servo hears nothing, but what was sent to it was safe too
    assert_torque_released_last(rows, ids=[i for i in IDS if i not in skip])
    if fault not in ("silent", "overload"):  # (those hold: goals are ignored, the present pose kept)
        assert node.events["rejected_nonfinite"] > 0 and node.events["clamped_limit"] > 0
    last = metas[-1]
    if fault == "drop":
        assert last["errors"] > 0 and "read_timeout" in last["error_kinds"]
    elif fault == "corrupt":
        assert last["errors"] > 0 and "read_corrupt" in last["error_kinds"]
    elif fault == "silent":
        assert last["missing_ids"] == "3" and last["hold"] is True and last["state"] == "hold"
        assert any("state_hold" in m["events"] for m in metas)
        hold_from = next(n for n, m in enumerate(metas) if "state_hold" in m["events"])
        assert hold_from < len(metas) - 10 and node.events["goal_ignored_hold"] > 10
        # while holding, every goal written equals the one before (no motion commanded)
        for i in (1, 2, 4, 5, 6):
            late = [r["value"] for r in rows if r["id"] == i and r["name"] == "Goal_Position"][-10:]
            assert len(set(late)) == 1, late
    else:  # an overloaded servo holds the arm (it is reported on every reading)
        assert last["overload_ids"] == "6" and all(m["overload_ids"] == "6" for m in metas[5:])
        assert last["state"] == "hold" and node.events["goal_ignored_hold"] > 10
        for i in IDS:
            late = [r["value"] for r in rows if r["id"] == i and r["name"] == "Goal_Position"][-10:]
            assert len(set(late)) == 1, late


@pytest.mark.integration
def test_estop_hold_release_and_slow_restart(tmp_path):
    log = tmp_path / "writes.jsonl"
    with EmulatedBus(tmp_path / "tty", calibration=CAL, log_path=log) as emu:
        node = _node(emu)
        node.start()
        try:
            _drive(node, 0.5)
            node.on_estop(1)  # hold: goals no longer move the arm
            n_before = len(read_log(log))
            for _ in range(10):
                node.on_goal(np.full(6, 0.9))
                assert node.on_tick()[1]["state"] == "hold"
            time.sleep(0.1)
            held = {r["value"] for r in read_log(log)[n_before:] if r["name"] == "Goal_Position" and r["id"] == 1}
            assert len(held) <= 1
            node.on_estop(2)  # release torque
            wait_for(lambda: not any(emu.torque_enabled().values()), 5, "torque off after e-stop 2")
            n_before = len(read_log(log))
            node.on_goal(np.full(6, 0.9))
            assert node.on_tick()[1]["torque"] == "off"
            assert not [r for r in read_log(log)[n_before:] if r["name"] == "Goal_Position"]
            emu.set_present_steps({1: 2300})  # somebody moved the limp arm
            node.on_estop(0)  # clear: back to WAIT; torque stays off until a fresh goal
            assert node.on_tick()[1]["torque"] == "off" and node.safe.state == "wait"
            node.on_goal(np.full(6, 0.9))  # the next goal: re-read, goal := present, torque on, slow start
            wait_for(lambda: all(emu.torque_enabled().values()), 5, "torque back on")
            after = [r for r in read_log(log)[n_before:] if r["id"] == 1]
            assert after[0]["name"] == "Goal_Position" and after[0]["value"] == 2300
            assert node.on_tick()[1]["torque"] == "on"
        finally:
            node.shutdown()
    assert_torque_released_last(read_log(log))


def test_model_limits_are_the_so101_mjcf_ranges():
    from so101_deploy.arm.kinematics import Kinematics

    limits = JointLimits.from_model()  # read with MjSpec (no mesh loading), must equal the documented ranges
    assert np.allclose(limits.lower_rad, [-1.91986, -1.74533, -1.69, -1.65806, -2.74385, -0.17453], atol=1e-5)
    assert np.allclose(limits.upper_rad, [1.91986, 1.74533, 1.69, 1.65806, 2.84121, 1.74533], atol=1e-5)
    kin = Kinematics()  # and equal what the compiled model says
    assert np.array_equal(limits.lower_rad, kin.lower_rad) and np.array_equal(limits.upper_rad, kin.upper_rad)


def test_settings_are_read_and_checked():
    from so101_deploy.core.settings import SettingError, Settings

    s = ServoSettings.from_settings(Settings("servo", SERVO_SETTINGS, {"SO101_PORT": "/dev/ttyACM0", "SO101_CALIBRATION": "c.json",
                                                       "SO101_SERVO_WATCHDOG_S": "0.25", "SO101_TORQUE_ON_START": "0"}))
    assert (s.port, s.watchdog_s, s.torque_on_start, s.max_step_rad, s.read_retries) == \
        ("/dev/ttyACM0", 0.25, False, 0.05, 2)
    with pytest.raises(SettingError, match="SO101_MAX_STEP_RAD"):
        ServoSettings.from_settings(Settings("servo", SERVO_SETTINGS, {"SO101_PORT": "p", "SO101_CALIBRATION": "c",
                                                       "SO101_MAX_STEP_RAD": "3"}))


# --- servo status bits, start-up retries, the bus lost and found -------------------------------------

def _node_with(emu: EmulatedBus, **env) -> ServoNode:
    """A node from its settings (``env``: SO101_* overrides), like the dora node builds it."""
    from so101_deploy.core.settings import Settings

    raw = Settings("servo", SERVO_SETTINGS, {"SO101_PORT": emu.path, "SO101_CALIBRATION": str(CAL_PATH),
                                             "SO101_MAX_STEP_RAD": str(MAX_STEP_RAD),
                                             "SO101_SERVO_REPLY_WINDOW_MS": "120", **env})
    return ServoNode.from_settings(ServoSettings.from_settings(raw), raw)


def _tick_until(node: ServoNode, predicate, timeout_s: float, what: str, goal=None, on_tick=None) -> list[dict]:
    """Fresh goals (``goal``, default the pose read at start) and ticks every ~10 ms until
    ``predicate(meta)``; returns the metadata of every tick.  A deadline, never a fixed wait."""
    metas, deadline = [], time.monotonic() + timeout_s
    goal = node._prev.positions_rad.copy() if goal is None else goal
    while time.monotonic() < deadline:
        node.on_goal(goal)
        out = node.on_tick()
        assert out is not None and np.all(np.isfinite(out[0]))
        metas.append(out[1])
        if on_tick is not None:
            on_tick(node)
        if predicate(out[1]):
            return metas
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last {metas[-1] if metas else None}")


def _after(n: int):
    """A predicate true from its ``n``-th call on (``n`` more ticks)."""
    calls = []
    return lambda _meta: calls.append(1) or len(calls) >= n


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "so101_deploy.arm.servo_node"]


@pytest.mark.integration
def test_status_bits_are_reported_and_overheat_holds_then_parks(tmp_path, caplog):
    caplog.set_level("INFO")
    log = tmp_path / "writes.jsonl"
    with EmulatedBus(tmp_path / "tty", calibration=CAL, log_path=log) as emu:
        node = _node_with(emu, SO101_PARK_AFTER_S="0.5", SO101_REST_POSE_RAD="0.04,-0.04,0.04,0,0,0.02")
        node.start()
        try:
            _tick_until(node, lambda m: m["state"] == "run" and m["torque"] == "on", 10, "RUN")
            emu.set_faults(status_bits={5: 0x01, 4: 0x02})  # voltage and angle: reported, the arm keeps running
            metas = _tick_until(node, lambda m: m["status"] == "4:angle,5:voltage", 10, "the status report")
            metas += _tick_until(node, _after(20), 10, "20 more ticks")
            assert all(m["state"] == "run" for m in metas)
            emu.set_faults(status_bits={5: 0x01, 4: 0x02, 3: 0x04})  # overheat: hold, then park
            t0 = time.monotonic()
            metas = _tick_until(node, lambda m: node.exit_reason is not None, 15, "the park after the hold")
            t_exit = time.monotonic()
        finally:
            node.shutdown()
    states = [m["state"] for m in metas]
    first = {s: states.index(s) for s in ("hold", "park", "limp")}
    assert first["hold"] < first["park"] < first["limp"], states
    assert metas[first["hold"]]["status"] == "3:overheat,4:angle,5:voltage"
    assert t_exit - t0 >= 0.5  # it held for SO101_PARK_AFTER_S before parking
    assert "overheat reported by ids [3]" in node.exit_reason and "parked, torque off" in node.exit_reason
    assert_torque_released_last(read_log(log))
    lines = [m for m in _messages(caplog) if m.startswith("servo status bits")]
    assert lines == ["servo status bits: 4:angle,5:voltage (reported only)",
                     "servo status bits: 3:overheat,4:angle,5:voltage (holding on overheat, SO101_FAULT_BITS)"]


def test_fault_bits_setting():
    from so101_deploy.core.settings import SettingError, Settings

    def parse(value):
        env = {"SO101_PORT": "p", "SO101_CALIBRATION": "c", "SO101_FAULT_BITS": value}
        return ServoSettings.from_settings(Settings("servo", SERVO_SETTINGS, env)).fault_bits

    assert parse("") == ("overheat", "current", "overload")  # the default
    assert parse("overload, Voltage") == ("voltage", "overload") and parse("none") == ()
    with pytest.raises(SettingError, match="SO101_FAULT_BITS.*'overtemp'.*voltage, angle, overheat"):
        parse("overtemp,overload")


@pytest.mark.integration
def test_an_index_error_in_the_sdks_ping_at_start_is_retried(tmp_path):
    with EmulatedBus(tmp_path / "tty", calibration=CAL) as emu:
        node = _node(emu)
        real_ping, calls = node.bus._ph.ping, []

        def flaky_ping(port, servo_id):
            calls.append(servo_id)
            if len(calls) == 1:
                raise IndexError("list index out of range")  # scservo_sdk's ping on a short reply
            return real_ping(port, servo_id)

        node.bus._ph.ping = flaky_ping
        try:
            node.start()
            assert node.started and node.bus.errors["sdk_error"] == 1 and calls[:2] == [1, 1]
        finally:
            node.shutdown()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_bus_comes_back_after_the_emulator_restarts(tmp_path, caplog):
    caplog.set_level("INFO")
    link, log1, log2 = tmp_path / "ttySO101", tmp_path / "writes1.jsonl", tmp_path / "writes2.jsonl"
    emu = EmulatedBus(link, calibration=CAL, log_path=log1).start()
    emu2 = None
    node = _node_with(emu, SO101_PORT_WAIT_S="30")
    node.start()
    try:
        _tick_until(node, lambda m: m["state"] == "run" and m["torque"] == "on", 10, "RUN")
        emu.stop()  # the cable is pulled (the link disappears, the pty is dead)
        estops = []
        metas = _tick_until(node, lambda m: m["bus"] == "lost" and m["state"] == "hold", 10, "the hold on the lost bus",
                            on_tick=lambda n: estops.append(n.on_estop(0)))  # e-stop messages keep coming
        # the arm was moved while the bus was away: the new bus starts elsewhere for shoulder_pan
        emu2 = EmulatedBus(link, calibration=CAL, log_path=log2, initial_steps={1: 2300}).start()
        metas += _tick_until(node, lambda m: m["bus"] == "ok" and m["state"] == "run", 30, "the reconnect")
        metas += _tick_until(node, _after(60), 20, "goals after the reconnect",
                             goal=np.array([0.8, 0.3, -0.3, 0.3, 0.3, 0.5]))
    finally:
        node.shutdown()
        emu.stop()
        if emu2 is not None:
            emu2.stop()
    assert node.exit_reason is None and node.events["bus_lost"] == 1 and node.events["bus_reconnected"] == 1
    rows = read_log(log2)
    present = {m.id: round((m.range_min + m.range_max) / 2) for m in CAL.motors} | {1: 2300}
    for i in IDS:  # Goal_Position := the present pose, then torque on; every goal from there step-bounded
        mine = [r for r in rows if r["id"] == i and r["name"] in ("Goal_Position", "Torque_Enable")]
        first_goal = next(r for r in mine if r["name"] == "Goal_Position")
        first_on = next(r for r in mine if r["name"] == "Torque_Enable" and r["value"] == 1)
        assert first_goal["value"] == present[i] and mine.index(first_goal) < mine.index(first_on), mine[:4]
    assert_goals_safe(rows)
    moved = [r["value"] for r in rows if r["id"] == 1 and r["name"] == "Goal_Position"]
    assert max(moved) > 2300 + 20  # it follows goals again, from where the arm is
    assert_torque_released_last(rows)
    messages = _messages(caplog)
    assert len([m for m in messages if m.startswith("servo bus lost")]) == 1, messages
    assert len([m for m in messages if m.startswith("servo bus back after")]) == 1, messages
    assert not any(r.exc_info for r in caplog.records) and not any("Traceback" in m for m in messages)
    assert len(messages) < 20, messages  # one line per change, not one per tick


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_consecutive_whole_bus_failures_count_across_estop_messages(tmp_path, caplog):
    caplog.set_level("INFO")
    with EmulatedBus(tmp_path / "tty", calibration=CAL) as emu:
        node = _node_with(emu, SO101_PORT_WAIT_S="30")
        node.bus_lost_after = 3
        node.start()
        try:
            _tick_until(node, lambda m: m["state"] == "run", 10, "RUN")
            emu.set_faults(silent_ids=IDS)  # the servos' power is cut: the port works, nobody answers
            counts = []

            def estop_then_count(n):
                n.on_estop(0)  # must not reset the count
                counts.append(n.bus_errors_in_row)
                if n._lost_since is not None:
                    emu.set_faults(silent_ids=())  # power back: the next try reconnects

            metas = _tick_until(node, lambda m: m["bus"] == "lost", 30, "the lost bus", on_tick=estop_then_count)
            assert counts[-3:] == [1, 2, 3]
            _tick_until(node, lambda m: m["bus"] == "ok" and m["state"] == "run", 30, "the reconnect")
        finally:
            node.shutdown()
    assert any("3 bus errors in a row (last: no servo answered)" in m for m in _messages(caplog))
    assert metas[-1]["missing_ids"] == "1,2,3,4,5,6"


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_bus_that_never_comes_back_ends_the_node_with_one_line(tmp_path, caplog):
    caplog.set_level("INFO")
    emu = EmulatedBus(tmp_path / "ttySO101", calibration=CAL).start()
    node = _node_with(emu, SO101_PORT_WAIT_S="1.5")
    node.start()
    try:
        _tick_until(node, lambda m: m["state"] == "run" and m["torque"] == "on", 10, "RUN")
        emu.stop()
        t0 = time.monotonic()
        metas = _tick_until(node, lambda m: node.exit_reason is not None, 1.5 + 3.0, "giving up")
        assert time.monotonic() - t0 >= 1.5
    finally:
        node.shutdown()
        emu.stop()
    assert metas[-1]["state"] == "limp" and metas[-1]["torque"] == "off" and metas[-1]["bus"] == "gave_up"
    assert "not back within SO101_PORT_WAIT_S=1.5 s" in node.exit_reason
    assert node.exit_reason.endswith("torque release not possible (the port is gone)")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len([m for m in errors if m.startswith("LIMP:")]) == 1, errors
    assert len(errors) == 2, errors  # the loss, and giving up
    assert not any(r.exc_info for r in caplog.records)
    assert not any("torque released on all servos" in m for m in _messages(caplog))
