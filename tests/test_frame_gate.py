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


def test_seg_first_gives_depth_the_frame_when_its_mask_is_back():
    gate = FrameGate(order="seg_first")
    assert gate.on_image(frame(0), 0.0).frame_id == 0  # to seg
    assert gate.take_depth() is None  # depth waits for the mask
    gate.on_image(frame(1), 0.01)
    assert gate.on_result("mask", 0, 0.05) is None and gate.take_depth().frame_id == 0
    assert gate.take_depth() is None  # once per frame
    assert gate.on_result("disparity", 0, 0.3).frame_id == 1 and gate.take_depth() is None
    # a timed-out frame's depth turn is dropped with it
    gate.on_image(frame(2), 0.31)
    assert gate.on_tick(3.0).frame_id == 2 and gate.on_result("mask", 1, 3.1) is None and gate.take_depth() is None
    assert gate.on_result("mask", 2, 3.2) is None and gate.take_depth().frame_id == 2


def test_parallel_order_never_holds_a_frame_for_depth():
    gate = FrameGate()
    gate.on_image(frame(0), 0.0)
    gate.on_result("mask", 0, 0.1)
    assert gate.take_depth() is None


def test_an_unknown_order_is_refused():
    import pytest

    with pytest.raises(ValueError, match="seg_first"):
        FrameGate(order="depth_first")


def test_the_node_refuses_seg_first_without_its_depth_output(capsys):
    import importlib.util
    from pathlib import Path

    from conftest import StandInNode

    class Wired(StandInNode):
        def node_config(self):
            return {"inputs": {}, "outputs": ["image"]}

    script = Path(__file__).resolve().parent.parent / "nodes" / "frame_gate" / "main.py"
    spec = importlib.util.spec_from_file_location("gate_main", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(node=Wired([{"type": "STOP"}]), env={"SO101_GATE_ORDER": "seg_first"}) == 2
    assert "add it to the gate's outputs" in capsys.readouterr().err
    # and with it wired, frames go to seg on `image`, then to depth on `depth_image` when the mask is back
    image = encode("image", np.zeros((4, 6, 3), np.uint8), frame_id=0, stamp_ns=1)
    mask = encode("seg_mask", np.zeros((4, 6), np.uint8), frame_id=0, stamp_ns=1, classes="real6")
    node = StandInNode([{"type": "INPUT", "id": "image", "value": image[0], "metadata": image[1]},
                        {"type": "INPUT", "id": "mask", "value": mask[0], "metadata": mask[1]}, {"type": "STOP"}])
    assert module.main(node=node, env={"SO101_GATE_ORDER": "seg_first"}) == 0
    assert [(out, meta["frame_id"]) for out, _, meta in node.sent] == [("image", 0), ("depth_image", 0)]
