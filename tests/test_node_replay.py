"""Every node's ``main(node=..., env=...)`` -- the very code ``dora run`` starts -- fed recorded messages
through :class:`so101_deploy.core.recording.ReplayNode`, and checked against something independent of
the node: the recorded output of the same real run, the library model on the same recorded frame,
the joint limits, the servo bus's own write log, the files it writes.

The recordings come from real ``dora run``s (tests/data/make_recordings.py; each folder's README says
which flow and settings): camera_replay (generated frames through the camera node), obs_sim_oracle
(the simulator's oracle perception), sim_learned (the learned-perception simulation frame by frame,
fixture weights), sim_scripted (the scripted lift through the controller) and estop (the e-stop node
on its file).  The nodes get the settings they ran with.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import signal
from pathlib import Path

import numpy as np
import pytest

from so101_deploy.core.messages import decode
from so101_deploy.core.recording import ReplayNode, read_messages, read_recording

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = REPO_ROOT / "tests" / "data" / "recordings"
LEARNED = RECORDINGS / "sim_learned"
SCRIPTED = RECORDINGS / "sim_scripted"
ORACLE = RECORDINGS / "obs_sim_oracle"


def node_main(name: str):
    """nodes/<name>/main.py imported from its path (as dora runs it, not as a package module)."""
    spec = importlib.util.spec_from_file_location(f"replay_{name}_main", REPO_ROOT / "nodes" / name / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def replay(name: str, node: ReplayNode, env: dict[str, str]) -> ReplayNode:
    """Run the node's main on the replay; it must end normally (exit code 0) after the STOP event."""
    rc = node_main(name).main(node=node, env=env)
    assert rc == 0, f"{name}: main returned {rc}"
    return node


def rec(folder: Path, topic: str) -> Path:
    path = folder / f"{topic}.arrow"
    if not path.exists():
        pytest.fail(f"{path} is missing; regenerate it with `python tests/data/make_recordings.py`")
    return path


# keys added after the recordings were made: dora-hub's `primitive`, the controller's viewer metadata
ADDED_SINCE_RECORDING = ("primitive", "requested_rad", "target_m")


def same_meta(got, want, ignore=()) -> None:
    """Equal metadata but for ``ignore``, keys added since the recordings, and the timeline stamps (times of
    this run, not the recording's)."""
    from so101_deploy.core.trace import is_stamp

    ignore = tuple(ignore) + ADDED_SINCE_RECORDING
    g = {k: v for k, v in got.meta.items() if k not in ignore and not is_stamp(k)}
    w = {k: v for k, v in want.meta.items() if k not in ignore and not is_stamp(k)}
    assert g == w


@pytest.fixture(scope="module")
def learned():
    """The learned-perception run: topic -> recorded messages."""
    return read_recording(LEARNED)


# --- the replay itself ---------------------------------------------------------------------------------

