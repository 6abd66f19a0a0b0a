"""Shared pytest fixtures.  Keep each fixture small and documented; add new ones below the others."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from so101_deploy.core.gl import preload_for_osmesa

preload_for_osmesa()  # first: Triton before any mujoco/OSMesa import (see shared/so101_deploy/core/gl.py)

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORDINGS_DIR = REPO_ROOT / "tests" / "data" / "recordings"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where the dataflow YAML files are)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def venv_bin() -> Path:
    """The folder of this interpreter (the venv's bin, holding `dora` and `so101-deploy`)."""
    return Path(sys.executable).parent


@pytest.fixture(scope="session")
def generated_video(tmp_path_factory) -> Path:
    """The project's generated scene as a 30-frame 640x480 mp4 (read-only: copy it to modify it)."""
    from so101_deploy.sim.synthetic import write_video

    return write_video(tmp_path_factory.mktemp("video") / "scene.mp4", frames=30, seed=0)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A fresh folder of 8 generated 640x480 PNG frames (frame_00000.png ...), safe to modify."""
    from so101_deploy.sim.synthetic import write_image_folder

    folder = tmp_path / "frames"
    write_image_folder(folder, frames=8, seed=0)
    return folder


@pytest.fixture(scope="session")
def camera_recording() -> Path:
    """The committed recording of camera `image` messages from a real replay run (tests/data/recordings)."""
    path = RECORDINGS_DIR / "camera_replay" / "image.arrow"
    if not path.exists():
        pytest.fail(f"{path} is missing; regenerate it with `python tests/data/make_recordings.py`")
    return path


@pytest.fixture(scope="session")
def fixture_weights(tmp_path_factory) -> dict[str, Path]:
    """`so101-deploy fixtures` (seed 0): the random-weight seg, depth and policy files the committed
    recordings were made with (keys as ``write_fixtures`` returns them: seg_checkpoint, depth_hf_dir, ...)."""
    from so101_deploy.tools.fixtures import write_fixtures

    return write_fixtures(tmp_path_factory.mktemp("fixture_weights"), seed=0)


@pytest.fixture
def emulated_bus(tmp_path, venv_bin):
    """`so101-deploy emulate-bus` (the example calibration) on a pty in its own process group; yields
    (link to point SO101_PORT at, JSONL log of every register write); stopped by its pid afterwards."""
    import os
    import subprocess
    import time

    from so101_deploy.arm.calibration import EXAMPLE_PATH

    link, log = tmp_path / "ttySO101", tmp_path / "bus_writes.jsonl"
    proc = subprocess.Popen([str(venv_bin / "so101-deploy"), "emulate-bus", "--link", str(link), "--log", str(log),
                             "--calibration", str(EXAMPLE_PATH)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (link.is_symlink() and os.path.exists(link)):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the emulated bus did not come up at {link} (exit {proc.poll()})")
            time.sleep(0.05)
        yield link, log
    finally:
        stop_group(proc)


def recorded_count(path) -> int:
    """How many complete messages a recording file being written holds now (0 before it exists); for
    conditions to wait on while a dataflow runs."""
    import warnings

    from so101_deploy.core.recording import read_messages

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unfinished stream warns that it has no end marker yet
            return len(read_messages(path))
    except Exception:  # noqa: BLE001 - not there yet, or not even a schema yet
        return 0


def stop_group(proc, wait_s: float = 5.0) -> None:
    """Stop a process started with start_new_session=True, by its group: SIGTERM, then SIGKILL after
    ``wait_s``."""
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(wait_s)


class StandInNode:
    """A stand-in for ``dora.Node``: yields the given events, keeps what is sent as (output, value, metadata)."""

    def __init__(self, events):
        self.events, self.sent = events, []

    def __iter__(self):
        return iter(self.events)

    def send_output(self, output_id, value, metadata=None):
        self.sent.append((output_id, value, metadata))


# An SO-101 calibration as LeRobot's calibrate() leaves it (drive_mode 0 everywhere, wrist_roll 0..4095):
# the file test_lerobot.py drives LeRobot with and test_lerobot_units.py converts with
LEROBOT_CAL = {
    "shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -1032, "range_min": 713, "range_max": 3401},
    "shoulder_lift": {"id": 2, "drive_mode": 0, "homing_offset": 988, "range_min": 811, "range_max": 3200},
    "elbow_flex": {"id": 3, "drive_mode": 0, "homing_offset": 1402, "range_min": 1000, "range_max": 3144},
    "wrist_flex": {"id": 4, "drive_mode": 0, "homing_offset": -12, "range_min": 857, "range_max": 3187},
    "wrist_roll": {"id": 5, "drive_mode": 0, "homing_offset": -1560, "range_min": 0, "range_max": 4095},
    "gripper": {"id": 6, "drive_mode": 0, "homing_offset": 1270, "range_min": 2022, "range_max": 3358},
}


def estop_recorder_flow(tmp_path: Path, record_dir: Path, flush_tick_ms: int | None = None) -> Path:
    """A dataflow file: the estop node (its file says release; small messages on a 50 ms timer) into a
    recorder of its ``estop`` output, with the recorder's flush timer every ``flush_tick_ms`` if given."""
    estop_file = tmp_path / "so101.estop"
    estop_file.write_text("release")
    tick = f"\n      tick: dora/timer/millis/{flush_tick_ms}" if flush_tick_ms else ""
    flow = tmp_path / "estop.yml"
    flow.write_text(f"""
nodes:
  - id: estop
    path: {REPO_ROOT / 'nodes/estop/main.py'}
    env: {{SO101_ESTOP_FILE: "{estop_file}"}}
    inputs: {{tick: dora/timer/millis/50}}
    outputs: [estop]
  - id: recorder
    path: {REPO_ROOT / 'nodes/recorder/main.py'}
    restart_policy: never
    env: {{SO101_RECORD_DIR: "{record_dir}", SO101_RECORD_TYPES: "estop=estop"}}
    inputs:
      estop: {{source: estop/estop, queue_size: 100}}{tick}
""")
    return flow
