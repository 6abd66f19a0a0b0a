"""LeRobot 0.6.1 itself against the project: its conversions, its SO101Follower and its setup_motors flow
driving the emulated bus.

LeRobot 0.6.1 needs Python >= 3.12 (the project runs on 3.11), so it runs in a venv of its own,
``~/.cache/so101-deploy/lerobot-venv`` (``SO101_LEROBOT_VENV`` moves it), as a child process.  The
first run creates that venv with ``pip install "lerobot[feetech]==0.6.1"`` -- about 4 GB with torch,
minutes -- and later runs reuse it.  The tests skip, saying why, when no python3.12 is found, when the
install fails (PyPI not reachable) or when ``SO101_LEROBOT_TESTS=0``.
"""

from __future__ import annotations

import fcntl
import glob
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from so101_deploy.arm.calibration import GRIPPER_CLOSED_RAD, Calibration
from so101_deploy.arm.emulator import EmulatedBus
from so101_deploy.core.messages import JOINT_NAMES

from conftest import LEROBOT_CAL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]  # the first run installs LeRobot

LEROBOT_VERSION = "0.6.1"
VENV = Path(os.environ.get("SO101_LEROBOT_VENV", Path.home() / ".cache" / "so101-deploy" / "lerobot-venv"))

CAL = LEROBOT_CAL

# Runs in LeRobot's venv: python - MODE ARGS_JSON; prints one JSON line "RESULT {...}" at the end.
LEROBOT_SCRIPT = r'''
import builtins, json, sys, time
from pathlib import Path

mode, args = sys.argv[1], json.loads(sys.argv[2])


def _prompt(prompt=""):
    if mode != "setup":
        sys.exit(f"unexpected prompt from LeRobot: {prompt!r}")
    print("PROMPT " + prompt, flush=True)
    return sys.stdin.readline()


builtins.input = _prompt  # LeRobot's console prompts go through the test (only the setup flow has any)

from lerobot.motors import Motor, MotorCalibration, MotorNormMode
from lerobot.motors.feetech import FeetechMotorsBus
from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig

out = {}
if mode == "normalize":
    calibration = {name: MotorCalibration(**entry) for name, entry in args["calibration"].items()}
    motors = {name: Motor(entry["id"], "sts3215", MotorNormMode.RANGE_0_100 if name == "gripper"
                          else MotorNormMode.DEGREES) for name, entry in args["calibration"].items()}
    bus = FeetechMotorsBus(port="/dev/null", motors=motors, calibration=calibration)
    out["read"] = {name: [bus._normalize({motors[name].id: t})[motors[name].id] for t in ticks]
                   for name, ticks in args["ticks"].items()}
    out["write"] = {name: [bus._unnormalize({motors[name].id: v})[motors[name].id] for v in values]
                    for name, values in args["values"].items()}
    robot = SO101Follower(SO101FollowerConfig(port="/dev/null", id="saved", calibration_dir=Path(args["dir"])))
    robot.calibration = calibration
    robot._save_calibration()  # what calibrate() ends with
    out["saved"] = str(robot.calibration_fpath)
elif mode == "follower":
    robot = SO101Follower(SO101FollowerConfig(port=args["port"], id="emu", calibration_dir=Path(args["dir"])))
    robot.connect()  # calibrate=True: a mismatch between the servos and the file would prompt (and fail here)
    out["is_calibrated"] = robot.is_calibrated
    out["obs"] = robot.get_observation()
    action = {key: out["obs"][key] + args["delta"][key] for key in out["obs"]}
    out["sent"] = robot.send_action(action)
    robot.disconnect()
elif mode == "setup":
    robot = SO101Follower(SO101FollowerConfig(port=args["port"], id="setup", calibration_dir=Path(args["dir"])))
    robot.setup_motors()
    robot.bus.port_handler.closePort()
print("RESULT " + json.dumps(out), flush=True)
'''


