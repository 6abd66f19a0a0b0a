"""Two machines, one dataflow (dataflow.two-machines.yml): JPEG frames over the link, the deployment of
every node, the copy a cluster starts, and -- on one machine -- a coordinator with daemons `robot` and
`gpu` on loopback running the flow on the generated video and the software bus, then the `gpu` daemon
killed: the robot side holds, parks and goes limp by itself."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from so101_deploy.core.cluster import wait_for
from so101_deploy.core.dataflow import DataflowError
from so101_deploy.core.messages import MessageError, decode, encode_jpeg_image
from so101_deploy.perception.frame_gate import LinkStats
from so101_deploy.sim.synthetic import render_frame
from so101_deploy.tools.two_machines import cluster_flow, jpeg_effect, link_stats

REPO_ROOT = Path(__file__).resolve().parent.parent
FLOW = REPO_ROOT / "dataflow.two-machines.yml"
ROBOT_SIDE = {"camera", "estop", "controller", "servo"}
GPU_SIDE = {"frame_gate", "seg", "depth", "observation", "policy"}


def _node_main(node_id: str):
    spec = importlib.util.spec_from_file_location(f"two_{node_id}", REPO_ROOT / "nodes" / node_id / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


class Events:
    """A stand-in for dora.Node: yields ``events`` (a list, or a callable returning the next event or
    None to end) and keeps what the node sent."""

    def __init__(self, events):
        self.events = events
        self.sent: list[tuple[str, pa.Array, dict]] = []

    def __iter__(self):
        if callable(self.events):
            while (ev := self.events(self)) is not None:
                yield ev
        else:
            yield from self.events

    def send_output(self, output_id, value, metadata=None):
        self.sent.append((output_id, value, dict(metadata or {})))


# --- JPEG frames ---------------------------------------------------------------------------------

def test_jpeg_image_round_trip_keeps_the_frame_and_its_metadata():
    bgr = render_frame(3)
    arr, meta = encode_jpeg_image(bgr, 90, frame_id=7, stamp_ns=123)
    assert meta["encoding"] == "jpeg" and meta["jpeg_quality"] == 90 and meta["jpeg_bytes"] == len(arr)
    assert (meta["width"], meta["height"], meta["frame_id"], meta["stamp_ns"]) == (640, 480, 7, 123)
    assert len(arr) < bgr.nbytes / 8  # the point of it: 921,600 bytes raw
    msg = decode("image", arr, {**meta, "timestamp": "dora adds this"})
    assert msg.name == "image" and msg.data.shape == (480, 640, 3) and msg.data.dtype == np.uint8
    assert msg.meta["encoding"] == "bgr8" and msg.frame_id == 7 and msg.stamp_ns == 123 and "decode_ms" in msg.meta
    err = np.abs(msg.data.astype(int) - bgr.astype(int))
    assert err.mean() < 3.0, err.mean()  # quality 90: close to the raw frame, not equal


def test_jpeg_image_errors_name_what_was_expected():
    bgr = render_frame(0)
    with pytest.raises(MessageError, match=r"jpeg_quality: expected an int in \[1, 100\], got 0"):
        encode_jpeg_image(bgr, 0, frame_id=0, stamp_ns=0)
    with pytest.raises(MessageError, match=r"image.data: expected shape"):
        encode_jpeg_image(bgr[:100], 90, frame_id=0, stamp_ns=0, height=480, width=640)
    arr, meta = encode_jpeg_image(bgr, 80, frame_id=0, stamp_ns=0)
    with pytest.raises(MessageError, match=r"do not start with a JPEG marker"):
        decode("image", pa.array(np.zeros(100, np.uint8)), meta)
    with pytest.raises(MessageError, match=r"a jpeg image must be a uint8 Arrow array"):
        decode("image", pa.array(np.zeros(100, np.float32)), meta)
    with pytest.raises(MessageError, match=r"could not decode"):
        decode("image", pa.array(np.frombuffer(b"\xff\xd8" + b"\x00" * 50, np.uint8)), meta)
    with pytest.raises(MessageError, match=r"image.data: expected shape \(240, 320, 3\)"):
        decode("image", arr, {**meta, "height": 240, "width": 320})  # metadata that lies about the size


def test_camera_sends_jpeg_and_the_gate_hands_seg_and_depth_bgr8(generated_video):
    """The camera node (SO101_CAMERA_JPEG_QUALITY) and the frame gate node, the very code dora runs,
    chained through stand-ins: JPEG on the link, bgr8 out of the gate, link statistics logged."""
    deadline = time.monotonic() + 30

    def ticks(node):
        if len(node.sent) >= 3 or time.monotonic() > deadline:
            return None
        return {"type": "INPUT", "id": "tick", "value": pa.array([0]), "metadata": {}}

    cam = Events(ticks)
    rc = _node_main("camera")(node=cam, env={"SO101_CAMERA": str(generated_video), "SO101_CAMERA_FPS": "240",
                                             "SO101_CAMERA_JPEG_QUALITY": "85"})
    assert rc == 0 and len(cam.sent) == 3
    assert all(m["encoding"] == "jpeg" and m["jpeg_quality"] == 85 for _, _, m in cam.sent)
    gate = Events([{"type": "INPUT", "id": "image", "value": v, "metadata": m} for _, v, m in cam.sent])
    assert _node_main("frame_gate")(node=gate, env={}) == 0
    (out_id, value, meta), = gate.sent  # the first frame passes; the others wait for mask + disparity
    assert out_id == "image" and meta["encoding"] == "bgr8" and meta["frame_id"] == cam.sent[0][2]["frame_id"]
    assert len(value) == 480 * 640 * 3 and "decode_ms" in meta


def test_link_stats_count_payload_rate_and_times():
    stats = LinkStats()
    bgr = render_frame(0)
    for i in range(4):
        arr, meta = encode_jpeg_image(bgr, 90, frame_id=i, stamp_ns=1_000_000_000 + i * 100_000_000)
        stats.add(decode("image", arr, meta), now_ns=1_005_000_000 + i * 100_000_000)
    s = stats.summary()
    assert s["frames"] == 4 and s["frames_per_s"] == pytest.approx(10.0)
    assert s["bytes_per_frame"] == len(arr) and s["bytes_per_s"] == pytest.approx(len(arr) * 10, rel=1e-6)
    assert s["capture_to_gate_ms"]["p50"] == pytest.approx(5.0) and s["decode_ms"]["n"] == 4
    assert link_stats(f"[frame_gate] info: link stats: {json.dumps(s)}\n") == s


def test_jpeg_effect_is_measured_per_quality_and_the_comparison_is_exact():
    """The figures of docs/two-machines.md come from jpeg_effect; here its mechanics on 2 frames (the models'
    part runs in `so101-deploy two-machines jpeg`), and the observation comparison on known inputs."""
    from so101_deploy.tools.two_machines import _compare

    frames = [render_frame(i) for i in range(2)]
    res = jpeg_effect((50, 95), frames, None, None)
    lo, hi = res["qualities"][50], res["qualities"][95]
    assert lo["bytes_per_frame"] < hi["bytes_per_frame"] < res["raw_bytes_per_frame"] == 640 * 480 * 3
    assert lo["psnr_db"] < hi["psnr_db"] and lo["decode_ms_p50"] > 0
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 6, (480, 640)).astype(np.uint8)
    disp = rng.random((480, 640)).astype(np.float32)
    same = _compare([((mask, disp), (mask.copy(), disp.copy()))])
    assert same["seg_equal_84"] == 1.0 and same["disp_corr_84"] == pytest.approx(1.0)
    flipped = mask.copy()
    flipped[:, 80:320] = (flipped[:, 80:320] + 1) % 6  # half of the centre crop the observation keeps
    changed = _compare([((mask, disp), (flipped, disp[::-1].copy()))])
    assert 0.3 < changed["seg_equal_84"] < 0.7 and abs(changed["disp_corr_84"]) < 0.2


def test_action_age_gate_drops_old_actions_and_says_so_once():
    from so101_deploy.arm.controller import ActionAgeGate

    assert ActionAgeGate(0.0).check(0, 10**12, 1) == (True, None)  # off
    gate = ActionAgeGate(1.0)
    assert gate.check(stamp_ns=0, now_ns=900_000_000, frame_id=1) == (True, None)
    use, line = gate.check(stamp_ns=0, now_ns=2_500_000_000, frame_id=2)
    assert not use and "frame 2 was captured 2.50 s ago (> SO101_MAX_ACTION_AGE_S=1)" in line
    assert gate.check(stamp_ns=0, now_ns=3_000_000_000, frame_id=3) == (False, None)  # one line per episode
    use, line = gate.check(stamp_ns=3_000_000_000, now_ns=3_100_000_000, frame_id=4)
    assert use and line == "actions fresh again after 2 dropped"


def test_action_hop_times_come_from_sent_ns_and_are_parsed_back():
    from so101_deploy.arm.controller import HopTimes
    from so101_deploy.tools.two_machines import action_hop

    hop = HopTimes()
    hop.add({"sent_ns": 1_000_000}, now_ns=3_000_000)
    hop.add({"sent_ns": 1_000_000}, now_ns=5_000_000)
    hop.add({}, now_ns=9_000_000)  # an action from an older policy node: nothing to time
    hop.add({"sent_ns": True}, now_ns=9_000_000)
    s = hop.summary()
    assert s["n"] == 2 and s["p50"] == pytest.approx(3.0)
    assert action_hop(f"[controller] info: action hop ms: {json.dumps(s)}") == s and action_hop("nothing") is None


# --- the flow ------------------------------------------------------------------------------------

def test_the_safety_side_is_on_the_robot_and_perception_on_the_gpu():
    df = yaml.safe_load(FLOW.read_text())
    where = {n["id"]: (n.get("deploy") or {}).get("machine") for n in df["nodes"]}
    assert {k for k, v in where.items() if v == "robot"} == ROBOT_SIDE
    assert {k for k, v in where.items() if v == "gpu"} == GPU_SIDE
    nodes = {n["id"]: n for n in df["nodes"]}
    assert int(nodes["camera"]["env"]["SO101_CAMERA_JPEG_QUALITY"]) > 0  # frames cross the link compressed
    assert nodes["controller"]["inputs"]["action"]["queue_size"] == 1  # a stalled link replays no backlog
    assert 0 < float(nodes["controller"]["env"]["SO101_MAX_ACTION_AGE_S"]) <= 2  # nor an old action
    assert nodes["controller"]["env"].get("SO101_ESTOP") != "none" and nodes["servo"]["inputs"].get("estop")


def test_cluster_flow_makes_paths_absolute_per_machine(tmp_path):
    out = cluster_flow(FLOW, tmp_path / "flow.yml", {"robot": Path("/home/pi/so101"), "gpu": Path("/srv/so101")})
    df = yaml.safe_load(out.read_text())
    for node in df["nodes"]:
        root = "/home/pi/so101" if node["id"] in ROBOT_SIDE else "/srv/so101"
        assert node["path"] == f"{root}/nodes/{node['id']}/main.py"
        for key in ("SO101_CALIBRATION", "SO101_SEG_CHECKPOINT", "SO101_POLICY_CHECKPOINT"):
            if key in (node.get("env") or {}):
                assert node["env"][key].startswith(root + "/"), (node["id"], key)
        if node["id"] == "camera":
            assert node["env"]["SO101_CAMERA"] == "0"  # not a file: left as it is
    with pytest.raises(DataflowError, match=r"node 'frame_gate' is deployed on 'gpu'; expected one of \['robot'\]"):
        cluster_flow(FLOW, tmp_path / "bad.yml", {"robot": Path("/home/pi/so101")})


# --- on loopback: a coordinator and two daemons ---------------------------------------------------

@pytest.mark.integration
def test_two_daemons_on_loopback_run_the_flow_and_a_dead_gpu_host_parks_the_arm(tmp_path, fixture_weights):
    from so101_deploy.tools.two_machines import loopback_run

    models = {"seg": fixture_weights["seg_checkpoint"], "depth": fixture_weights["depth_hf_dir"],
              "policy": fixture_weights["policy_snapshot"]}
    nodes = ROBOT_SIDE | GPU_SIDE | {"monitor"}
    with loopback_run(models, tmp_path / "run", jpeg_quality=90, servo={"SO101_PARK_AFTER_S": "1"}) as run:
        cluster = run.cluster
        wait_for(lambda: set(cluster.node_pids(run.name)) >= nodes, 120, "every node to be running", poll_s=0.5)
        pids = cluster.node_pids(run.name)
        placed = {n: cluster.machine_of(pids[n]) for n in nodes}
        assert {n for n, m in placed.items() if m == "gpu"} == GPU_SIDE, placed
        assert {n for n, m in placed.items() if m == "robot"} == ROBOT_SIDE | {"monitor"}, placed
        # new camera frames reach the arm: the servo follows goals from actions (RUN, torque on)
        wait_for(lambda: "RUN: following goals" in run.servo_log(), 300, "the servo node to RUN", poll_s=0.5)
        assert "sending frames as JPEG, quality 90" in cluster.node_log("robot", "camera")
        assert cluster.node_log("gpu", "seg") and not cluster.node_log("robot", "seg")
        wait_for(lambda: "3 new camera frame(s) reached the arm" in cluster.node_log("robot", "monitor"), 300,
                 "3 new camera frames to reach the arm", poll_s=0.5)

        killed = cluster.kill_machine("gpu")
        assert {pids[n] for n in GPU_SIDE} <= set(killed)
        wait_for(lambda: "LIMP:" in run.servo_log(), 60, "the servo node to park and go limp", poll_s=0.2)
        log = run.servo_log()
        hold, park, limp = (log.index(s) for s in ("HOLD: no fresh goal", "PARK:", "LIMP:"))
        assert hold < park < limp, log[-2000:]
        assert "torque released on all servos" in log or "torque released" in log
        # the robot side then ends by itself: the monitor's report says what reached the arm
        report = run.out_dir / "monitor" / "report.json"
        wait_for(report.exists, 60, "the monitor's report after the servo node's exit", poll_s=0.2)
    rep = json.loads(report.read_text())
    assert rep["distinct_goal_frame_ids"] >= 3 and rep["goal_frame_ids_nondecreasing"], rep
    assert rep["goals_outside_limits"] == 0
    writes = [json.loads(ln) for ln in run.bus_log.read_text().splitlines() if ln.endswith("}")]
    last_torque = {w["id"]: w["value"] for w in writes if w["name"] == "Torque_Enable"}
    assert last_torque == {i: 0 for i in range(1, 7)}, last_torque
