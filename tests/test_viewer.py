"""The rerun view (nodes/viewer, so101_deploy.tools.viewer, `so101-deploy view`) and the dora-hub conventions:
every .rrd is read back with the rerun SDK and its entity paths and row counts checked."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from so101_deploy.core.messages import JOINT_NAMES, HubStamps, MessageError, decode, dora_timestamp_ns, encode
from so101_deploy.core.recording import ReplayNode, read_recording
from so101_deploy.tools import viewer as V
from conftest import RECORDINGS_DIR, REPO_ROOT, recorded_count

LEARNED = RECORDINGS_DIR / "sim_learned"
ESTOP = RECORDINGS_DIR / "estop"


def _main(node_id: str):
    spec = importlib.util.spec_from_file_location(f"node_{node_id}", REPO_ROOT / "nodes" / node_id / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def expected_counts(rec: dict, latency: bool) -> Counter:
    """What the view must log for a recording, counted from the recording itself (one row per message and
    entity; a goal with `events` is one safety line; an e-stop line per change)."""
    n = {k: len(v) for k, v in rec.items()}
    want = Counter({"world/camera/image": n.get("image", 0), "world/camera/mask": n.get("mask", 0),
                    "world/camera/depth": n.get("disparity", 0), "policy/action": n.get("action", 0),
                    "world/arm": n.get("joint_state", 0), "world/camera": n.get("joint_state", 0)})
    for k in range(3):
        want[f"policy/observation/frame_{k}/seg"] = want[f"policy/observation/frame_{k}/disparity"] = \
            n.get("observation", 0)
    for j in JOINT_NAMES:
        want[f"joints/{j}/state"] = n.get("joint_state", 0)
        want[f"joints/{j}/goal"] = n.get("goal", 0)
        want[f"joints/{j}/clamp"] = sum("requested_rad" in m.meta for m in rec.get("goal", []))
    targets = sum("target_m" in m.meta for m in rec.get("goal", []))
    want["controller/target"] = want["world/target"] = targets
    want["events/safety"] = sum(bool(str(m.meta.get("events", "")).strip()) for m in rec.get("goal", []))
    states = [int(m.data[0]) for m in rec.get("estop", [])]
    want["events/estop"] = sum(1 for i, s in enumerate(states) if i == 0 or s != states[i - 1])
    if latency:
        for stage, topic in (("seg", "mask"), ("depth", "disparity"), ("observation", "observation"),
                             ("policy", "action"), ("controller", "goal")):
            want[f"latency/{stage}"] = n.get(topic, 0)
    return +want  # drop zero counts: an entity never logged is not in the file


def test_a_recording_becomes_an_rrd_with_every_entity(tmp_path, capsys):
    from so101_deploy.tools import cli

    out = tmp_path / "run.rrd"
    assert cli.main(["view", str(LEARNED), "--out", str(out)]) == 0
    got = V.read_rrd_counts(out)
    rec = read_recording(LEARNED)
    want = expected_counts({k: rec[k] for k in V.INPUTS if k in rec}, latency=False)
    assert got == want
    # every part of the view is there: camera, mask, depth, observation planes, action, joints, arm, safety
    assert {"world/camera/image", "world/camera/mask", "world/camera/depth", "policy/observation/frame_2/seg",
            "policy/action", "joints/gripper/state", "joints/gripper/goal", "world/arm", "events/safety"} <= set(got)
    printed = capsys.readouterr().out
    assert f"{sum(want.values())} rows in {len(want)} entities" in printed


def test_the_rrd_carries_the_class_names_the_camera_model_and_the_arm(tmp_path):
    from rerun.chunk import RrdReader

    out = tmp_path / "run.rrd"
    V.view_recording(LEARNED, out)
    static: dict[str, list] = {}
    for chunk in RrdReader(str(out)).stream().to_chunks():
        if chunk.is_static:
            static.setdefault(str(chunk.entity_path).lstrip("/"), []).append(chunk.to_record_batch())
    cam = static["world/camera"]
    text = " ".join(str(b.to_pydict()) for b in cam)
    for name in ("unlabeled", "background", "table", "cube", "static_finger", "moving_finger"):
        assert name in text  # the annotation context of the mask
    columns = {c for b in cam for c in b.schema.names}
    assert {"AnnotationContext:context", "Pinhole:image_from_camera"} <= columns, columns  # so the depth is a point cloud
    assert "policy/observation" in static  # the sim 5-class context of the observation planes
    # the camera planes at SO101_VIEW_SCALE 0.5 of the 640x480 frames, the image as JPEG
    assert "[320.0, 240.0]" in text
    image_columns = {c for chunk in RrdReader(str(out)).stream().to_chunks()
                     if str(chunk.entity_path) == "/world/camera/image" for c in chunk.to_record_batch().schema.names}
    assert "EncodedImage:blob" in image_columns, image_columns


def test_the_arm_model_follows_the_controller_kinematics():
    from so101_deploy.arm.kinematics import Kinematics

    arm, kin = V.ArmModel(), Kinematics()
    for q in (np.zeros(6), np.array([0.4, -0.8, 0.9, 0.6, -1.0, 0.5])):
        segs, cam_pos, cam_mat = arm.pose(q)
        names = [s[0] for s in segs]
        assert names[-2:] == ["static_finger", "moving_finger"] and len(segs) == 7
        site, _ = kin.site_pose(q)
        np.testing.assert_allclose(segs[-2][2], site, atol=1e-9)  # the static finger ends at the gripperframe
        for (_, a, b), (_, c, _) in zip(segs[:-3], segs[1:-2]):
            np.testing.assert_allclose(b, c)  # a chain
        np.testing.assert_allclose(cam_mat @ cam_mat.T, np.eye(3), atol=1e-9)
        assert np.linalg.norm(cam_pos - segs[5][1]) < 0.1  # the camera sits on the gripper
    with pytest.raises(V.ViewError, match="6 finite joint angles"):
        arm.pose(np.array([np.nan] * 6))


def test_pseudo_depth_is_near_for_large_disparity():
    d = np.array([[0.0, 1.0], [2.0, 4.0]], np.float32)
    z = V.pseudo_depth(d)
    assert z[1, 1] == pytest.approx(V.PSEUDO_DEPTH_NEAR_M) and z[0, 0] == pytest.approx(V.PSEUDO_DEPTH_FAR_M)
    assert z[0, 1] > z[1, 0] > z[1, 1]
    assert np.all(V.pseudo_depth(np.ones((2, 2), np.float32)) == pytest.approx(V.PSEUDO_DEPTH_FAR_M))


def test_the_viewer_node_replays_a_run_and_the_estop(tmp_path):
    """The node itself (save mode) fed a recorded run plus e-stop changes; latency comes from the clock when
    there is no dora timestamp, and every goal with explain metadata gives clamps and the target."""
    rec = read_recording(LEARNED)
    estop = read_recording(ESTOP)["estop"]
    goals = []
    for m in rec["goal"]:  # goals as the controller sends them now: with requested_rad and target_m
        req = np.asarray(m.data) + 0.01
        goals.append(encode("joint_goal", m.data, **m.meta, requested_rad=",".join(map(str, req)),
                            target_m="0.25,0.0,0.1"))
    inputs = [(k, LEARNED / f"{k}.arrow") for k in ("joint_state", "image", "mask", "disparity", "observation",
                                                     "action")]
    inputs += [("goal", goals), ("estop", ESTOP / "estop.arrow")]
    out = tmp_path / "live.rrd"
    assert _main("viewer")(node=ReplayNode(inputs), env={"SO101_VIEW_MODE": "save", "SO101_VIEW_RRD": str(out)}) == 0
    got = V.read_rrd_counts(out)
    sent = {k: rec[k] for k in ("joint_state", "image", "mask", "disparity", "observation", "action")}
    sent["goal"] = [decode("joint_goal", *g) for g in goals]
    sent["estop"] = estop
    assert got == expected_counts(sent, latency=True)
    assert got["joints/wrist_roll/clamp"] == len(goals) and got["world/target"] == len(goals)
    assert got["events/estop"] >= 2  # the recording engages and releases


def test_bad_view_settings_are_one_line(tmp_path, caplog):
    assert _main("viewer")(node=ReplayNode([]), env={"SO101_VIEW_MODE": "film"}) == 2
    assert "SO101_VIEW_MODE='film' must be one of" in caplog.text
    with pytest.raises(V.ViewError, match="not a recording folder"):
        V.view_recording(tmp_path / "nothing", tmp_path / "x.rrd")
    with pytest.raises(V.ViewError, match="not view inputs"):
        V.view_recording(LEARNED, tmp_path / "x.rrd", topics={"gated_image": "picture"})


# --- the controller explains its goals ---------------------------------------------------------------

def test_goals_from_actions_carry_the_request_and_the_target():
    from so101_deploy.arm.controller import CartesianController, ControlLoop, Output, explain_meta
    from so101_deploy.arm.kinematics import Kinematics
    from so101_deploy.arm.safety import JointLimits, SafetyFilter

    kin = Kinematics()
    loop = ControlLoop(SafetyFilter(JointLimits.from_model(), max_step_rad=0.01, watchdog_s=1.0), cartesian=CartesianController(kin))
    loop.on_joint_state(np.zeros((2, 6)), 0.0)
    out = loop.on_action(np.array([1.0, 0.0, -1.0, 1.0], np.float32), "cartesian", 0.01)
    meta = explain_meta(out)
    req = np.array([float(x) for x in meta["requested_rad"].split(",")])
    target = np.array([float(x) for x in meta["target_m"].split(",")])
    np.testing.assert_allclose(target, loop.cartesian.target_m, atol=1e-6)
    assert np.abs(req - out.goal_rad).max() > 0.01  # the step bound moved it: the clamp the viewer plots
    assert "clamped_step" in out.events
    assert explain_meta(Output(np.zeros(6), [], "cartesian", "watchdog")) == {}  # a watchdog hold has neither
    out.target_m = np.array([np.nan, 0.0, 0.0])
    assert set(explain_meta(out)) == {"requested_rad"}  # a non-finite value is left out, not sent


# --- dora-hub conventions ------------------------------------------------------------------------------

HUB_META = {"encoding": "bgr8", "width": 64, "height": 48}


def test_hub_images_get_a_counter_and_dora_s_timestamp(caplog):
    lines = []
    hub = HubStamps("image", lines.append)
    t = dt.datetime(2026, 12, 2, 16, 0, 0, 123456, tzinfo=dt.timezone.utc)
    metas = [hub.fill({**HUB_META, "timestamp": t + dt.timedelta(milliseconds=33 * i)}) for i in range(3)]
    assert [m["frame_id"] for m in metas] == [0, 1, 2]
    assert [m["stamp_ns"] for m in metas] == [dora_timestamp_ns({"timestamp": t}) + 33_000_000 * i for i in range(3)]
    assert metas[0]["stamp_ns"] == 1796227200123456000
    assert len(lines) == 1 and "no frame_id/stamp_ns" in lines[0]
    # a project message keeps its own ids; a half-stamped one is still refused by the schema
    assert hub.fill({**HUB_META, "frame_id": 7, "stamp_ns": 5})["frame_id"] == 7
    img = pa.array(np.zeros(48 * 64 * 3, np.uint8))
    with pytest.raises(MessageError, match=r"missing \['stamp_ns'\]"):
        decode("image", img, hub.fill({**HUB_META, "frame_id": 3}))
    with pytest.raises(MessageError, match="timestamp"):
        dora_timestamp_ns({"timestamp": "yesterday"})


def test_outputs_carry_the_hub_primitive():
    _, meta = encode("image", np.zeros((4, 5, 3), np.uint8), frame_id=0, stamp_ns=1)
    assert meta["primitive"] == "image"
    _, meta = encode("disparity", np.zeros((4, 5), np.float32), frame_id=0, stamp_ns=1)
    assert meta["primitive"] == "depth"
    _, meta = encode("joint_goal", np.zeros(6), frame_id=0, stamp_ns=1)
    assert "primitive" not in meta


def test_frame_gate_takes_hub_frames(caplog):
    """The frame gate fed exactly what the hub camera sends: frames numbered from 0, stamped with dora's
    timestamp, one log line; before this it rejected every frame (`missing ['frame_id', 'stamp_ns']`)."""
    t0 = dt.datetime(2026, 12, 2, 16, 0, 0, tzinfo=dt.timezone.utc)
    frames = [(pa.array(np.full(480 * 640 * 3, i, np.uint8)),
               {"encoding": "bgr8", "width": 640, "height": 480, "timestamp": t0 + dt.timedelta(seconds=i)})
              for i in range(3)]
    node = ReplayNode([("image", frames)], order="file", outputs={"image": "image"},
                      extra_inputs=("mask", "disparity"), ticks_after=1)
    assert _main("frame_gate")(node=node, env={}) == 0
    sent = node.messages("image")
    assert [m.frame_id for m in sent] == [0]  # the gate holds the next frames until seg and depth answer
    assert sent[0].stamp_ns == dora_timestamp_ns({"timestamp": t0})
    assert caplog.text.count("no frame_id/stamp_ns") == 1
    assert "rejected" not in caplog.text


def hub_camera_flow(rec_dir: Path, rrd: Path) -> dict:
    """A stand-in hub camera (exactly opencv-video-capture's format) -> the recorder and the viewer (save
    mode, queue_size 1)."""
    return {"nodes": [
        {"id": "camera", "path": str(REPO_ROOT / "tests" / "data" / "hub_camera_standin.py"),
         "inputs": {"tick": "dora/timer/millis/50"}, "outputs": ["image"]},
        {"id": "recorder", "path": str(REPO_ROOT / "nodes" / "recorder" / "main.py"),
         "env": {"SO101_RECORD_DIR": str(rec_dir)},
         "inputs": {"image": "camera/image", "tick": "dora/timer/millis/100"}},
        {"id": "viewer", "path": str(REPO_ROOT / "nodes" / "viewer" / "main.py"),
         "env": {"SO101_VIEW_MODE": "save", "SO101_VIEW_RRD": str(rrd)},
         "inputs": {"image": {"source": "camera/image", "queue_size": 1}}},
    ]}


@pytest.mark.integration
def test_a_hub_camera_feeds_the_recorder_and_the_viewer_under_dora(tmp_path, venv_bin):
    """Under `dora run`: a stand-in that sends exactly dora-hub's camera format -> the recorder and the
    viewer (save mode, queue_size 1).  Every frame is recorded with frame ids from 0 and dora's stamps; the
    .rrd read back has one camera image per frame the viewer took."""
    from so101_deploy.core.dataflow import run_dataflow

    rec_dir, rrd = tmp_path / "rec", tmp_path / "view.rrd"
    flow = hub_camera_flow(rec_dir, rrd)
    path = tmp_path / "hub.yml"
    path.write_text(yaml.safe_dump(flow))
    env = {"PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    # until the viewer has written an image (it joined the dataflow) and the recorder has 8 frames
    res = run_dataflow(path, 120, extra_env=env, grace_s=60,
                       until=lambda log: recorded_count(rec_dir / "image.arrow") >= 8 and _rows(rrd, "world/camera/image"))
    assert res.returncode == 0 and res.condition_met, res.log[-3000:]
    msgs = read_recording(rec_dir)["image"]
    n = len(msgs)
    assert n >= 8 and [m.frame_id for m in msgs] == list(range(n))
    stamps = np.array([m.stamp_ns for m in msgs])
    assert (np.diff(stamps) > 0).all() and 0.02 < np.median(np.diff(stamps)) / 1e9 < 1.0  # dora's clock, 50 ms timer
    assert res.log.count("no frame_id/stamp_ns") == 2  # once per node that takes the hub frames
    assert "rejected" not in res.log and "Traceback" not in res.log
    got = V.read_rrd_counts(rrd)
    assert 1 <= got["world/camera/image"] <= n + 5  # queue_size 1: the viewer may skip frames, never adds
    assert f"logged {got['world/camera/image']} rows to 1 entities" in res.log


def _rows(rrd: Path, entity: str) -> int:
    """Rows of ``entity`` in an .rrd being written (0 while it does not exist or holds no complete chunk)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a file still being written has no footer yet: the reader says so
            return V.read_rrd_counts(rrd)[entity]
    except Exception:  # noqa: BLE001 - not there yet, or cut mid-chunk
        return 0