def _python312() -> str | None:
    pyenv = sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.12*/bin/python3.12")))
    candidates = [shutil.which("python3.12")] + pyenv
    for exe in filter(None, candidates):
        try:  # a pyenv shim exists even where 3.12 is not selected: it must run
            if subprocess.run([exe, "-c", "import sys; assert sys.version_info >= (3, 12)"],
                              capture_output=True, timeout=60).returncode == 0:
                return exe
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def _venv_ok(python: Path) -> bool:
    if not python.exists():
        return False
    check = ("import importlib.metadata as m, scservo_sdk, lerobot.motors.feetech; "
             f"assert m.version('lerobot') == {LEROBOT_VERSION!r}")
    try:
        return subprocess.run([str(python), "-c", check], capture_output=True, timeout=300).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def lerobot_python() -> Path:
    """The python of a venv holding lerobot[feetech]==0.6.1: reused, or installed once (minutes)."""
    if os.environ.get("SO101_LEROBOT_TESTS", "1") == "0":
        pytest.skip("SO101_LEROBOT_TESTS=0: the LeRobot tests are switched off")
    python = VENV / "bin" / "python"
    if _venv_ok(python):
        return python
    py312 = _python312()
    if py312 is None:
        pytest.skip("no python3.12 found (on PATH or under ~/.pyenv/versions): LeRobot 0.6.1 needs Python >= 3.12")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "lerobot-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time
        if _venv_ok(python):
            return python
        shutil.rmtree(VENV, ignore_errors=True)
        log = VENV.parent / "lerobot-venv-install.log"
        print(f"\ninstalling lerobot[feetech]=={LEROBOT_VERSION} into {VENV} (once; minutes, ~4 GB with torch); "
              f"log: {log}", file=sys.stderr, flush=True)
        with open(log, "w") as out:
            steps = ([py312, "-m", "venv", str(VENV)],
                     [str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                      f"lerobot[feetech]=={LEROBOT_VERSION}"])
            for cmd in steps:
                try:
                    rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=1500).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
                if rc != 0:
                    tail = log.read_text()[-600:]
                    shutil.rmtree(VENV, ignore_errors=True)
                    pytest.skip(f"could not install LeRobot {LEROBOT_VERSION} ({' '.join(cmd[:4])}... -> {rc}; is "
                                f"PyPI reachable?): {tail}")
        if not _venv_ok(python):
            pytest.skip(f"LeRobot {LEROBOT_VERSION} installed into {VENV} but does not import; see {log}")
    return python