def test_replay_node_orders_by_stamp_ticks_and_keeps_what_was_sent():
    import time

    import pyarrow as pa

    from so101_deploy.core.messages import MessageError, encode

    def js(fid, stamp):
        return decode("joint_state", *encode("joint_state", np.zeros((2, 6)), frame_id=fid, stamp_ns=stamp))

    def est(fid, stamp):
        return decode("estop", *encode("estop", np.array([1], np.uint8), frame_id=fid, stamp_ns=stamp))

    node = ReplayNode([("a", [js(0, 10), js(1, 30)]), ("b", [est(0, 10), est(1, 20)])], tick_each=True,
                      ticks_before=1, ticks_after=2, tick_id="t", tick_interval_s=0.01, outputs=["out"],
                      extra_inputs=("c",))
    assert node.node_config()["inputs"].keys() == {"a", "b", "t", "c"}
    assert node.node_config()["outputs"] == ["out"]
    t0 = time.monotonic()
    events = list(node)
    assert time.monotonic() - t0 >= 0.01 * 6 * 0.9  # 7 ticks, at least 10 ms apart
    seq = [(e["type"], e["id"], (e["metadata"] or {}).get("frame_id")) for e in events]
    # equal stamps keep the order of the inputs list (a before b), then file order
    assert seq == [("INPUT", "t", None), ("INPUT", "t", None), ("INPUT", "a", 0), ("INPUT", "t", None),
                   ("INPUT", "b", 0), ("INPUT", "t", None), ("INPUT", "b", 1), ("INPUT", "t", None),
                   ("INPUT", "a", 1), ("INPUT", "t", None), ("INPUT", "t", None), ("STOP", None, None)]
    assert all(len(e["value"]) == 0 for e in events if e["id"] == "t")  # timer events carry no data
    assert node.next() is None  # over, as dora's next() once every input closed

    by_file = ReplayNode([("a", [js(0, 10), js(1, 30)]), ("b", [est(0, 10), est(1, 20)])], order="file")
    assert [(i, m["frame_id"]) for i, _, m in by_file.input_messages] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]

    node.send_output("out", *encode("estop", np.array([2], np.uint8), frame_id=5, stamp_ns=1))
    node.send_output("out", pa.array(np.array([7], np.uint8)), {"encoding": "estop", "frame_id": 6, "stamp_ns": 1})
    assert node.output_ids() == ["out"] and len(node.raw("out")) == 2
    with pytest.raises(ValueError, match="output 'other' is not declared"):
        node.send_output("other", pa.array([1]), {})
    wrong = ReplayNode([], outputs={"out": "estop"})
    wrong.send_output("out", pa.array(np.array([7], np.uint8)), {"encoding": "estop", "frame_id": 6, "stamp_ns": 1})
    with pytest.raises(MessageError, match=r"output 'out' message 0: estop.data: expected values in \[0, 2\]"):
        wrong.messages("out")
    with pytest.raises(MessageError, match="no integer stamp_ns to order by"):
        ReplayNode([("a", [(pa.array([1.0]), {})])])


# --- camera -----------------------------------------------------------------------------------------

def test_camera_sends_the_recorded_frames_from_the_recorded_source(tmp_path, camera_recording):
    from so101_deploy.sim.synthetic import write_image_folder

    recorded = read_messages(camera_recording)
    folder = tmp_path / "frames"
    write_image_folder(folder, frames=len(recorded), seed=0)  # the source the recording was made from
    # ticks 35 ms apart: every tick is due at the camera's 30 fps, so each one polls a frame
    node = ReplayNode([], ticks_before=len(recorded) + 3, tick_interval_s=0.035, outputs=["image"])
    replay("camera", node, {"SO101_CAMERA": str(folder), "SO101_CAMERA_FPS": "30", "SO101_CAMERA_LOOP": "false",
                            "SO101_CAMERA_MAX_FRAMES": str(len(recorded))})
    sent = node.messages("image")
    assert [m.frame_id for m in sent] == [m.frame_id for m in recorded] == [0, 1, 2]
    for got, want in zip(sent, recorded):
        np.testing.assert_array_equal(got.data, want.data)
        same_meta(got, want, ignore=("stamp_ns",))
    stamps = [m.stamp_ns for m in sent]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


# --- frame_gate ---------------------------------------------------------------------------------------

def test_frame_gate_passes_the_recorded_frames_in_order(learned):
    gated = learned["gated_image"]
    # as the run delivered them: each camera frame, then its mask and its disparity
    node = ReplayNode([("image", rec(LEARNED, "image")), ("mask", rec(LEARNED, "mask")),
                       ("disparity", rec(LEARNED, "disparity"))], ticks_after=1, outputs=["image"])
    replay("frame_gate", node, {"SO101_GATE_TIMEOUT_S": "60"})
    sent = node.messages("image")
    assert [m.frame_id for m in sent] == [m.frame_id for m in gated] == [0, 1]
    for got, want in zip(sent, gated):  # what the gate sent in the run, pixel for pixel
        np.testing.assert_array_equal(got.data, want.data)
        same_meta(got, want)

    # both camera frames before any answer: the second waits until both answers to the first came back
    busy = ReplayNode([("image", rec(LEARNED, "image")), ("mask", rec(LEARNED, "mask")),
                       ("disparity", rec(LEARNED, "disparity"))], order="file", outputs=["image"])
    replay("frame_gate", busy, {"SO101_GATE_TIMEOUT_S": "60"})
    events = [(e[0], e[2]["frame_id"]) for e in busy.input_messages]
    assert events == [("image", 0), ("image", 1), ("mask", 0), ("mask", 1), ("disparity", 0)]
    assert [m.frame_id for m in busy.messages("image")] == [0, 1]


