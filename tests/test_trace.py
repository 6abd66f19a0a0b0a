"""Timeline stamps: every node stamps what it receives and sends, outputs carry their inputs' stamps,
the observation merges its two halves', and the monitor turns a goal's stamps into a per-stage timeline."""

import numpy as np

from so101_deploy.core import trace
from so101_deploy.core.messages import decode, encode
from so101_deploy.core.node import RAW, Handlers, NodeSpec, run_node
from so101_deploy.tools.monitor import Monitor, render_markdown

from conftest import StandInNode as Events  # a stand-in dora node


def _event(input_id, name, data, **meta):
    value, metadata = encode(name, data, **meta)
    return {"type": "INPUT", "id": input_id, "value": value, "metadata": metadata}


def test_a_node_stamps_receipt_and_send_and_carries_its_inputs_stamps():
    spec = NodeSpec("seg", (), inputs={"image": "estop", "tick": RAW}, outputs=("mask",))
    sent_on_tick = encode("estop", np.array([0], np.uint8), frame_id=9, stamp_ns=9)

    def build(settings, ctx):
        def on_image(msg):
            ctx.send("mask", *encode("estop", msg.data, frame_id=msg.frame_id, stamp_ns=msg.stamp_ns))

        return Handlers(on_input={"image": on_image}, on_tick={"tick": lambda: ctx.send("mask", *sent_on_tick)})

    node = Events([_event("image", "estop", np.array([1], np.uint8), frame_id=1, stamp_ns=5, t_camera_out_ns=7),
                   {"type": "INPUT", "id": "tick", "value": None}, {"type": "STOP"}])
    assert run_node(spec, build, node=node, env={}) == 0
    (_, _, from_input), (_, _, from_tick) = node.sent
    assert from_input["t_camera_out_ns"] == 7
    assert 7 < from_input["t_seg_in_ns"] <= from_input["t_seg_out_ns"]
    # a send outside any input (a timer) carries only its own stamp, never a stale input's
    assert trace.stamps(from_tick).keys() == {"t_seg_out_ns"}


def test_stamps_chosen_by_the_node_are_kept_and_bad_values_ignored():
    meta = trace.outgoing("frame_gate", {"frame_id": 1, "t_camera_out_ns": 3}, ({"t_seg_out_ns": 99},))
    assert "t_seg_out_ns" not in meta and meta["t_camera_out_ns"] == 3 and "t_frame_gate_out_ns" in meta
    assert trace.stamps({"t_x_ns": True, "t_y_ns": "1", "t_z_ns": 4, "t_w": 5, "stamp_ns": 6}) == {"t_z_ns": 4}


def test_the_observation_carries_both_halves_stamps():
    from so101_deploy.policy.observation import ObservationBuilder, ObservationNode

    class Proprio:
        vector = np.zeros(18, np.float32)

    node = ObservationNode(ObservationBuilder(proprio=Proprio()))
    mask = decode("seg_mask", *encode("seg_mask", np.ones((480, 640), np.uint8), frame_id=4, stamp_ns=10,
                                      classes="real6", t_seg_out_ns=20, t_frame_gate_out_ns=12))
    disp = decode("disparity", *encode("disparity", np.ones((480, 640), np.float32), frame_id=4, stamp_ns=10,
                                       t_depth_out_ns=30, t_frame_gate_out_ns=12))
    assert node.on_mask(mask) is None
    _, meta = node.on_disparity(disp)
    assert trace.stamps(meta) == {"t_seg_out_ns": 20, "t_depth_out_ns": 30, "t_frame_gate_out_ns": 12}


def test_the_monitor_reports_the_timeline_up_to_the_servo_write(tmp_path):
    mon = Monitor(tmp_path)
    ms = 1_000_000
    t0 = 10**18
    for fid in range(10):
        cap = t0 + fid * 300 * ms
        stamps = {"t_camera_out_ns": cap + 2 * ms, "t_seg_out_ns": cap + 60 * ms, "t_depth_out_ns": cap + 220 * ms,
                  "t_controller_out_ns": cap + 230 * ms}
        mon.on_goal(decode("joint_goal", *encode("joint_goal", np.zeros(6), frame_id=fid, stamp_ns=cap, **stamps)),
                    now_ns=cap + 231 * ms)
        mon.on_joint_state(decode("joint_state", *encode("joint_state", np.zeros((2, 6)), frame_id=fid, stamp_ns=cap,
                                                         goal_frame_id=fid, t_servo_write_ns=cap + 233 * ms)))
    line = mon.report()["timeline_ms"]
    assert list(line) == ["camera_out", "seg_out", "depth_out", "controller_out", "servo_write"]
    assert line["depth_out"]["p50"] == 220.0 and line["servo_write"]["p50"] == 233.0
    assert line["servo_write"]["n"] == 7  # the first 3 frames are warm-up
    md = render_markdown(mon.close())
    assert "| depth_out | 220.0 | 220.0 | +160.0 |" in md


def test_session_memory_names_a_node_once_it_has_exec_d():
    """A node's process is first dora's fork (no node id yet): it must be named after its exec, not ignored
    for good (the bench once lost the depth node that way)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from so101_deploy.core.dataflow import SessionMemory

    later = ("import os, sys, time; time.sleep(0.5); "
             "os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', 'nodes/fake' + 'node/main.py'])")
    proc = subprocess.Popen([sys.executable, "-c", later], start_new_session=True)
    try:
        mem = SessionMemory()
        mem.sample(proc.pid)
        assert mem.peak_mb == {}  # before the exec: not a node (yet)
        deadline = time.monotonic() + 30
        while b"fakenode" not in open(f"/proc/{proc.pid}/cmdline", "rb").read():
            assert time.monotonic() < deadline, "the child never exec'd"
            time.sleep(0.05)
        mem.sample(proc.pid)
        assert set(mem.peak_mb) == {"fakenode"} and mem.peak_mb["fakenode"] > 1
        # the proportional share is never more than the whole resident set
        assert set(mem.peak_pss_mb) == {"fakenode"} and 0 < mem.peak_pss_mb["fakenode"] <= mem.peak_mb["fakenode"]
        time.sleep(0.2)
        mem.sample(proc.pid)
        cpu = mem.cpu_percent()  # a sleeping process: a share of one core near 0
        assert set(cpu) == {"fakenode"} and 0 <= cpu["fakenode"] < 50
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
