"""The frame gate hands seg and depth the same frames, newest first, and never stalls."""

import numpy as np

from so101_deploy.perception.frame_gate import FrameGate
from so101_deploy.core.messages import decode, encode


def frame(fid: int):
    return decode("image", *encode("image", np.full((4, 6, 3), fid, np.uint8), frame_id=fid, stamp_ns=1000 + fid))


def test_one_frame_in_flight_and_the_newest_goes_next():
    gate = FrameGate(timeout_s=1.0)
    assert gate.on_image(frame(0), 0.0).frame_id == 0  # idle: passes at once
    assert gate.on_image(frame(1), 0.01) is None  # busy: kept
    assert gate.on_image(frame(2), 0.02) is None  # replaces frame 1
    assert gate.on_result("mask", 0, 0.03) is None  # one answer is not enough
    assert gate.on_result("mask", 7, 0.03) is None  # answers for other frames are ignored
    nxt = gate.on_result("disparity", 0, 0.04)
    assert nxt.frame_id == 2 and int(nxt.data[0, 0, 0]) == 2
    assert gate.counters.skipped == 1 and gate.counters.completed == 1 and gate.counters.passed == 2


def test_when_idle_without_a_newer_frame_the_next_one_passes_at_once():
    gate = FrameGate()
    gate.on_image(frame(0), 0.0)
    gate.on_result("disparity", 0, 0.1)
    assert gate.on_result("mask", 0, 0.2) is None  # nothing newer yet
    assert gate.on_image(frame(1), 0.3).frame_id == 1


def test_a_lost_answer_times_out_instead_of_stalling():
    gate = FrameGate(timeout_s=0.5)
    gate.on_image(frame(0), 0.0)
    gate.on_image(frame(1), 0.1)
    assert gate.on_tick(0.4) is None
    nxt = gate.on_tick(0.6)
    assert nxt.frame_id == 1 and gate.counters.timed_out == 1
    # the late answer of the timed-out frame does not release anything
    assert gate.on_result("mask", 0, 0.7) is None and gate.on_result("disparity", 0, 0.7) is None