# --- seg and depth ----------------------------------------------------------------------------------------

def test_seg_masks_equal_the_recorded_run_and_the_library_model(learned, fixture_weights):
    from so101_deploy.perception.seg import SegModel

    node = ReplayNode([("image", rec(LEARNED, "gated_image"))], outputs=["mask"])
    replay("seg", node, {"SO101_SEG_CHECKPOINT": str(fixture_weights["seg_checkpoint"]),
                         "SO101_SEG_BACKEND": "torch", "SO101_DEVICE": "cpu"})
    sent = node.messages("mask")
    model = SegModel.load(fixture_weights["seg_checkpoint"])
    assert [m.frame_id for m in sent] == [m.frame_id for m in learned["mask"]] == [0, 1]
    for got, want, frame in zip(sent, learned["mask"], learned["gated_image"]):
        assert got.meta["classes"] == want.meta["classes"] == "real6"
        same_meta(got, want, ignore=("latency_ms",))
        np.testing.assert_array_equal(got.data, model.predict(frame.data))  # the library on the same frame
        # the mask seg sent in the run (another CPU may round a near-tie pixel the other way)
        assert np.mean(got.data != want.data) <= 1e-3


def test_depth_disparity_equals_the_recorded_run_and_the_library_model(learned, fixture_weights):
    from so101_deploy.perception.depth import DepthModel

    node = ReplayNode([("image", rec(LEARNED, "gated_image"))], outputs=["disparity"])
    replay("depth", node, {"SO101_DEPTH_MODEL": str(fixture_weights["depth_hf_dir"]), "SO101_DEPTH_BACKEND": "torch",
                           "SO101_DEPTH_INPUT_SIZE": "266", "SO101_DEVICE": "cpu", "SO101_DEPTH_WARMUP_HW": "none"})
    sent = node.messages("disparity")
    assert [m.frame_id for m in sent] == [0, 1]
    model = DepthModel.load(fixture_weights["depth_hf_dir"], input_size=266)
    for got, frame in zip(sent, learned["gated_image"]):
        assert got.data.shape == (480, 640) and got.stamp_ns == frame.stamp_ns
        np.testing.assert_allclose(got.data, model.predict(frame.data), rtol=1e-5, atol=1e-5)
    want = learned["disparity"][0]  # the run's disparity of frame 0 (the recording keeps only that one)
    same_meta(sent[0], want, ignore=("latency_ms",))
    np.testing.assert_allclose(sent[0].data, want.data, rtol=1e-4, atol=1e-4 * float(np.ptp(want.data)))
    assert float(np.ptp(want.data)) > 0  # a real disparity, not a constant


# --- observation ------------------------------------------------------------------------------------------

def test_observation_equals_the_recorded_observation_of_the_run(learned):
    # at a shared stamp the sim sent episode_start, then joint_state, then the frame: list them so
    node = ReplayNode([("reset", rec(LEARNED, "episode_start")), ("joint_state", rec(LEARNED, "joint_state")),
                       ("mask", rec(LEARNED, "mask")), ("disparity", rec(LEARNED, "disparity"))],
                      outputs=["observation"])
    replay("observation", node, {"SO101_OBS_VELOCITY": "message"})
    sent = node.messages("observation")
    # frame 0 is the one whose mask and disparity are both recorded
    assert [m.frame_id for m in sent] == [0]
    want = learned["observation"][0]
    np.testing.assert_array_equal(sent[0].data, want.data)
    same_meta(sent[0], want)


