"""The camera logic with the real OpenCV readers on generated videos and image folders.

Time is given to ``Camera.poll(now=...)`` explicitly where a test needs rate or backoff, so the
tests never sleep; everything else (files, OpenCV, decoding) is real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from so101_deploy.perception import camera as camera_mod
from so101_deploy.perception.camera import EXPECTED_SOURCE, Camera, CameraError, parse_source
from so101_deploy.core.messages import decode, encode
from so101_deploy.core.settings import SettingError, Settings
from so101_deploy.sim.synthetic import read_frame_index, render_frame, write_video
from so101_deploy.perception.camera import SETTINGS as CAMERA_SETTINGS

REPO_ROOT = Path(__file__).resolve().parent.parent


class Logs(list):
    def __call__(self, level: str, message: str) -> None:
        self.append((level, message))

    def count(self, text: str) -> int:  # type: ignore[override]
        return sum(text in m for _, m in self)


def drain(cam: Camera, n: int, t0: float = 0.0, dt: float = 1 / 30) -> tuple[list, float]:
    """Poll at the camera's own rate until n frames or 4n polls; returns (frames, next time)."""
    frames, t = [], t0
    for _ in range(4 * n):
        f = cam.poll(now=t)
        t += dt
        if f is not None:
            frames.append(f)
            if len(frames) == n:
                break
    return frames, t


# --- sources ----------------------------------------------------------------------------------

def test_parse_source_kinds(tmp_path, image_folder, generated_video):
    assert parse_source("0").kind == "device" and parse_source("0").target == 0
    assert parse_source(" 2 ").target == 2
    assert parse_source("/dev/video7").kind == "device"  # may be plugged in later
    assert parse_source(str(image_folder)).kind == "folder"
    assert parse_source(str(generated_video)).kind == "video"


def test_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(CameraError) as info:
        parse_source(str(missing))
    assert str(info.value) == (f"SO101_CAMERA={str(missing)!r}: no such file or folder ({missing}); "
                               f"expected {EXPECTED_SOURCE}")
    with pytest.raises(CameraError, match="SO101_CAMERA is empty; expected a device index like 0"):
        parse_source("  ")


def test_empty_folder_and_unreadable_video_are_errors_at_open(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CameraError, match=r"has no images \(.png"):
        Camera(str(tmp_path / "empty"), log=Logs()).open()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(CameraError, match=r"SO101_CAMERA='.*junk.mp4': (OpenCV cannot open|.*delivered no frame)"):
        Camera(str(junk), log=Logs()).open()


# --- frames -----------------------------------------------------------------------------------

def test_video_frames_are_640x480_bgr_in_order_with_ids_and_stamps(generated_video):
    cam = Camera(str(generated_video), log=Logs())
    cam.open()
    frames, _ = drain(cam, 10)
    assert [f.frame_id for f in frames] == list(range(10))
    assert [read_frame_index(f.image_bgr) for f in frames] == list(range(10))
    stamps = [f.stamp_ns for f in frames]
    assert stamps == sorted(stamps) and stamps[0] > 1.6e18  # wall-clock capture time in ns
    for f in frames:
        assert f.image_bgr.shape == (480, 640, 3) and f.image_bgr.dtype == np.uint8
        assert f.image_bgr.flags.c_contiguous
    # lossy mp4v, but the picture is the generated one
    diff = np.abs(frames[3].image_bgr.astype(int) - render_frame(3).astype(int)).mean()
    assert diff < 6, diff
    # and it goes through the message layer unchanged
    msg = decode("image", *encode("image", frames[0].image_bgr, frame_id=0, stamp_ns=frames[0].stamp_ns))
    np.testing.assert_array_equal(msg.data, frames[0].image_bgr)


def test_folder_frames_equal_the_generated_images(image_folder):
    cam = Camera(str(image_folder), log=Logs())
    cam.open()
    frames, _ = drain(cam, 8)
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(f.image_bgr, render_frame(i))


def test_loop_continues_frame_ids(generated_video):
    logs = Logs()
    cam = Camera(str(generated_video), log=logs)  # loop defaults to on for files
    cam.open()
    frames, _ = drain(cam, 33)
    assert [f.frame_id for f in frames] == list(range(33))
    assert [read_frame_index(f.image_bgr) for f in frames[28:]] == [28, 29, 0, 1, 2]
    assert cam.loops == 1


