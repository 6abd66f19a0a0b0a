"""Regenerate EVERY committed recording in tests/data/recordings/ from real ``dora run``s.

    python tests/data/make_recordings.py            # all of them (about 3 minutes on 2 busy cores)
    python tests/data/make_recordings.py sim_learned estop   # only these

Each recording is what the project's recorder node (nodes/recorder/main.py) wrote while a shipped
dataflow ran under ``dora run`` with a recorder added (``so101_deploy.core.dataflow.prepare``), then
cut to its first few frames so the committed data stays small: every message kept is byte for byte
what crossed dora.  Each folder gets a README.md saying which flow, which settings and which cut
made it.  The script checks what it recorded (frame ids in order, counts, pairing) and exits
non-zero with a message naming the recording when something is off.

Recordings (the tests in tests/test_node_replay.py replay them through every node's main):

camera_replay/
    dataflow.replay.yml: a folder of generated PNG frames (``so101_deploy.sim.synthetic``, lossless,
    so each recorded frame equals ``synthetic.render_frame(i)``) -> camera -> recorder.
obs_sim_oracle/
    dataflow.sim-oracle.yml (fixture policy), the sim arm stepping on its 20 ms timer and rendering
    every 4th step, as the recording was first made: oracle mask + disparity + joint states.
sim_learned/
    dataflow.sim.yml (fixture seg, depth and policy weights) with dataflow.yml's frame gate put
    between the sim's wrist camera and seg + depth: image, gated_image, mask, disparity,
    joint_state, episode_start, observation, action, goal of the first 2 camera frames, up to the
    episode reset their goals lead to.
sim_scripted/
    dataflow.sim-scripted.yml: joint_state, action (scripted policy) and goal of the first steps.
estop/
    dataflow.yml's estop node on a file the script creates, fills with "release" and removes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from so101_deploy.core.dataflow import load, prepare, run_dataflow
from so101_deploy.core.recording import SUFFIX, TopicWriter, iter_messages, read_messages, read_recording
from so101_deploy.sim.synthetic import render_frame, write_image_folder
from so101_deploy.tools.replay import summarize

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
RECORDINGS = HERE / "recordings"
RECORDER = REPO_ROOT / "nodes" / "recorder" / "main.py"
SCRIPT = "python tests/data/make_recordings.py"

CAMERA_FRAMES = 3
# A 640x480 float disparity costs ~0.45 MB (oracle, zstd 19) to ~1.07 MB (the random-weight depth model:
# noise does not compress) a frame, so the cuts are short: 4 oracle frames (test_observation and
# test_policy need 4 for the 3-frame stack to roll over), 2 learned frames with the disparity of the first.
ORACLE_FRAMES = 4
ORACLE_RENDER_EVERY = 4
LEARNED_FRAMES = 2
LEARNED_DISPARITY_FRAMES = 1
ZSTD_LEVEL = 19  # committed files are written once: the slow, small zstd level
LEARNED_EPISODE_STEPS = 1  # frames 0, 1 in episode 1; the state answering goal 1 starts episode 2 (episode_start)
SCRIPTED_STATES = 30


class RecordingError(RuntimeError):
    """What a recording run produced is not what the tests need."""


def fail(name: str, message: str) -> None:
    raise RecordingError(f"{name}: {message}")


# --- helpers --------------------------------------------------------------------------------------

def recorder_node(record_dir: Path, topics: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """A recorder node: topic -> (dora source, message schema); every message queued, none dropped."""
    return {"id": "recorder", "path": str(RECORDER), "restart_policy": "never",
            "env": {"SO101_RECORD_DIR": str(record_dir),
                    "SO101_RECORD_TYPES": ",".join(f"{t}={schema}" for t, (_, schema) in topics.items())},
            "inputs": {t: {"source": src, "queue_size": 1000} for t, (src, _) in topics.items()}}


def edit_flow(path: Path, edit: Callable[[dict[str, dict]], None]) -> Path:
    """Apply ``edit(nodes by id)`` to a prepared dataflow file (rewiring that env overrides cannot do)."""
    df = yaml.safe_load(path.read_text())
    edit({n["id"]: n for n in df["nodes"]})
    path.write_text(yaml.safe_dump(df, sort_keys=False))
    return path


def dora_run(name: str, flow: Path, seconds: float, log_dir: Path) -> None:
    print(f"[{name}] dora run {flow.name} --stop-after {seconds:.0f}s", flush=True)
    result = run_dataflow(flow, seconds, log_path=log_dir / f"{name}.dora.log")
    if result.returncode != 0:
        fail(name, f"dora run failed ({result.returncode}), log {log_dir / f'{name}.dora.log'}:\n{result.log[-3000:]}")
    print(f"[{name}] dora run took {result.wall_s:.0f} s", flush=True)


def cut(name: str, src: Path, dst: Path, keep: dict[str, Callable[[dict[str, Any]], bool]]) -> dict[str, int]:
    """Copy the recorded messages ``keep[topic](metadata)`` accepts, unchanged, in recorded order,
    into a fresh folder ``dst``; every topic in ``keep`` must have been recorded."""
    missing = [t for t in keep if not (src / f"{t}{SUFFIX}").exists()]
    if missing:
        fail(name, f"nothing was recorded on {missing} (recorded: {sorted(p.stem for p in src.glob('*' + SUFFIX))})")
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    counts = {}
    for topic, accept in keep.items():
        writer = None
        for value, meta, message in iter_messages(src / f"{topic}{SUFFIX}"):
            if accept(meta):
                writer = writer or TopicWriter(dst / f"{topic}{SUFFIX}", message, compression_level=ZSTD_LEVEL)
                writer.write(value, meta)
        if writer is None:
            fail(name, f"the cut keeps no {topic} message")
        writer.close()
        counts[topic] = writer.count
    read_recording(dst)  # every kept message passes its schema again
    return counts


def frame_ids(messages) -> list[int]:
    return [m.frame_id for m in messages]


def expect_ids(name: str, topic: str, messages, want: list[int]) -> None:
    got = frame_ids(messages)
    if got != want:
        fail(name, f"{topic}: frame ids {got}, expected {want}")


def write_readme(folder: Path, title: str, lines: list[str], counts: dict[str, int]) -> None:
    sizes = {p.name: p.stat().st_size for p in sorted(folder.glob(f"*{SUFFIX}"))}
    body = [f"# {title}", "", *lines, "",
            f"Regenerate: `{SCRIPT} {folder.name}` (every recording: `{SCRIPT}`).", "",
            "| file | messages | bytes |", "|---|---|---|",
            *[f"| {f} | {counts[Path(f).stem]} | {s} |" for f, s in sizes.items()], ""]
    (folder / "README.md").write_text("\n".join(body))


def fixture_weights(tmp: Path) -> dict[str, Path]:
    """`so101-deploy fixtures` (seed 0): the random-weight seg, depth and policy files the tests build too."""
    from so101_deploy.tools.fixtures import write_fixtures

    return write_fixtures(tmp / "fixtures", seed=0)


# --- camera_replay --------------------------------------------------------------------------------

def make_camera_replay(out: Path, tmp: Path, fx: Callable[[], dict]) -> None:
    name = out.name
    frames = tmp / "frames"
    write_image_folder(frames, frames=CAMERA_FRAMES, seed=0)
    record_dir = tmp / "camera_replay"
    flow = prepare(REPO_ROOT / "dataflow.replay.yml", tmp / "camera_replay.yml",
                   env={"camera": {"SO101_CAMERA": str(frames), "SO101_CAMERA_MAX_FRAMES": str(CAMERA_FRAMES)},
                        "recorder": {"SO101_RECORD_DIR": str(record_dir)}})
    dora_run(name, flow, 5, tmp)
    counts = cut(name, record_dir, out, {"image": lambda m: True})
    messages = read_messages(out / "image.arrow")
    expect_ids(name, "image", messages, list(range(CAMERA_FRAMES)))
    for i, m in enumerate(messages):
        if not (m.data == render_frame(i, seed=0)).all():
            fail(name, f"recorded frame {i} differs from the generated frame synthetic.render_frame({i})")
    rate = summarize(messages, video_frames=CAMERA_FRAMES).rate_hz
    if not 20 < rate < 40:  # tests/test_recording.py checks the camera kept its 30 fps
        fail(name, f"frames came at {rate:.1f} Hz, not the camera's 30 fps (a loaded CPU stalled a frame)")
    write_readme(out, "camera_replay: the camera node on generated frames", [
        "Flow: `dataflow.replay.yml` (camera -> recorder) under `dora run`, the camera on a folder of "
        f"{CAMERA_FRAMES} PNG frames written by `so101_deploy.sim.synthetic.write_image_folder(frames={CAMERA_FRAMES}, "
        "seed=0)` (SO101_CAMERA=<folder>, SO101_CAMERA_FPS=30, SO101_CAMERA_MAX_FRAMES="
        f"{CAMERA_FRAMES}).",
        "Frames are lossless: frame i equals `synthetic.render_frame(i, seed=0)`.",
    ], counts)


# --- obs_sim_oracle -------------------------------------------------------------------------------
def complete_oracle_window(name: str, record_dir: Path) -> tuple[int, int]:
    """The first frame id of ORACLE_FRAMES consecutive frames whose mask, disparity and every joint state
    since the step before the first of them were all recorded, and the state id of the last frame."""
    def ids_stamps(topic: str) -> dict[int, int]:
        return {m["frame_id"]: m["stamp_ns"] for _, m, _ in iter_messages(record_dir / f"{topic}{SUFFIX}")}

    masks, disps, states = ids_stamps("mask"), ids_stamps("disparity"), ids_stamps("joint_state")
    state_at = {stamp: sid for sid, stamp in states.items()}
    for first in sorted(masks):
        window = range(first, first + ORACLE_FRAMES)
        if not all(f in masks and f in disps and masks[f] == disps[f] and masks[f] in state_at for f in window):
            continue
        last_state = state_at[masks[window[-1]]]
        needed = range(last_state - ORACLE_FRAMES * ORACLE_RENDER_EVERY + 1, last_state + 1)
        if all(sid in states for sid in needed) and state_at[masks[first]] == needed[ORACLE_RENDER_EVERY - 1]:
            return first, last_state
    fail(name, f"no {ORACLE_FRAMES} consecutive frames were recorded whole (mask frames {sorted(masks)}, disparity "
               f"frames {sorted(disps)}); run it again, or longer")
    raise AssertionError  # unreachable



def make_obs_sim_oracle(out: Path, tmp: Path, fx: Callable[[], dict]) -> None:
    name = out.name
    record_dir = tmp / name
    topics = {"mask": ("sim_arm/mask", "seg_mask"), "disparity": ("sim_arm/disparity", "disparity"),
              "joint_state": ("sim_arm/joint_state", "joint_state")}
    flow = prepare(REPO_ROOT / "dataflow.sim-oracle.yml", tmp / f"{name}.yml",
                   env={"sim_arm": {"SO101_SIM_STEP_ON": "tick", "SO101_SIM_RENDER_EVERY": str(ORACLE_RENDER_EVERY)},
                        "policy": {"SO101_POLICY_CHECKPOINT": str(fx()["policy_snapshot"])}},
                   extra_nodes=[recorder_node(record_dir, topics)])
    dora_run(name, flow, 30, tmp)
    first, last_state = complete_oracle_window(name, record_dir)
    window = range(first, first + ORACLE_FRAMES)
    counts = cut(name, record_dir, out, {"mask": lambda m: m["frame_id"] in window,
                                         "disparity": lambda m: m["frame_id"] in window,
                                         "joint_state": lambda m: last_state - len(window) * ORACLE_RENDER_EVERY
                                         < m["frame_id"] <= last_state})
    rec = read_recording(out)
    for topic in ("mask", "disparity"):
        expect_ids(name, topic, rec[topic], list(window))
    states = rec["joint_state"]
    expect_ids(name, "joint_state", states, list(range(states[0].frame_id, last_state + 1)))
    if len(states) != ORACLE_FRAMES * ORACLE_RENDER_EVERY:
        fail(name, f"{len(states)} joint states for {ORACLE_FRAMES} frames rendered every {ORACLE_RENDER_EVERY} steps")
    by_stamp = {s.stamp_ns: s for s in states}
    for m, d in zip(rec["mask"], rec["disparity"]):
        s = by_stamp.get(m.stamp_ns)
        if d.stamp_ns != m.stamp_ns or s is None or s.meta["episode_step"] % ORACLE_RENDER_EVERY:
            fail(name, f"frame {m.frame_id}: mask, disparity and a rendering step's joint state do not share a stamp")
        if m.meta["classes"] != "sim5":
            fail(name, f"frame {m.frame_id}: classes {m.meta['classes']!r}, expected the oracle's 'sim5'")
    if (rec["mask"][0].data == rec["mask"][-1].data).all():
        fail(name, "the first and the last oracle mask are equal: the arm did not move")
    write_readme(out, "obs_sim_oracle: the simulator's oracle mask, disparity and joint states", [
        "Flow: `dataflow.sim-oracle.yml` (sim_arm -> observation -> policy -> controller -> sim_arm) with a "
        "recorder on sim_arm/mask, sim_arm/disparity and sim_arm/joint_state, under `dora run`.",
        f"Settings changed: sim_arm SO101_SIM_STEP_ON=tick and SO101_SIM_RENDER_EVERY={ORACLE_RENDER_EVERY} (one "
        f"oracle frame every {ORACLE_RENDER_EVERY} control steps on the 20 ms timer, as this recording was first "
        "made), policy SO101_POLICY_CHECKPOINT = `so101-deploy fixtures` (seed 0) policy_snapshot.pt.",
        f"Cut: the first {ORACLE_FRAMES} consecutive frames (the fewest for which the 3-frame stack rolls over) "
        f"that arrived whole (dora may drop a message to the recorder on a loaded CPU), frames {first}-"
        f"{first + ORACLE_FRAMES - 1}, and the {ORACLE_FRAMES * ORACLE_RENDER_EVERY} joint states up to the last of "
        "them; the first version of this recording kept 6 frames, but today's renderer's depth is finer "
        "(~0.45 MB a frame instead of 55 kB).",
    ], counts)


# --- sim_learned ----------------------------------------------------------------------------------

LEARNED_TOPICS = {
    "image": ("sim_arm/image", "image"), "gated_image": ("frame_gate/image", "image"),
    "mask": ("seg/mask", "seg_mask"), "disparity": ("depth/disparity", "disparity"),
    "joint_state": ("sim_arm/joint_state", "joint_state"), "episode_start": ("sim_arm/episode_start", "joint_state"),
    "observation": ("observation/observation", "observation"), "action": ("policy/action", "action"),
    "goal": ("controller/goal", "joint_goal")}


def make_sim_learned(out: Path, tmp: Path, fx: Callable[[], dict]) -> None:
    name = out.name
    weights = fx()
    record_dir = tmp / name
    gate = dict(next(n for n in load(REPO_ROOT / "dataflow.yml")["nodes"] if n["id"] == "frame_gate"))
    gate.pop("restart_policy", None)
    gate["path"] = str(REPO_ROOT / gate["path"])
    gate["inputs"] = {**gate["inputs"], "image": {"source": "sim_arm/image", "queue_size": 1}}
    gate["env"] = {"SO101_GATE_TIMEOUT_S": "60"}
    flow = prepare(REPO_ROOT / "dataflow.sim.yml", tmp / f"{name}.yml",
                   env={"sim_arm": {"SO101_SIM_EPISODE_STEPS": str(LEARNED_EPISODE_STEPS), "SO101_SIM_RESEND_S": "60"},
                        "seg": {"SO101_SEG_CHECKPOINT": str(weights["seg_checkpoint"])},
                        "depth": {"SO101_DEPTH_MODEL": str(weights["depth_hf_dir"])},
                        "policy": {"SO101_POLICY_CHECKPOINT": str(weights["policy_snapshot"])},
                        "controller": {"SO101_SLOW_START_S": "0"}},
                   extra_nodes=[gate, recorder_node(record_dir, LEARNED_TOPICS)])

    def rewire(nodes: dict[str, dict]) -> None:
        for model in ("seg", "depth"):  # seg and depth look at the gated frames, as in dataflow.yml
            nodes[model]["inputs"]["image"] = {"source": "frame_gate/image", "queue_size": 1}
        # no controller timer: a watchdog hold before the first action (models still loading on a busy CPU)
        # would step the lockstep sim; without it every frame is one step, one observation, one action, one goal
        del nodes["controller"]["inputs"]["tick"]

    edit_flow(flow, rewire)
    dora_run(name, flow, 75, tmp)
    goals = read_messages(record_dir / "goal.arrow") if (record_dir / "goal.arrow").exists() else []
    if len(goals) < LEARNED_FRAMES:
        fail(name, f"only {len(goals)} goals recorded; {LEARNED_FRAMES} needed (models slower to load than the run "
                   f"lasted?)")
    n = LEARNED_FRAMES
    frame_topics = ("image", "gated_image", "mask", "disparity", "observation", "action", "goal")
    keep = {t: (lambda m: m["frame_id"] < n) for t in frame_topics}
    keep["disparity"] = lambda m: m["frame_id"] < LEARNED_DISPARITY_FRAMES
    # the joint states of the kept frames plus the one that answers the last kept goal
    keep.update({t: (lambda m: m["frame_id"] <= n) for t in ("joint_state", "episode_start")})
    counts = cut(name, record_dir, out, keep)
    rec = read_recording(out)
    for topic in frame_topics:  # lockstep: frame k -> one gated frame, one answer each, one action, one goal
        expect_ids(name, topic, rec[topic], list(range(LEARNED_DISPARITY_FRAMES if topic == "disparity" else n)))
    expect_ids(name, "joint_state", rec["joint_state"], list(range(n + 1)))
    for k in range(n):
        stamps = {t: rec[t][k].stamp_ns for t in frame_topics if k < len(rec[t])}
        if len(set(stamps.values())) != 1 or rec["joint_state"][k].stamp_ns != stamps["image"]:
            fail(name, f"frame {k}: the topics do not share the frame's stamp: {stamps}")
        if not (rec["image"][k].data == rec["gated_image"][k].data).all():
            fail(name, f"frame {k}: the gated image is not the camera image")
        if rec["goal"][k].meta["source"] != "action":
            fail(name, f"goal {k} came from {rec['goal'][k].meta['source']!r}, not from the action")
    starts = rec["episode_start"]
    if [s.meta["episode"] for s in starts] != [2] or starts[0].frame_id != n or n != LEARNED_EPISODE_STEPS + 1:
        fail(name, f"expected one episode_start (episode 2) at state {n}, got "
                   f"{[(s.frame_id, s.meta['episode']) for s in starts]}")
    if "slow_start" in ",".join(g.meta["events"] for g in rec["goal"]):
        fail(name, "a goal was bounded by the slow start (SO101_SLOW_START_S=0 did not take)")
    write_readme(out, "sim_learned: the learned-perception simulation, frame by frame", [
        "Flow: `dataflow.sim.yml` (sim_arm wrist camera -> seg + depth -> observation -> policy -> controller "
        "-> sim_arm, lockstep: one control step per goal) under `dora run`, with `dataflow.yml`'s frame_gate "
        "put between sim_arm/image and seg + depth, and a recorder on: " +
        ", ".join(f"{t} ({src})" for t, (src, _) in LEARNED_TOPICS.items()) + ".",
        "Weights: `so101-deploy fixtures` (seed 0): seg/best.ckpt, depth_hf/, policy_snapshot.pt (random weights: "
        "the mask is mostly one class, the disparity is noise; the point is that every node's output is known).",
        f"Settings changed: sim_arm SO101_SIM_EPISODE_STEPS={LEARNED_EPISODE_STEPS} (the state after goal "
        f"{LEARNED_EPISODE_STEPS} starts episode 2: an episode_start) and SO101_SIM_RESEND_S=60, frame_gate SO101_GATE_TIMEOUT_S=60, "
        "controller SO101_SLOW_START_S=0 and no `tick` input (no watchdog goal can step the sim while the models "
        "load), so every camera frame is one gated frame, one mask, one disparity, one observation, one action "
        "and one goal, and a replay of the controller does not depend on wall-clock time.",
        f"Cut: frames 0-{n - 1} of every frame topic but disparity, which keeps frame 0 only (the random-weight "
        "depth output is noise: ~1.07 MB a frame however it is compressed); joint_state/episode_start up to "
        f"state {n} (the answer to goal {n - 1}).",
    ], counts)


# --- sim_scripted ---------------------------------------------------------------------------------

def make_sim_scripted(out: Path, tmp: Path, fx: Callable[[], dict]) -> None:
    name = out.name
    record_dir = tmp / name
    topics = {"joint_state": ("sim_arm/joint_state", "joint_state"), "action": ("scripted_policy/action", "action"),
              "goal": ("controller/goal", "joint_goal")}
    flow = prepare(REPO_ROOT / "dataflow.sim-scripted.yml", tmp / f"{name}.yml",
                   extra_nodes=[recorder_node(record_dir, topics)])
    dora_run(name, flow, 15, tmp)
    ids = sorted(m["frame_id"] for _, m, _ in iter_messages(record_dir / "joint_state.arrow"))
    n = SCRIPTED_STATES
    # the first n consecutive states that all reached the recorder (dora may drop one on a loaded CPU)
    first = next((i for i in ids if set(range(i, i + n)) <= set(ids)), None)
    if first is None:
        fail(name, f"no {n} consecutive joint states were recorded (got {len(ids)}: {ids[:80]})")
    window = range(first, first + n)
    counts = cut(name, record_dir, out, {"joint_state": lambda m: m["frame_id"] in window,
                                         "action": lambda m: m["frame_id"] in window,
                                         "goal": lambda m: m["frame_id"] in window})
    rec = read_recording(out)
    expect_ids(name, "joint_state", rec["joint_state"], list(window))
    steps = [(s.meta["episode"], s.meta["episode_step"]) for s in rec["joint_state"]]
    if steps != [(1, first + 1 + k) for k in range(n)]:
        fail(name, f"the joint states are not consecutive steps of episode 1: {steps}")
    ids = frame_ids(rec["action"])
    if ids != sorted(set(ids)) or len(ids) < n // 2:
        fail(name, f"action frame ids {ids}: expected most of {first}..{first + n - 1}, increasing")
    if not any(g.meta["source"] == "action" for g in rec["goal"]):
        fail(name, "no goal came from an action")
    write_readme(out, "sim_scripted: the scripted lift through the real controller", [
        "Flow: `dataflow.sim-scripted.yml` (sim_arm -> scripted_policy -> controller -> sim_arm, the sim stepping "
        "on its 20 ms timer) under `dora run`, with a recorder on sim_arm/joint_state, scripted_policy/action "
        "and controller/goal; no settings changed.",
        f"Cut: the first {n} consecutive joint states the recorder got, {first}-{first + n - 1} (episode 1, steps "
        f"{first + 1}-{first + n}), and the actions and goals of those states (scripted_policy reads its "
        "joint_state input with queue_size 1, so a busy CPU makes it skip a few).",
    ], counts)


# --- estop ----------------------------------------------------------------------------------------

ESTOP_SCHEDULE = (("clear", None), ("hold", ""), ("release", "release\n"), ("clear", None))
ESTOP_PHASE_S = 2.0


def make_estop(out: Path, tmp: Path, fx: Callable[[], dict]) -> None:
    name = out.name
    record_dir = tmp / name
    switch = tmp / "so101.estop"
    switch.unlink(missing_ok=True)
    others = tuple(n["id"] for n in load(REPO_ROOT / "dataflow.yml")["nodes"] if n["id"] != "estop")
    flow = prepare(REPO_ROOT / "dataflow.yml", tmp / f"{name}.yml", drop_nodes=others,
                   env={"estop": {"SO101_ESTOP_FILE": str(switch)}},
                   extra_nodes=[recorder_node(record_dir, {"estop": ("estop/estop", "estop")})])
    stop = threading.Event()

    def operate() -> None:  # a person at the e-stop file, once the node publishes
        part = record_dir / "estop.arrow"
        deadline = time.monotonic() + 60
        while not part.exists() and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.05)
        for _, content in ESTOP_SCHEDULE:
            if stop.is_set():
                return
            if content is None:
                switch.unlink(missing_ok=True)
            else:
                switch.write_text(content)
            stop.wait(ESTOP_PHASE_S)

    operator = threading.Thread(target=operate, daemon=True)
    operator.start()
    try:
        dora_run(name, flow, 8 + ESTOP_PHASE_S * len(ESTOP_SCHEDULE), tmp)
    finally:
        stop.set()
        operator.join(5)
    messages = read_messages(record_dir / "estop.arrow")
    expect_ids(name, "estop", messages, list(range(len(messages))))
    states = [int(m.data[0]) for m in messages]
    # keep two messages either side of every change: 0 0 | 1 1 ... 1 1 | 2 2 ... 2 2 | 0 0
    changes = [k for k in range(1, len(states)) if states[k] != states[k - 1]]
    keep_ids = {k + d for k in changes for d in (-2, -1, 0, 1)} & set(range(len(states)))
    runs = [s for k, s in enumerate(states) if k == 0 or s != states[k - 1]]
    if runs != [0, 1, 2, 0]:
        fail(name, f"the node published the states {runs} in turn, expected [0, 1, 2, 0] (clear, hold, release, "
                   f"clear)")
    counts = cut(name, record_dir, out, {"estop": lambda m: m["frame_id"] in keep_ids})
    kept = read_messages(out / "estop.arrow")
    if [int(m.data[0]) for m in kept] != [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0]:
        fail(name, f"the cut kept {[int(m.data[0]) for m in kept]} (a phase shorter than 4 ticks?)")
    write_readme(out, "estop: the e-stop node on its file", [
        "Flow: `dataflow.yml`'s estop node alone (100 ms timer) with a recorder on estop/estop, under `dora run`; "
        f"SO101_ESTOP_FILE = a temporary file that the script, once the node publishes, leaves absent, then "
        f"creates empty (hold), then fills with `release`, then removes, {ESTOP_PHASE_S:g} s each.",
        "Cut: the two messages before and after every change of state (frame_id is the node's message "
        "counter, so the gaps show).",
    ], counts)


# --- main -----------------------------------------------------------------------------------------

MAKERS = {"camera_replay": make_camera_replay, "obs_sim_oracle": make_obs_sim_oracle,
          "sim_learned": make_sim_learned, "sim_scripted": make_sim_scripted, "estop": make_estop}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"recordings to regenerate (default: all of {list(MAKERS)})")
    parser.add_argument("--out", type=Path, default=RECORDINGS, help="where the recording folders go")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the full recordings and dora logs")
    parser.add_argument("--attempts", type=int, default=3, help="runs per recording before giving up (default 3)")
    args = parser.parse_args(argv)
    names = args.names or list(MAKERS)
    unknown = [n for n in names if n not in MAKERS]
    if unknown:
        parser.error(f"unknown recording(s) {unknown}; known: {list(MAKERS)}")
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="so101-recordings-"))
    weights: dict[str, Path] = {}

    def fx() -> dict[str, Path]:
        if not weights:
            weights.update(fixture_weights(tmp))
        return weights

    for name in names:
        t = time.monotonic()
        for attempt in range(1, args.attempts + 1):
            work = tmp / f"{name}.{attempt}"
            work.mkdir()
            try:
                MAKERS[name](args.out / name, work, fx)
                break
            except RecordingError as e:
                # a real run on a loaded CPU can stall or drop a message; a broken node fails every time
                print(f"make_recordings: attempt {attempt} of {args.attempts} FAILED: {e}", file=sys.stderr)
        else:
            print(f"make_recordings: FAILED: {name} (full recordings and dora logs kept in {tmp})", file=sys.stderr)
            return 1
        folder = args.out / name
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"[{name}] {folder}: {size / 1e3:.0f} kB in {time.monotonic() - t:.0f} s", flush=True)
    if not args.keep_tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"full recordings and dora logs: {tmp}")
    total = 0
    for folder in sorted(p for p in args.out.iterdir() if p.is_dir()):
        for f in sorted(folder.iterdir()):
            total += f.stat().st_size
            print(f"  {f.relative_to(args.out.parent) if args.out == RECORDINGS else f}: {f.stat().st_size} bytes")
    print(f"total {total / 1e6:.2f} MB; {len(names)} recording(s) in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