def test_observation_of_the_oracle_stream_equals_the_library_builder():
    from so101_deploy.policy.observation import ObservationBuilder, ObservationOptions
    from so101_deploy.policy.proprio import Proprioception

    sources = [("joint_state", rec(ORACLE, "joint_state")), ("mask", rec(ORACLE, "mask")),
               ("disparity", rec(ORACLE, "disparity"))]
    node = ReplayNode(sources, outputs=["observation"])
    replay("observation", node, {"SO101_OBS_VELOCITY": "message"})
    sent = node.messages("observation")

    builder = ObservationBuilder(ObservationOptions(), Proprioception(velocity_source="message"))
    want = []
    for input_id, value, meta in node.input_messages:  # the same events, in the same order
        schema = {"joint_state": "joint_state", "mask": "seg_mask", "disparity": "disparity"}[input_id]
        msg = decode(schema, value, meta)
        if input_id == "joint_state":
            builder.add_joint_state(msg)
            continue
        obs = builder.add_mask(msg) if input_id == "mask" else builder.add_disparity(msg)
        if obs is not None:
            want.append(obs)
    masks = read_messages(rec(ORACLE, "mask"))
    assert len(sent) == len(want) == len(masks) >= 4  # the 3-frame stack rolled over
    for got, obs, m in zip(sent, want, masks):
        assert got.frame_id == obs.frame_id == m.frame_id and got.stamp_ns == m.stamp_ns
        np.testing.assert_array_equal(got.data, obs.flat)


# --- policy -------------------------------------------------------------------------------------------------

def test_policy_actions_equal_the_recorded_actions(learned, fixture_weights):
    node = ReplayNode([("observation", rec(LEARNED, "observation"))], outputs=["action"])
    replay("policy", node, {"SO101_POLICY_CHECKPOINT": str(fixture_weights["policy_snapshot"]),
                            "SO101_DEVICE": "cpu"})
    sent = node.messages("action")
    assert [m.frame_id for m in sent] == [m.frame_id for m in learned["action"]] == [0, 1]
    for got, want in zip(sent, learned["action"]):
        assert got.meta["action_space"] == want.meta["action_space"] == "cartesian"
        same_meta(got, want, ignore=("latency_ms", "sent_ns"))  # both timings of this run
        np.testing.assert_allclose(got.data, want.data, rtol=0, atol=1e-6)
    assert not np.allclose(sent[0].data, sent[1].data)  # two observations, two different actions


# --- controller ------------------------------------------------------------------------------------------

def _limits():
    from so101_deploy.arm.safety import JointLimits

    return JointLimits.from_model()


def test_controller_goals_equal_the_recorded_goals(learned):
    # settings as the recorded run: slow start 0 s, so goals do not depend on wall-clock time
    node = ReplayNode([("reset", rec(LEARNED, "episode_start")), ("joint_state", rec(LEARNED, "joint_state")),
                       ("action", rec(LEARNED, "action"))], outputs=["goal"], extra_inputs=("tick",))
    replay("controller", node, {"SO101_CONTROL_MODE": "auto", "SO101_WATCHDOG_S": "5.0", "SO101_SLOW_START_S": "0"})
    sent = node.messages("goal")
    assert [m.frame_id for m in sent] == [m.frame_id for m in learned["goal"]] == [0, 1]
    limits = _limits()
    for got, want in zip(sent, learned["goal"]):
        assert limits.contains(got.data, tol_rad=1e-9)
        same_meta(got, want)
        np.testing.assert_allclose(got.data, want.data, rtol=0, atol=1e-9)