def test_end_without_loop_stops_and_logs_once(image_folder):
    logs = Logs()
    cam = Camera(str(image_folder), loop=False, log=logs)
    cam.open()
    frames, t = drain(cam, 20)
    assert len(frames) == 8 and cam.state == "ended"
    assert all(cam.poll(now=t + i) is None for i in range(5))
    assert logs.count("end of folder") == 1


def test_max_frames(image_folder):
    logs = Logs()
    cam = Camera(str(image_folder), max_frames=3, log=logs)
    cam.open()
    frames, t = drain(cam, 10)
    assert [f.frame_id for f in frames] == [0, 1, 2]
    assert cam.poll(now=t + 1) is None and logs.count("SO101_CAMERA_MAX_FRAMES=3 reached") == 1


def test_rate_limit_keeps_fps_when_ticked_faster(image_folder):
    cam = Camera(str(image_folder), fps=30, log=Logs())
    cam.open()
    ticks = np.arange(0, 1.0, 0.01)  # a 100 Hz timer for one second
    sent = [t for t in ticks if cam.poll(now=float(t)) is not None]
    assert 29 <= len(sent) <= 31
    assert min(np.diff(sent)) >= 0.02  # never two frames in one 33 ms period


def test_rate_limit_tolerates_timer_jitter(image_folder):
    cam = Camera(str(image_folder), fps=30, log=Logs())
    cam.open()
    rng = np.random.default_rng(0)
    ticks = np.arange(60) / 30 + rng.uniform(-0.008, 0.008, 60)  # a timer on a grid, jittered by +-8 ms
    assert sum(cam.poll(now=float(t)) is not None for t in ticks) == 60  # a 30 Hz timer gets every frame


# --- size ---------------------------------------------------------------------------------------

def _big_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"f{i}.png"), cv2.resize(render_frame(i), (1280, 720)))
    return folder


def test_wrong_size_is_reported(tmp_path):
    folder = _big_folder(tmp_path)
    with pytest.raises(CameraError) as info:
        Camera(str(folder), log=Logs()).open()
    assert str(info.value) == (
        f"folder {folder} delivers 1280x720 frames; the pipeline needs 640x480 BGR. Choose a 640x480 "
        f"mode/source, or set SO101_CAMERA_RESIZE=true to resize with INTER_AREA (aspect ratio is not kept)")


def test_wrong_size_is_resized_when_configured(tmp_path):
    cam = Camera(str(_big_folder(tmp_path)), resize=True, log=Logs())
    cam.open()
    frames, _ = drain(cam, 3)
    assert all(f.image_bgr.shape == (480, 640, 3) for f in frames)
    assert np.abs(frames[1].image_bgr.astype(int) - render_frame(1).astype(int)).mean() < 3


def test_small_video_is_resized_when_configured(tmp_path):
    path = tmp_path / "small.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for i in range(3):
        w.write(cv2.resize(render_frame(i), (320, 240), interpolation=cv2.INTER_AREA))
    w.release()
    with pytest.raises(CameraError, match="delivers 320x240 frames"):
        Camera(str(path), log=Logs()).open()
    cam = Camera(str(path), resize=True, log=Logs())
    cam.open()
    assert cam.poll(now=0).image_bgr.shape == (480, 640, 3)


# --- a camera that is missing or disappears -------------------------------------------------------

def test_missing_live_camera_is_retried_with_backoff_not_an_exit():
    logs = Logs()
    cam = Camera("/dev/video57", log=logs)
    cam.open(now=0.0)  # no exception: a USB camera may be plugged in later
    assert cam.state == "reconnecting"
    devices = ", ".join(camera_mod.video_devices()) or "none"
    assert logs[0] == ("error", "SO101_CAMERA='/dev/video57': /dev/video57 does not exist (camera unplugged?); "
                                "retrying (plug the camera in, or check the index with `so101-deploy camera-check`; "
                                f"video devices here: {devices})")
    attempts = []
    for t in np.arange(0, 10, 0.01):
        before = cam.reopen_attempts
        assert cam.poll(now=float(t)) is None
        if cam.reopen_attempts > before:
            attempts.append(round(float(t), 2))
    delays = np.round(np.diff(attempts), 1).tolist()
    assert delays[:4] == [0.2, 0.4, 0.8, 1.6] and set(delays[4:]) == {2.0}  # doubling, capped at 2 s
    assert logs.count("reopen attempt") == len(attempts)  # each attempt logged once
    assert logs[1][1] == "reopen attempt 1 of camera device /dev/video57 failed: /dev/video57 does not exist " \
                         "(camera unplugged?); next in 0.2 s"