def _pids_with_env(key: str, value: str) -> list[int]:
    """Live processes whose environment has key=value (a node dora started with that env)."""
    want = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if want in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.integration
def test_a_viewer_killed_mid_run_does_not_stop_the_graph(tmp_path, venv_bin):
    """kill -9 of the viewer: the camera -> recorder path keeps going (the viewer has no outputs, nothing
    waits for it)."""
    import signal

    from so101_deploy.core.dataflow import run_dataflow

    rec_dir, rrd = tmp_path / "rec", tmp_path / "view.rrd"
    flow = hub_camera_flow(rec_dir, rrd)
    path = tmp_path / "kill.yml"
    path.write_text(yaml.safe_dump(flow))
    state = {"killed_at": None}

    def until(log: str) -> bool:
        n = recorded_count(rec_dir / "image.arrow")
        if state["killed_at"] is None:
            if _rows(rrd, "world/camera/image") and n >= 3:  # the viewer joined and took an image
                pids = _pids_with_env("SO101_VIEW_RRD", str(rrd))
                assert len(pids) == 1, pids
                os.kill(pids[0], signal.SIGKILL)
                state["killed_at"] = n
            return False
        return n >= state["killed_at"] + 10  # ten more frames recorded after the viewer died

    env = {"PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = run_dataflow(path, 120, extra_env=env, grace_s=60, until=until)
    assert state["killed_at"] is not None and res.condition_met, res.log[-3000:]
    msgs = read_recording(rec_dir)["image"]
    assert [m.frame_id for m in msgs] == list(range(len(msgs)))  # nothing lost on the recorder's side
    assert not _pids_with_env("SO101_VIEW_RRD", str(rrd))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_the_served_web_viewer_draws_the_run_in_headless_chromium(tmp_path):
    """Serve mode (a headless robot computer): the web viewer on a local port, opened by headless Chromium
    (software WebGL); the screenshot must show the drawn view, not a loading page."""
    from so101_deploy.tools.web_shot import ShotError, find_chromium, screenshot

    if find_chromium() is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium): the served viewer is not screenshotted")
    web, grpc = _free_port(), _free_port()
    rec, url = V.open_stream("serve", web_port=web, grpc_port=grpc)
    assert url.startswith(f"http://127.0.0.1:{web}/?url=rerun+http://127.0.0.1:{grpc}/proxy")
    view = V.RerunView(rec, V.ArmModel())
    handlers = view.handlers()
    recorded = read_recording(LEARNED)
    for _, topic, msg in sorted(((m.stamp_ns, t, m) for t, ms in recorded.items() if t in V.INPUTS for m in ms),
                                key=lambda r: r[0]):
        handlers[topic](msg)
    rec.flush()
    out = tmp_path / "served.png"
    try:
        colours = screenshot(url.replace("rerun+http", "rerun%2Bhttp"), out, 1200, 800, timeout_s=150)
    except ShotError as e:
        if "no WebGL" in str(e):
            pytest.skip(f"headless Chromium cannot render the web viewer here: {e}")
        raise
    finally:
        rec.disconnect()
    import cv2

    img = cv2.imread(str(out))
    assert img.shape == (800, 1200, 3) and colours >= 5000