def test_controller_follows_recorded_actions_within_limits_and_holds_on_the_recorded_estop():
    """The scripted lift's joint states and actions, with the e-stop node's recorded 'hold' messages put in
    after the 10th action and its 'clear' after the 20th: every goal inside the limits and within one
    step of the one before, one goal per action while clear, the goal held while the e-stop is engaged,
    and after the clear a restart from the present pose (within one step of it), never from the held goal."""
    from so101_deploy.core.messages import decode
    from so101_deploy.arm.controller import DEFAULT_MAX_STEP_RAD

    estop = read_messages(rec(RECORDINGS / "estop", "estop"))
    hold = [m for m in estop if int(m.data[0]) == 1]
    clear = [m for m in estop if int(m.data[0]) == 0]
    assert hold and clear
    stream = ReplayNode([("joint_state", rec(SCRIPTED, "joint_state")), ("action", rec(SCRIPTED, "action"))])
    events, actions, present = [], 0, None
    for input_id, value, meta in stream.input_messages:
        events.append((input_id, [(value, meta)]))
        if input_id == "joint_state":
            last_q = decode("joint_state", value, meta).data[0]
        if input_id == "action":
            actions += 1
            if actions == 10:
                events += [("estop", hold)]
            elif actions == 20:
                events += [("estop", clear)]
                present = last_q.copy()
    node = ReplayNode(events, order="file", outputs=["goal"], extra_inputs=("tick",))
    # the flow's settings, but no slow start: a replay runs in milliseconds, the run's ramp took 1 s
    replay("controller", node, {"SO101_CONTROL_MODE": "cartesian", "SO101_WATCHDOG_S": "0.5", "SO101_SLOW_START_S": "0"})
    sent = node.messages("goal")
    assert len(sent) == actions >= 20  # one goal per action, none from the watchdog
    assert all(g.meta["source"] == "action" for g in sent)
    limits = _limits()
    step = np.array([float(x) for x in DEFAULT_MAX_STEP_RAD.split(",")])
    for k, g in enumerate(sent):
        assert limits.contains(g.data, tol_rad=1e-9), g.data
        before = present if k == 20 else sent[k - 1].data  # after the clear: from the present pose
        if k:
            assert np.all(np.abs(g.data - before) <= step + 1e-9), k
    held = sent[10:20]  # actions 11-20 came while the e-stop held
    assert all("estop_hold" in g.meta["events"] for g in held)
    for g in held:
        np.testing.assert_array_equal(g.data, sent[9].data)
    assert "estop_hold" not in sent[20].meta["events"]
    # while clear the arm follows the actions: the goals move (the scripted approach), unlike while held
    assert np.abs(sent[9].data - sent[0].data).max() > 0.01
    # the run's controller skipped an action now and then (its action input keeps only the newest): every
    # action it answered is answered here too
    recorded = read_messages(rec(SCRIPTED, "goal"))
    assert {g.frame_id for g in recorded if g.meta["source"] == "action"} <= {g.frame_id for g in sent}


# --- servo -------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_servo_writes_the_recorded_goals_to_the_bus_and_obeys_the_recorded_estop(emulated_bus):
    from so101_deploy.arm.calibration import EXAMPLE_PATH, RAD_PER_STEP, Calibration
    from so101_deploy.arm.safety import JointLimits

    link, log = emulated_bus
    cal = Calibration.example()
    env = {"SO101_PORT": str(link), "SO101_CALIBRATION": str(EXAMPLE_PATH), "SO101_SERVO_REPLY_WINDOW_MS": "120",
           "SO101_SERVO_WATCHDOG_S": "5.0", "SO101_MAX_STEP_RAD": "0.05", "SO101_ESTOP_FILE": f"{link}.estop"}
    goals = read_messages(rec(SCRIPTED, "goal"))
    estop = read_messages(rec(RECORDINGS / "estop", "estop"))
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        # the recorded goals, a 20 ms bus tick before each, then the last one again until the arm got there
        # (the node bounds each write to 0.05 rad from the one before; the emulated arm starts at 0 rad)
        node = replay("servo", ReplayNode([("goal", rec(SCRIPTED, "goal")), ("goal", goals[-1:] * 50)],
                                          order="file", tick_each=True, ticks_after=10, tick_interval_s=0.02,
                                          outputs=["joint_state"]), env)
        writes = [json.loads(line) for line in log.read_text().splitlines()]
        # a goal, the recorded e-stop states in turn (hold, release torque, clear), a goal again
        stop = replay("servo", ReplayNode([("goal", goals[-1:]), ("estop", rec(RECORDINGS / "estop", "estop")),
                                           ("goal", goals[-1:])], order="file", tick_each=True, ticks_after=3,
                                          tick_interval_s=0.02, outputs=["joint_state"]), env)
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])

    ids = [m.id for m in cal.motors]
    limits = JointLimits.from_model().intersect(JointLimits(*cal.limits_rad()))
    last = np.clip(goals[-1].data, limits.lower_rad, limits.upper_rad)
    per_id = {i: [w["value"] for w in writes if w["name"] == "Goal_Position" and w["id"] == i] for i in ids}
    assert all(len(v) >= len(goals) + 50 for v in per_id.values())  # one write per goal (+ the slow start's)
    for k, i in enumerate(ids):  # every write inside the limits, within 0.05 rad (+ rounding) of the one before
        rad = np.array([cal.steps_to_rad(np.full(6, v))[k] for v in per_id[i]])
        assert np.all(rad >= limits.lower_rad[k] - RAD_PER_STEP) and np.all(rad <= limits.upper_rad[k] + RAD_PER_STEP)
        assert np.abs(np.diff(rad)).max() <= 0.05 + 2 * RAD_PER_STEP
    written = cal.steps_to_rad(np.array([per_id[i][-1] for i in ids], dtype=np.float64))
    # the last goal on the bus is the last recorded goal (inside the servo node's limits), to a step
    np.testing.assert_allclose(written, last, atol=2 * RAD_PER_STEP)
    states = node.messages("joint_state")
    assert len(states) >= 0.9 * (len(goals) + 60)  # a reading per tick (the odd lost reply aside)
    assert [s.frame_id for s in states] == sorted({s.frame_id for s in states})
    np.testing.assert_allclose(states[-1].data[0], last, atol=0.03)  # the arm went there
    assert [int(m.data[0]) for m in estop] == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0]
    states = stop.messages("joint_state")
    torque = [s.meta["torque"] for s in states]
    # torque waits for the first goal, stays on while the e-stop holds, goes off at 'release torque', stays
    # off after the clear (no old goal is followed) and comes back with the next goal, from the present pose
    assert [k for k, _ in itertools.groupby(torque)] == ["off", "on", "off", "on"], torque
    held = [s.meta["state"] for s in states if s.meta["estop"] == 1]
    assert held and set(held) == {"hold"}