def run_lerobot(python: Path, mode: str, args: dict, tmp_path: Path, timeout: float = 240) -> dict:
    env = dict(os.environ, HF_LEROBOT_HOME=str(tmp_path / "hf_lerobot"), HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)  # the project's packages are not LeRobot's
    proc = subprocess.run([str(python), "-c", LEROBOT_SCRIPT, mode, json.dumps(args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=tmp_path)
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and results, f"LeRobot ({mode}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(results[-1][len("RESULT "):])


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lerobot_conversions_and_calibration_file_match_the_project(lerobot_python, tmp_path):
    cal = dict(CAL, elbow_flex=dict(CAL["elbow_flex"], drive_mode=1))  # LeRobot ignores it in degrees mode
    ticks = {name: [e["range_min"], e["range_min"] + 1, 1500, 2047, 2048, 2572, 2999, e["range_max"]]
             for name, e in cal.items()}
    values = {name: [-179.99, -90.0, -33.3, -0.01, 0.0, 0.04, 10.0, 43.97, 90.0] for name in JOINT_NAMES[:5]}
    values["gripper"] = [0.0, 12.5, 50.0, 99.9, 100.0]
    out = run_lerobot(lerobot_python, "normalize", {"calibration": cal, "ticks": ticks, "values": values,
                                                    "dir": str(tmp_path / "saved")}, tmp_path)

    # the file LeRobot writes loads unchanged
    saved = Path(out["saved"])
    assert saved.parent == tmp_path / "saved"
    assert Calibration.load(saved).to_dict() == cal

    project = Calibration.from_dict(cal)
    mids = np.array([(e["range_min"] + e["range_max"]) / 2 for e in cal.values()])
    for k, name in enumerate(JOINT_NAMES[:5]):
        m = cal[name]
        for tick, deg in zip(ticks[name], out["read"][name]):
            assert deg == (tick - (m["range_min"] + m["range_max"]) / 2) * 360 / 4095  # LeRobot's formula
            steps = mids.copy()
            steps[k] = tick
            assert project.steps_to_rad(steps)[k] == pytest.approx(math.radians(deg), abs=1e-12)
        for value, tick in zip(values[name], out["write"][name]):
            assert tick == int((value * 4095 / 360) + (m["range_min"] + m["range_max"]) / 2)
            rad = np.zeros(6)
            rad[k] = math.radians(value)
            assert project.rad_to_steps(rad)[k] == min(max(tick, m["range_min"]), m["range_max"])
    # the gripper keeps radians, anchored where LeRobot's 0 % (closed) is
    g = cal["gripper"]
    assert out["read"]["gripper"][0] == 0.0 and out["write"]["gripper"][0] == g["range_min"]
    assert project.steps_to_rad(np.r_[mids[:5], g["range_min"]])[5] == GRIPPER_CLOSED_RAD
    flipped = dict(cal, gripper=dict(g, drive_mode=1))
    out = run_lerobot(lerobot_python, "normalize", {"calibration": flipped, "ticks": {"gripper": [g["range_max"]]},
                                                    "values": {"gripper": [0.0]}, "dir": str(tmp_path / "s2")},
                      tmp_path)
    assert out["read"]["gripper"] == [0.0] and out["write"]["gripper"] == [g["range_max"]]  # drive_mode 1: closed
    assert Calibration.from_dict(flipped).steps_to_rad(np.r_[mids[:5], g["range_max"]])[5] == GRIPPER_CLOSED_RAD


def test_so101_follower_connects_reads_and_writes_through_the_emulated_bus(lerobot_python, tmp_path):
    cal_dir = tmp_path / "calibration"
    cal_dir.mkdir()
    (cal_dir / "emu.json").write_text(json.dumps(CAL, indent=4))
    project = Calibration.from_dict(CAL)
    start = {1: 3000, 2: 811, 3: 2572, 4: 1500, 5: 4000, 6: 2500}
    log = tmp_path / "writes.jsonl"
    delta = {"shoulder_pan.pos": 5.0, "shoulder_lift.pos": -3.3, "elbow_flex.pos": 1.234, "wrist_flex.pos": 0.0,
             "wrist_roll.pos": -10.0, "gripper.pos": 7.5}
    with EmulatedBus(tmp_path / "ttyEmu", calibration=project, log_path=log, initial_steps=start) as bus:
        out = run_lerobot(lerobot_python, "follower", {"port": bus.path, "dir": str(cal_dir), "delta": delta},
                          tmp_path)
        goal_registers = {i: bus.register(i, "Goal_Position") for i in range(1, 7)}
    assert out["is_calibrated"]  # the emulated servos carry the file's offsets and limits
    # read: LeRobot's degrees x pi/180 are the project's radians of the same ticks
    rad = project.steps_to_rad(np.array([start[i] for i in range(1, 7)]))
    for k, name in enumerate(JOINT_NAMES[:5]):
        m = CAL[name]
        deg = out["obs"][f"{name}.pos"]
        assert deg == (start[k + 1] - (m["range_min"] + m["range_max"]) / 2) * 360 / 4095
        assert rad[k] == pytest.approx(math.radians(deg), abs=1e-12)
    # write: the Goal_Position ticks LeRobot sent are the project's ticks for the same angles
    rows = read_log(log)
    sent_ticks = {r["id"]: r["value"] for r in rows if r["name"] == "Goal_Position" and r["inst"] == "sync_write"}
    assert sent_ticks == goal_registers
    goal_rad = np.array([math.radians(out["sent"][f"{n}.pos"]) for n in JOINT_NAMES[:5]] + [0.0])
    project_ticks = project.rad_to_steps(goal_rad)
    for k, name in enumerate(JOINT_NAMES[:5]):
        m = CAL[name]
        mid = (m["range_min"] + m["range_max"]) / 2
        assert sent_ticks[k + 1] == int((out["sent"][f"{name}.pos"] * 4095 / 360) + mid)
        # LeRobot sends it unclipped (shoulder_lift: below range_min), the servo clamps it to the
        # Min/Max_Position_Limit LeRobot wrote (= the range): the project clips to the same tick
        assert project_ticks[k] == min(max(sent_ticks[k + 1], m["range_min"]), m["range_max"])
    g = CAL["gripper"]
    assert sent_ticks[6] == int((out["sent"]["gripper.pos"] / 100) * (g["range_max"] - g["range_min"]) + g["range_min"])
    # configure() as the reference lists it, and torque off at disconnect
    writes = {(r["id"], r["name"]): r["value"] for r in rows if r["inst"] == "write"}
    for i in range(1, 7):
        assert writes[(i, "Return_Delay_Time")] == 0 and writes[(i, "Operating_Mode")] == 0
        assert writes[(i, "P_Coefficient")] == 16 and writes[(i, "Torque_Enable")] == 0
    assert writes[(6, "Max_Torque_Limit")] == 500 and writes[(6, "Overload_Torque")] == 25
    assert not [r for r in rows if "rejected" in r]


def test_lerobot_setup_motors_against_one_factory_servo(lerobot_python, tmp_path):
    """lerobot-setup-motors with `--ids 1`: one factory servo (id 1, 1 Mbps) on the bus at a time; between
    the prompts the test "plugs in" the next one, as a person does.  The elbow's servo comes set to id 9
    at 500 kbps (index 1), so LeRobot has to scan the baud rates to find it."""
    log = tmp_path / "writes.jsonl"
    targets = {name: i + 1 for i, name in enumerate(JOINT_NAMES)}
    env = dict(os.environ, HF_LEROBOT_HOME=str(tmp_path / "hf_lerobot"), HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    configured = {}
    with EmulatedBus(tmp_path / "ttySetup", ids=(1,), log_path=log) as bus:
        proc = subprocess.Popen([str(lerobot_python), "-c", LEROBOT_SCRIPT, "setup",
                                 json.dumps({"port": bus.path, "dir": str(tmp_path / "cal")})],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, cwd=tmp_path)
        previous, output = None, []
        try:
            for line in proc.stdout:
                output.append(line)
                if not line.startswith("PROMPT Connect the controller board to the '"):
                    continue
                motor = line.split("'")[1]
                if previous is not None:
                    servo = bus.servos[1]
                    configured[previous] = (servo.id, servo.baudrate)
                bus.plug((1,))  # a fresh factory servo
                if motor == "elbow_flex":
                    bus.servos[1].set("ID", 9)
                    bus.servos[1].set("Baud_Rate", 1)
                previous = motor
                proc.stdin.write("\n")
                proc.stdin.flush()
            rc = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        configured[previous] = (bus.servos[1].id, bus.servos[1].baudrate)
    text = "".join(output)
    assert rc == 0 and "RESULT" in text, text[-3000:]
    assert configured == {name: (targets[name], 1_000_000) for name in JOINT_NAMES}
    for name in JOINT_NAMES:
        assert f"'{name}' motor id set to {targets[name]}" in text
    id_writes = [(r["id"], r["value"]) for r in read_log(log) if r["name"] == "ID"]
    # each ID write came to the servo's old id (and was answered from it, else LeRobot would have failed)
    assert id_writes == [(1, 6), (1, 5), (1, 4), (9, 3), (1, 2), (1, 1)]
    bauds = [(r["id"], r["value"]) for r in read_log(log) if r["name"] == "Baud_Rate"]
    assert bauds == [(6, 0), (5, 0), (4, 0), (3, 0), (2, 0), (1, 0)]
