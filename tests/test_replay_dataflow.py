"""The replay dataflow for real: `dora run dataflow.replay.yml --stop-after`, camera node replaying
the generated video into the recorder node, then assertions on what was recorded.

`so101_deploy.core.dataflow.run_dataflow` starts dora in its own process group and kills that group by
its id when the run ends, also when a test fails."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from so101_deploy.core.dataflow import run_dataflow
from so101_deploy.core.recording import read_recording
from so101_deploy.sim.synthetic import read_frame_index, write_image_folder
from conftest import recorded_count

pytestmark = pytest.mark.integration


def _env(venv_bin: Path, source: Path, record_dir: Path, **extra: str) -> dict[str, str]:
    # dora runs Python nodes with the python on PATH: the venv's
    return {"PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", "SO101_REPLAY_VIDEO": str(source),
            "SO101_REPLAY_RECORD_DIR": str(record_dir), "SO101_REPLAY_MAX_FRAMES": "0", **extra}


def test_camera_replays_generated_video_into_recorder(repo_root, venv_bin, generated_video, tmp_path):
    record_dir = tmp_path / "recording"
    # until 20 frames are recorded: a deadline, not a window (node start-up is slow on a busy machine)
    result = run_dataflow(repo_root / "dataflow.replay.yml", 120,
                          extra_env=_env(venv_bin, generated_video, record_dir), grace_s=60,
                          until=lambda log: recorded_count(record_dir / "image.arrow") >= 20)
    assert result.returncode == 0 and result.condition_met, result.log[-3000:]
    messages = read_recording(record_dir)["image"]
    n = len(messages)
    assert n >= 20, f"only {n} frames:\n{result.log[-2000:]}"
    assert f"recorded {{'image': {n}}}" in result.log  # the recorder's count at stop
    # frame ids from 0, one per frame, nothing lost between the nodes
    assert [m.frame_id for m in messages] == list(range(n))
    # the pictures are the generated video's frames in order, looping after its 30 frames
    assert [read_frame_index(m.data) for m in messages] == [i % 30 for i in range(n)]
    for m in messages:
        assert m.data.shape == (480, 640, 3) and m.data.dtype == np.uint8
        assert (m.meta["encoding"], m.meta["height"], m.meta["width"]) == ("bgr8", 480, 640)
    stamps = np.array([m.stamp_ns for m in messages])
    assert (np.diff(stamps) > 0).all()
    rate = (n - 1) / ((stamps[-1] - stamps[0]) / 1e9)
    assert 15 < rate < 36, rate  # SO101_CAMERA_FPS=30 on a 10 ms timer (lower on a starved machine)
    assert "Traceback" not in result.log


def test_camera_folder_that_disappears_mid_run_is_reopened_without_a_restart(repo_root, venv_bin, tmp_path):
    folder = tmp_path / "frames"
    write_image_folder(folder, frames=8)
    away = tmp_path / "away"
    record_dir = tmp_path / "recording"
    stop = threading.Event()

    def unplug() -> None:
        # wait for the first recorded frame, then take the images away for a second
        deadline = time.monotonic() + 30
        while not (record_dir / "image.arrow").exists() and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.05)
        time.sleep(0.5)
        folder.rename(away)
        time.sleep(1.0)
        away.rename(folder)

    with ThreadPoolExecutor(1) as pool:
        unplugged = pool.submit(unplug)
        try:
            # until frames come again after the reopen (+1 s): a deadline, not a window
            result = run_dataflow(repo_root / "dataflow.replay.yml", 120,
                                  extra_env=_env(venv_bin, folder, record_dir), grace_s=60,
                                  until=lambda log: "[camera] info: reopened folder" in log, linger_s=1.0)
        finally:
            stop.set()
            unplugged.result(timeout=60)
    assert result.returncode == 0, result.log[-3000:]
    log = result.log
    assert log.count(f"[camera] error: folder {folder} lost:") == 1
    assert f"reopen attempt 1 of folder {folder} failed: folder {folder} is missing; next in 0.2 s" in log
    assert log.count(f"[camera] info: reopened folder {folder}") == 1
    assert "restarting node" not in log  # handled inside the node, not by a crash and restart
    messages = read_recording(record_dir)["image"]
    n = len(messages)
    assert [m.frame_id for m in messages] == list(range(n))  # ids continue across the reopen
    shown = [read_frame_index(m.data) for m in messages]
    assert shown == [(shown[0] + i) % 8 for i in range(n)]  # resumes after the last image shown
    stamps = np.array([m.stamp_ns for m in messages])
    assert np.diff(stamps).max() > 0.9e9  # the gap while the folder was away


def test_missing_video_is_a_clear_error_and_no_crash_loop(repo_root, venv_bin, tmp_path):
    missing = tmp_path / "missing.mp4"
    t0 = time.monotonic()
    result = run_dataflow(repo_root / "dataflow.replay.yml", 20,
                          extra_env=_env(venv_bin, missing, tmp_path / "rec"), grace_s=60)
    assert result.returncode != 0
    assert (f"[camera] error: SO101_CAMERA={str(missing)!r}: no such file or folder ({missing}); expected a "
            f"device index like 0") in result.log
    assert "max restarts (3) exceeded, giving up" in result.log  # bounded by the YAML's max_restarts
    assert time.monotonic() - t0 < 20  # gave up before --stop-after, not a loop until stopped


def test_replay_demo_command(tmp_path, capsys, venv_bin, monkeypatch):
    from so101_deploy.tools.cli import main

    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    assert main(["replay-demo", "--out", str(tmp_path / "demo"), "--seconds", "4", "--frames", "20"]) == 0
    out = capsys.readouterr().out
    assert "frame_id continuity: ok (0 missing, 0 out of order)" in out
    assert "video order: ok" in out
    assert (tmp_path / "demo" / "recording" / "image.arrow").exists()
    assert (tmp_path / "demo" / "video.mp4").exists()