# --- estop --------------------------------------------------------------------------------------------------

def test_estop_publishes_the_state_of_its_file_as_recorded(tmp_path):
    recorded = read_messages(rec(RECORDINGS / "estop", "estop"))
    switch = tmp_path / "so101.estop"
    content = {0: None, 1: "", 2: "release\n"}  # what the file held when the node published each state
    runs = [int(m.data[0]) for k, m in enumerate(recorded) if k == 0 or m.data[0] != recorded[k - 1].data[0]]
    assert runs == [0, 1, 2, 0]
    for state in runs:
        switch.unlink(missing_ok=True)
        if content[state] is not None:
            switch.write_text(content[state])
        node = replay("estop", ReplayNode([], ticks_before=2, outputs=["estop"]), {"SO101_ESTOP_FILE": str(switch)})
        sent = node.messages("estop")
        want = [m for m in recorded if int(m.data[0]) == state][0]
        assert [int(m.data[0]) for m in sent] == [state, state]
        assert [m.frame_id for m in sent] == [0, 1]
        same_meta(sent[0], want, ignore=("frame_id", "stamp_ns"))


# --- recorder -----------------------------------------------------------------------------------------------

def test_recorder_writes_what_it_got(tmp_path, learned):
    topics = sorted(learned)
    types = {"gated_image": "image", "mask": "seg_mask", "goal": "joint_goal", "episode_start": "joint_state"}
    node = ReplayNode([(t, rec(LEARNED, t)) for t in topics])
    replay("recorder", node, {"SO101_RECORD_DIR": str(tmp_path / "rec"),
                              "SO101_RECORD_TYPES": ",".join(f"{k}={v}" for k, v in types.items())})
    assert node.sent == []
    back = read_recording(tmp_path / "rec")
    assert sorted(back) == topics
    for t in topics:
        assert len(back[t]) == len(learned[t]) and back[t][0].name == learned[t][0].name
        for got, want in zip(back[t], learned[t]):
            np.testing.assert_array_equal(got.data, want.data)
            same_meta(got, want)  # plus the recorder's own receipt stamp (t_recorder_in_ns)
            assert "t_recorder_in_ns" in got.meta