def test_missing_device_index_names_the_v4l2_node():
    if not sys.platform.startswith("linux"):
        pytest.skip("V4L2 device nodes are Linux only")
    logs = Logs()
    cam = Camera("57", log=logs)
    cam.open()
    assert cam.state == "reconnecting" and "/dev/video57 does not exist (camera unplugged?)" in logs[0][1]


def test_folder_whose_images_disappear_is_reopened_and_ids_continue(image_folder):
    logs = Logs()
    cam = Camera(str(image_folder), log=logs)
    cam.open()
    frames, t = drain(cam, 3)
    (image_folder / "frame_00003.png").unlink()  # the next image vanishes mid-run
    assert cam.poll(now=t) is None and cam.state == "reconnecting"
    assert logs.count("lost: image") == 1 and logs.count("frame_00003.png disappeared") == 1
    more, t = drain(cam, 2, t0=t + 0.1)
    assert cam.state == "streaming" and cam.reconnects == 1
    assert [f.frame_id for f in more] == [3, 4]  # no gap in frame_id across the reopen
    np.testing.assert_array_equal(more[0].image_bgr, render_frame(4))  # resumes after the last image shown
    assert logs.count("reopened folder") == 1


def test_folder_that_vanishes_is_retried_until_it_returns(image_folder, tmp_path):
    logs = Logs()
    cam = Camera(str(image_folder), log=logs)
    cam.open()
    frames, t = drain(cam, 2)
    moved = tmp_path / "moved_away"
    image_folder.rename(moved)
    for i in range(300):  # 10 s of ticks: lost once, then retried with backoff, never an exception
        assert cam.poll(now=t + i / 30) is None
    assert logs.count("lost:") == 1 and 4 <= cam.reopen_attempts <= 8
    assert logs.count(f"folder {image_folder} is missing") == cam.reopen_attempts
    moved.rename(image_folder)
    more, _ = drain(cam, 1, t0=t + 12)
    assert more[0].frame_id == 2 and cam.state == "streaming"


def test_video_renamed_away_is_noticed_at_the_loop_and_reopened(tmp_path):
    video = write_video(tmp_path / "v.mp4", frames=5)
    logs = Logs()
    cam = Camera(str(video), log=logs)
    cam.open()
    frames, t = drain(cam, 5)
    away = video.rename(tmp_path / "renamed.mp4")
    assert cam.poll(now=t) is None and cam.state == "reconnecting"
    assert logs.count(f"video file {video} is missing") == 1
    away.rename(video)
    more, _ = drain(cam, 2, t0=t + 0.2)
    assert [f.frame_id for f in more] == [5, 6]
    assert [read_frame_index(f.image_bgr) for f in more] == [0, 1]


def test_wrong_size_after_a_reopen_is_an_error(image_folder):
    cam = Camera(str(image_folder), log=Logs())
    cam.open()
    _, t = drain(cam, 2)
    (image_folder / "frame_00002.png").unlink()
    big = cv2.resize(render_frame(2), (1280, 720))
    assert cam.poll(now=t) is None  # lost
    cv2.imwrite(str(image_folder / "frame_00002b.png"), big)
    with pytest.raises(CameraError, match="delivers 1280x720 frames"):
        drain(cam, 1, t0=t + 0.2)


def test_unreadable_image_in_a_folder_is_skipped(image_folder):
    (image_folder / "frame_00001.png").write_bytes(b"garbage")
    logs = Logs()
    cam = Camera(str(image_folder), log=logs)
    cam.open()
    frames, _ = drain(cam, 3)
    assert [read_frame_index(f.image_bgr) for f in frames] == [0, 2, 3]
    assert [f.frame_id for f in frames] == [0, 1, 2]
    assert logs.count("frame_00001.png: not a readable image") == 1


# --- settings, the command, the node ---------------------------------------------------------------

