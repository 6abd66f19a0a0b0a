"""The monitor composes what the pipeline saw and measures what reached the arm."""

import json

import cv2
import numpy as np
import pytest

from so101_deploy.core.messages import decode, encode
from so101_deploy.tools.monitor import Monitor, colour_mask


def _msg(name, data, **meta):
    return decode(name, *encode(name, data, **meta))


def test_video_report_and_latency(tmp_path):
    mon = Monitor(tmp_path, fps=5)
    rng = np.random.default_rng(0)
    t0 = 1_000_000_000_000
    for fid in range(6):
        stamp = t0 + fid * 50_000_000
        mon.on_image(_msg("image", rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), frame_id=fid, stamp_ns=stamp))
        if fid != 3:  # frame 3 never gets a disparity: no video row for it
            mon.on_disparity(_msg("disparity", rng.random((480, 640), dtype=np.float32), frame_id=fid, stamp_ns=stamp))
        mon.on_mask(_msg("seg_mask", rng.integers(0, 6, (480, 640), dtype=np.uint8), frame_id=fid, stamp_ns=stamp,
                         classes="real6"))
        mon.on_goal(_msg("joint_goal", np.zeros(6), frame_id=fid, stamp_ns=stamp, events="clamped_step"),
                    now_ns=stamp + 40_000_000)
    rep = mon.close()
    assert rep["video_rows"] == 5
    assert rep["latency_capture_to_goal_ms"]["p50"] == 40.0
    assert abs(rep["control_rate_hz"] - 20.0) < 1e-6
    assert rep["safety_events"] == {"clamped_step": 6}
    assert rep["goal_frame_ids_nondecreasing"] and rep["distinct_goal_frame_ids"] == 6
    assert abs(rep["new_frame_goal_rate_hz"] - 20.0) < 1e-6 and rep["new_frame_latency_ms"]["n"] == 6
    assert rep["new_frame_goal_interval_ms"]["max"] == pytest.approx(50.0)
    cap = cv2.VideoCapture(str(tmp_path / "wrist_view.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 5
    still = cv2.imread(str(tmp_path / "wrist_view_still.png"))
    assert still.shape == (240, 960, 3)
    first = cv2.imread(str(tmp_path / "wrist_view_first.png"))
    assert first.shape == (240, 960, 3) and not np.array_equal(first, still)  # frame 0 vs frame 5
    assert json.loads((tmp_path / "report.json").read_text())["video_rows"] == 5
    assert "latency" in (tmp_path / "report.md").read_text()


def test_finished_simulator_episodes_are_counted(tmp_path):
    mon = Monitor(tmp_path)
    for i, prev in enumerate((None, 1, None, 0, 1)):
        meta = {} if prev is None else {"previous_episode_success": prev}
        mon.on_joint_state(_msg("joint_state", np.zeros((2, 6)), frame_id=i, stamp_ns=i, **meta))
    assert mon.report()["episodes"] == {"success": 2, "failure": 1}


def test_goals_are_checked_against_the_limits(tmp_path):
    from so101_deploy.arm.safety import JointLimits

    mon = Monitor(tmp_path, limits=JointLimits(np.full(6, -1.0), np.full(6, 1.0)))
    for fid, goal in enumerate(([0.0] * 6, [0.2, 0, 0, 0, 0, -0.1], [1.5, 0, 0, 0, 0, 0])):
        mon.on_goal(_msg("joint_goal", np.array(goal), frame_id=fid, stamp_ns=10), now_ns=20)
    rep = mon.report()
    assert rep["goals_outside_limits"] == 1
    assert rep["max_goal_step_rad"] == [1.3, 0.0, 0.0, 0.0, 0.0, 0.1]
    # a goal after a simulator reset is not a step from the previous episode's last goal
    mon.on_goal(_msg("joint_goal", np.full(6, -0.9), frame_id=3, stamp_ns=10, events="episode_restart"), now_ns=20)
    assert mon.report()["max_goal_step_rad"] == [1.3, 0.0, 0.0, 0.0, 0.0, 0.1]


def test_out_of_order_goals_are_flagged(tmp_path):
    mon = Monitor(tmp_path)
    for i, fid in enumerate((0, 2, 1, 2)):
        mon.on_goal(_msg("joint_goal", np.zeros(6), frame_id=fid, stamp_ns=10), now_ns=20 + i * 10**9)
    rep = mon.report()
    assert rep["goal_frame_ids_nondecreasing"] is False
    # frames 1 and the repeated 2 are not new: only 0 and 2 count, one second apart
    assert rep["new_frame_goal_rate_hz"] == 1.0


def test_mask_colours_distinguish_classes():
    m = np.arange(6, dtype=np.uint8).reshape(1, 6)
    colours = colour_mask(m, "real6").reshape(6, 3)
    assert len({tuple(c) for c in colours}) == 6
    sim = colour_mask(np.arange(5, dtype=np.uint8).reshape(1, 5), "sim5").reshape(5, 3)
    # sim class k is real class k+1 (remap clip(id-1, 0, 4)): same colour, same meaning
    assert (sim[1:] == colours[2:]).all()