# --- monitor -------------------------------------------------------------------------------------------------

def test_monitor_reports_the_recorded_run(tmp_path, learned):
    inputs = ("image", "mask", "disparity", "action", "goal", "joint_state")
    node = ReplayNode([(t, rec(LEARNED, t)) for t in inputs])
    replay("monitor", node, {"SO101_MONITOR_DIR": str(tmp_path / "monitor")})
    report = json.loads((tmp_path / "monitor" / "report.json").read_text())
    assert report["messages"] == {t: len(learned[t]) for t in inputs}
    assert report["video_rows"] == 1  # frame 0: the one frame with image, mask and disparity recorded
    assert (tmp_path / "monitor" / "wrist_view_first.png").is_file()
    assert report["goals_outside_limits"] == 0
    assert report["distinct_goal_frame_ids"] == 2 and report["goal_frame_ids_nondecreasing"]
    assert report["action_spaces"] == {"cartesian": 2}
    # the third joint state is the first of episode 2: episode 1 ended (1 step) without a lift
    assert report["episodes"] == {"failure": 1}
    assert "messages seen" in (tmp_path / "monitor" / "report.md").read_text()


# --- scripted_policy -------------------------------------------------------------------------------------

def test_scripted_policy_answers_recorded_joint_states_with_the_recorded_actions():
    states = read_messages(rec(SCRIPTED, "joint_state"))
    recorded = read_messages(rec(SCRIPTED, "action"))
    assert len(recorded) >= len(states) // 2
    # the run's node answered every state it got (its input keeps only the newest, so it skipped a few):
    # the states it answered, replayed, give the very actions and phases it sent
    answered = {a.frame_id for a in recorded}
    node = ReplayNode([("joint_state", [s for s in states if s.frame_id in answered])], outputs=["action"])
    replay("scripted_policy", node, {})
    sent = node.messages("action")
    assert [m.frame_id for m in sent] == [m.frame_id for m in recorded]
    for got, want in zip(sent, recorded):
        same_meta(got, want)
        np.testing.assert_allclose(got.data, want.data, rtol=0, atol=1e-6)
    assert len({m.meta["phase"] for m in sent}) > 1  # the cut spans phases of the lift

    # every joint state gets one action, in order
    every = replay("scripted_policy", ReplayNode([("joint_state", rec(SCRIPTED, "joint_state"))],
                                                 outputs=["action"]), {})
    assert [m.frame_id for m in every.messages("action")] == [s.frame_id for s in states]


# --- sim_arm ----------------------------------------------------------------------------------------------

def test_sim_arm_steps_on_the_recorded_goals_as_in_the_run(learned):
    # settings of the recorded run; its first tick sends the first frame, each goal steps it once
    env = {"SO101_SIM_SEED": "0", "SO101_SIM_EPISODE_STEPS": "1", "SO101_SIM_CAMERA": "true",
           "SO101_SIM_ORACLE": "false", "SO101_SIM_STEP_ON": "goal", "SO101_SIM_RESEND_S": "60",
           "SO101_SIM_RENDER_EVERY": "1"}
    node = ReplayNode([("goal", rec(LEARNED, "goal"))], ticks_before=1,
                      outputs=["joint_state", "episode_start", "image", "mask", "disparity"])
    replay("sim_arm", node, env)
    states = node.messages("joint_state")
    want = learned["joint_state"]
    assert [s.frame_id for s in states] == [s.frame_id for s in want] == [0, 1, 2]
    for got, w in zip(states, want):
        np.testing.assert_allclose(got.data, w.data, rtol=0, atol=1e-6)
        assert {k: got.meta[k] for k in ("episode", "episode_step", "grasped", "success")} == \
            {k: w.meta[k] for k in ("episode", "episode_step", "grasped", "success")}
        np.testing.assert_allclose([got.meta[k] for k in ("cube_x_m", "cube_y_m", "cube_z_m")],
                                   [w.meta[k] for k in ("cube_x_m", "cube_y_m", "cube_z_m")], atol=1e-6)
    starts = node.messages("episode_start")
    assert [(s.frame_id, s.meta["episode"]) for s in starts] == \
        [(s.frame_id, s.meta["episode"]) for s in learned["episode_start"]] == [(2, 2)]
    images = node.messages("image")
    assert [m.frame_id for m in images] == [0, 1, 2]  # frame 2: the new episode's first view
    for got, w in zip(images, learned["image"]):
        diff = np.abs(got.data.astype(np.int16) - w.data.astype(np.int16))
        assert diff.mean() < 0.5, f"frame {got.frame_id}: the render differs from the run's ({diff.mean():.2f})"
    assert node.output_ids()[:2] == ["joint_state", "image"]  # no oracle outputs when SO101_SIM_ORACLE=false
    assert node.raw("mask") == [] and node.raw("disparity") == []