def test_settings(image_folder):
    cam = Camera.from_settings(Settings("camera", CAMERA_SETTINGS, {"SO101_CAMERA": str(image_folder), "SO101_CAMERA_FPS": "15",
                                                   "SO101_CAMERA_LOOP": "false", "SO101_CAMERA_MAX_FRAMES": "2"}),
                               log=Logs())
    assert (cam.fps, cam.loop, cam.resize, cam.max_frames) == (15.0, False, False, 2)
    assert Camera.from_settings(Settings("camera", CAMERA_SETTINGS, {"SO101_CAMERA": "0"})).loop is False
    with pytest.raises(SettingError) as info:
        Camera.from_settings(Settings("camera", CAMERA_SETTINGS, {}))
    assert str(info.value) == ("camera: setting SO101_CAMERA is required (set it in the node's env in the "
                               "dataflow YAML)")
    with pytest.raises(SettingError, match=r"camera: SO101_CAMERA_FPS='fast' is not a number"):
        Camera.from_settings(Settings("camera", CAMERA_SETTINGS, {"SO101_CAMERA": "0", "SO101_CAMERA_FPS": "fast"}))
    with pytest.raises(SettingError, match=r"camera: SO101_CAMERA_RESIZE='maybe' must be true or false"):
        Camera.from_settings(Settings("camera", CAMERA_SETTINGS, {"SO101_CAMERA": "0", "SO101_CAMERA_RESIZE": "maybe"}))


def test_camera_check_command(image_folder, tmp_path, capsys):
    from so101_deploy.tools.cli import main

    saved = tmp_path / "first.png"
    assert main(["camera-check", str(image_folder), "--frames", "5", "--fps", "200", "--save", str(saved)]) == 0
    out = capsys.readouterr().out
    assert f"source: folder {image_folder} (folder)" in out
    assert "frames: 5 of 640x480x3 uint8 BGR, frame_id 0..4 (continuous)" in out
    np.testing.assert_array_equal(cv2.imread(str(saved)), render_frame(0))
    assert main(["camera-check", str(tmp_path / "missing.mp4")]) == 2
    assert "camera-check: error: SO101_CAMERA=" in capsys.readouterr().out


def test_camera_node_exits_with_a_clear_message_for_a_missing_file(tmp_path):
    missing = tmp_path / "missing.mp4"
    env = dict(os.environ, SO101_CAMERA=str(missing))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "nodes" / "camera" / "main.py")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"[camera] error: SO101_CAMERA={str(missing)!r}: no such file or folder" in proc.stderr



# --- the generated scene the camera tests replay ----------------------------------------------------

def test_generated_scene_is_deterministic_and_labelled():
    from so101_deploy.sim.synthetic import render_scene

    a, mask = render_scene(12, seed=3)
    np.testing.assert_array_equal(a, render_scene(12, seed=3)[0])
    assert not np.array_equal(a, render_scene(12, seed=4)[0])  # the seed changes the scene
    assert not np.array_equal(a, render_scene(13, seed=3)[0])  # and it moves
    np.testing.assert_array_equal(render_frame(0, moving=False)[60:], render_frame(40, moving=False)[60:])
    # the mask is what was drawn: cube pixels are red, finger pixels grey
    cube = a[mask == 3]
    assert len(cube) > 5000 and (cube[:, 2] > 140).all() and (cube[:, 1] < 60).all()
    fingers = a[(mask == 4) | (mask == 5)]
    assert len(fingers) > 5000 and (fingers.max(axis=1) - fingers.min(axis=1) == 0).all()
    assert set(np.unique(mask)) == {0, 1, 2, 3, 4, 5}


def test_frame_index_code_round_trip():
    for i in (0, 1, 77, 1000, 4095, 4096 + 5):
        assert read_frame_index(render_frame(i)) == i % 4096
    with pytest.raises(ValueError, match=r"expected a 480x640x3 frame, got shape \(240, 320, 3\)"):
        read_frame_index(np.zeros((240, 320, 3), np.uint8))


def test_make_video_command(tmp_path, capsys):
    from so101_deploy.tools.cli import main

    assert main(["make-video", "--out", str(tmp_path / "v.avi"), "--frames", "4", "--seed", "2"]) == 0
    cap = cv2.VideoCapture(str(tmp_path / "v.avi"))
    shown = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        shown.append(read_frame_index(image))
    assert shown == [0, 1, 2, 3]
    assert main(["make-video", "--out", str(tmp_path / "pngs"), "--frames", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["frame_00000.png", "frame_00001.png"]
    capsys.readouterr()
    assert main(["make-video", "--out", str(tmp_path / "v.gif")]) == 2
    assert "make-video: error: " in capsys.readouterr().out