def test_the_readme_s_viewer_block_joins_the_real_arm_flow(tmp_path):
    """The README's one YAML block, added to dataflow.yml: every input it wires exists, dora 1.1 validates
    it with strict types, and the project's own start-up checks pass."""
    import re
    import subprocess

    from so101_deploy.core.dataflow import dora_executable
    from so101_deploy.tools.check_flow import check_flow

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Live view (rerun)", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    (node,) = yaml.safe_load(block)
    assert node["id"] == "viewer" and set(node["inputs"]) == set(V.INPUTS)
    heavy = {"image", "mask", "disparity", "observation"}
    assert all(v["queue_size"] == (1 if k in heavy else 10) for k, v in node["inputs"].items())
    flow = yaml.safe_load((REPO_ROOT / "dataflow.yml").read_text())
    for n in flow["nodes"]:
        n["path"] = str(REPO_ROOT / n["path"])
    node["path"] = str(REPO_ROOT / node["path"])
    flow["nodes"].append(node)
    path = tmp_path / "dataflow.with-viewer.yml"
    path.write_text(yaml.safe_dump(flow))
    found, _ = check_flow(path)
    assert found == []
    res = subprocess.run([dora_executable(), "validate", "--strict-types", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and "All type annotations OK" in res.stdout + res.stderr, res.stdout + res.stderr