# --- viewer -----------------------------------------------------------------------------------------------

def test_viewer_turns_the_recorded_run_into_an_rrd(tmp_path, learned):
    from so101_deploy.tools.viewer import read_rrd_counts

    inputs = ("joint_state", "image", "mask", "disparity", "observation", "action", "goal")
    out = tmp_path / "run.rrd"
    node = replay("viewer", ReplayNode([(t, rec(LEARNED, t)) for t in inputs]),
                  {"SO101_VIEW_MODE": "save", "SO101_VIEW_RRD": str(out)})
    assert node.sent == []  # a viewer sends nothing back into the graph
    got = read_rrd_counts(out)
    assert got["world/camera/image"] == len(learned["image"]) and got["world/camera/mask"] == len(learned["mask"])
    assert got["world/camera/depth"] == len(learned["disparity"]) and got["policy/action"] == len(learned["action"])
    assert got["joints/shoulder_pan/state"] == got["world/arm"] == len(learned["joint_state"])
    assert got["policy/observation/frame_0/seg"] == len(learned["observation"])


# --- lerobot_adapter -----------------------------------------------------------------------------------------

def test_lerobot_adapter_sends_the_recorded_goals_in_degrees_and_percent(learned):
    from so101_deploy.arm.calibration import EXAMPLE_PATH, Calibration
    from so101_deploy.arm.lerobot_units import LeRobotUnits

    units = LeRobotUnits(Calibration.example())
    node = replay("lerobot_adapter", ReplayNode([("goal", rec(LEARNED, "goal"))], outputs=["goal", "joint_state"],
                                                extra_inputs=("hub_joint_state",)),
                  {"SO101_CALIBRATION": str(EXAMPLE_PATH)})
    sent = [(v.to_numpy(), m) for o, v, m in node.sent if o == "goal"]
    assert len(sent) == len(learned["goal"])
    for (values, meta), want in zip(sent, learned["goal"]):
        np.testing.assert_allclose(values[:5], np.rad2deg(want.data[:5]), rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(values, units.to_lerobot(want.data), rtol=1e-6, atol=1e-4)
        assert (meta["frame_id"], meta["stamp_ns"]) == (want.frame_id, want.stamp_ns)


# --- all 15 ----------------------------------------------------------------------------------------------

def test_every_node_has_a_replay_test_here():
    nodes = {p.parent.name for p in (REPO_ROOT / "nodes").glob("*/main.py")}
    text = Path(__file__).read_text()
    assert len(nodes) == 15
    missing = [n for n in sorted(nodes) if f'replay("{n}"' not in text]
    assert not missing, f"nodes without a replay test: {missing}"


def test_committed_recordings_stay_small_and_say_how_they_were_made():
    folders = sorted(p for p in RECORDINGS.iterdir() if p.is_dir())
    assert {p.name for p in folders} == {"camera_replay", "obs_sim_oracle", "sim_learned", "sim_scripted", "estop"}
    total = 0
    for folder in folders:
        readme = (folder / "README.md").read_text()
        assert "Flow:" in readme and f"make_recordings.py {folder.name}" in readme, folder
        read_recording(folder)  # every message still passes its schema
        total += sum(p.stat().st_size for p in folder.iterdir())
    # two float disparities dominate (oracle ~0.47 MB a frame x 4, learned ~1.07 MB x 1)
    assert total < 3.5e6, f"committed recordings grew to {total / 1e6:.2f} MB"
