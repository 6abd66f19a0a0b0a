"""The installed `so101-deploy` command: help, version, every subcommand's own help, and doctor."""

import shutil
import subprocess

import pytest

from so101_deploy import __version__
from so101_deploy.tools.cli import COMMANDS


def cli(*args, timeout=120):
    exe = shutil.which("so101-deploy")
    assert exe, "the console script is not installed (pip install -e .)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)


def test_version_and_help():
    res = cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"so101-deploy {__version__}"
    res = cli("--help")
    assert res.returncode == 0
    for name in COMMANDS:
        assert name in res.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_its_own_help(name):
    res = cli(name, "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: so101-deploy {name}")


def test_unknown_command_is_refused():
    res = cli("fly")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_doctor_checks_this_machine_and_fails_on_a_bad_calibration(tmp_path):
    res = cli("doctor", timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK    dora cli" in res.stdout and "OK    mujoco rendering" in res.stdout
    bad = tmp_path / "cal.json"
    bad.write_text('{"shoulder_pan": {"id": 1}}')
    res = cli("doctor", "--calibration", str(bad), "--port", str(tmp_path / "ttyACM9"), timeout=180)
    assert res.returncode == 1
    assert "FAIL  calibration" in res.stdout and "FAIL  servo bus" in res.stdout
    assert "ttyACM9 does not exist" in res.stdout


def test_doctor_opens_a_camera_and_loads_every_checkpoint(tmp_path, generated_video):
    from so101_deploy.tools.fixtures import write_fixtures

    fx = write_fixtures(tmp_path / "fx")
    res = cli("doctor", "--camera", str(generated_video), "--seg", str(fx["seg_checkpoint"]),
              "--depth", str(fx["depth_hf_dir"]), "--policy", str(fx["policy_snapshot"]), timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "got a 640x480 frame" in res.stdout
    assert "6 classes, trained at 480x640" in res.stdout
    assert "action space cartesian (4-D), snapshot format" in res.stdout
    res = cli("doctor", "--policy", str(tmp_path / "missing.pt"), timeout=300)
    assert res.returncode == 1 and "FAIL  policy snapshot" in res.stdout


@pytest.mark.integration
def test_doctor_pings_the_servos_without_touching_torque(tmp_path):
    import json
    import os
    import signal
    import time

    from so101_deploy.arm.calibration import EXAMPLE_PATH

    link, log = tmp_path / "ttySO101", tmp_path / "writes.jsonl"
    bus = subprocess.Popen([shutil.which("so101-deploy"), "emulate-bus", "--link", str(link), "--log", str(log),
                            "--calibration", str(EXAMPLE_PATH)], start_new_session=True)
    try:
        for _ in range(200):
            if link.exists():
                break
            time.sleep(0.05)
        res = cli("doctor", "--port", str(link), "--calibration", str(EXAMPLE_PATH), timeout=180)
    finally:
        os.killpg(bus.pid, signal.SIGTERM)
        bus.wait(timeout=10)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "6 servos answered; present pose (rad)" in res.stdout
    writes = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert not [w for w in writes if w["name"] in ("Torque_Enable", "Goal_Position")], writes
