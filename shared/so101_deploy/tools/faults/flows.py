"""The fault matrix's flows (light: the arm side of dataflow.yml; full: dataflow.yml itself), the checks
on the bus log, and the scenario registry."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from so101_deploy.arm.calibration import EXAMPLE_PATH, RAD_PER_STEP
from so101_deploy.core.dataflow import flow_file, flows_root, load, prepare
from so101_deploy.tools.faults.runtime import BusLog, CAL, DEADLINE_UP_S, DoraRun, HOLD_S, IDS, Outcome, PARK_AFTER_S, PARK_SPEED_RAD_S, PARK_STEP, REST_POSE_RAD, START_STEPS, STEP_BOUND, ScenarioError, StateLog, wait_for

# --- flows ----------------------------------------------------------------------------------------

def _repo() -> Path:
    root = flows_root()
    if not (root / "tests" / "nodes" / "action_source.py").is_file():
        raise ScenarioError(f"the fault matrix needs a source checkout (tests/nodes/ next to the flows); "
                            f"{root} has none")
    return root


def servo_env(link: Path, estop_file: Path, **overrides: Any) -> dict[str, str]:
    env = {"SO101_PORT": str(link), "SO101_CALIBRATION": str(EXAMPLE_PATH), "SO101_ESTOP_FILE": str(estop_file),
           "SO101_HOLD_S": str(HOLD_S), "SO101_PARK_AFTER_S": str(PARK_AFTER_S), "SO101_ON_FAULT": "park",
           "SO101_PARK_SPEED_RAD_S": str(PARK_SPEED_RAD_S),
           "SO101_REST_POSE_RAD": ",".join(str(v) for v in REST_POSE_RAD),
           "SO101_SERVO_REPLY_WINDOW_MS": "120"}  # a loaded machine: a late reply is not a dead servo
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def light_flow(folder: Path, link: Path, *, servo: dict[str, Any] | None = None,
               source: dict[str, Any] | None = None, action_rate_ms: int = 100,
               extra_nodes: list[dict] | None = None, policy: dict[str, Any] | None = None) -> Path:
    """The arm side of dataflow.yml (its estop, controller and servo nodes as written there) fed by
    tests/nodes/action_source.py -- or, with ``policy`` (its env), by the real policy node."""
    repo = _repo()
    src = load(flow_file("dataflow.yml"))
    by_id = {n["id"]: n for n in src["nodes"]}
    estop_file = folder / "so101.estop"
    nodes = []
    for nid in ("estop", "controller", "servo"):
        node = json.loads(json.dumps(by_id[nid]))
        node["path"] = str((repo / node["path"]).resolve())
        nodes.append(node)
    env = {"estop": {"SO101_ESTOP_FILE": str(estop_file)},
           "controller": {"SO101_CALIBRATION": str(EXAMPLE_PATH)},
           "servo": servo_env(link, estop_file, **(servo or {}))}
    for node in nodes:
        node["env"] = {**(node.get("env") or {}), **env[node["id"]]}
    controller = next(n for n in nodes if n["id"] == "controller")
    if policy is None:
        controller["inputs"]["action"] = "action_source/action"
        nodes.insert(0, {"id": "action_source", "path": str(repo / "tests" / "nodes" / "action_source.py"),
                         "env": {"SO101_TEST_OUT": str(folder / "joint_state.jsonl"),
                                 **{k: str(v) for k, v in (source or {}).items()}},
                         "inputs": {"tick": f"dora/timer/millis/{action_rate_ms}",
                                    "joint_state": {"source": "servo/joint_state", "queue_size": 10}},
                         "outputs": ["action"]})
    else:
        pol = json.loads(json.dumps(by_id["policy"]))
        pol["path"] = str((repo / pol["path"]).resolve())
        pol["env"] = {**(pol.get("env") or {}), **{k: str(v) for k, v in policy.items()}}
        pol["inputs"] = {"observation": "dora/timer/secs/1"}  # never a real observation: it fails at start
        nodes.insert(0, pol)
        nodes.append(_tap(repo, folder / "joint_state.jsonl", {"joint_state": "servo/joint_state"}))
    nodes += extra_nodes or []
    path = folder / "dataflow.faults.yml"
    path.write_text(yaml.safe_dump({"nodes": nodes}, sort_keys=False))
    return path


def _tap(repo: Path, out: Path, inputs: dict[str, str], node_id: str = "tap") -> dict:
    return {"id": node_id, "path": str(repo / "tests" / "nodes" / "tap.py"), "env": {"SO101_TAP_OUT": str(out)},
            "inputs": {k: {"source": v, "queue_size": 100} for k, v in inputs.items()}}


@dataclass
class FullAssets:
    """Fixture weights, the generated video and the ONNX cache, shared by the full-flow scenarios."""

    folder: Path

    def get(self) -> dict[str, Path]:
        from so101_deploy.sim.synthetic import write_video  # noqa: PLC0415
        from so101_deploy.tools.fixtures import write_fixtures  # noqa: PLC0415

        self.folder.mkdir(parents=True, exist_ok=True)
        done = self.folder / "assets.json"
        if done.exists():
            return {k: Path(v) for k, v in json.loads(done.read_text()).items()}
        fx = write_fixtures(self.folder / "fixtures")
        video = write_video(self.folder / "camera.mp4", frames=90)
        out = {"seg": Path(fx["seg_checkpoint"]), "depth": Path(fx["depth_hf_dir"]),
               "policy": Path(fx["policy_snapshot"]), "video": Path(video), "onnx": self.folder / "onnx"}
        # the ONNX exports the seg and depth nodes would make on their first start, made once here
        code = ("import sys; from so101_deploy.core.settings import Settings; "
                "from so101_deploy.perception import seg, depth; "
                "seg.seg_model_from_settings(Settings('seg', seg.SETTINGS, {'SO101_SEG_CHECKPOINT': sys.argv[1], "
                "'SO101_SEG_BACKEND': 'onnx', 'SO101_THREADS': '1', 'SO101_ONNX_CACHE': sys.argv[3]})); "
                "s = Settings('depth', depth.SETTINGS, {'SO101_DEPTH_MODEL': sys.argv[2], 'SO101_DEPTH_BACKEND': "
                "'onnx', 'SO101_DEPTH_INPUT_SIZE': '266', 'SO101_THREADS': '2', 'SO101_ONNX_CACHE': sys.argv[3]}); "
                "depth.warmup_from_settings(depth.depth_model_from_settings(s), s)")
        subprocess.run([sys.executable, "-c", code, str(out["seg"]), str(out["depth"]), str(out["onnx"])],
                       check=True, capture_output=True, timeout=600)
        done.write_text(json.dumps({k: str(v) for k, v in out.items()}))
        return out


def full_flow(folder: Path, link: Path, assets: dict[str, Path], *, env: dict[str, dict] | None = None,
              servo: dict[str, Any] | None = None) -> Path:
    """dataflow.yml itself: the generated video as camera, the software bus as arm, fixture weights (as
    bench_graph runs it), plus a tap node that logs the servo's joint_state, the observation's metadata
    and the controller's goals."""
    repo = _repo()
    estop_file = folder / "so101.estop"
    base = {
        "camera": {"SO101_CAMERA": str(assets["video"]), "SO101_CAMERA_LOOP": "true"},
        "seg": {"SO101_SEG_CHECKPOINT": str(assets["seg"]), "SO101_SEG_BACKEND": "onnx", "SO101_THREADS": "1",
                "SO101_ONNX_CACHE": str(assets["onnx"])},
        "depth": {"SO101_DEPTH_MODEL": str(assets["depth"]), "SO101_DEPTH_BACKEND": "onnx",
                  "SO101_DEPTH_INPUT_SIZE": "266", "SO101_THREADS": "2", "SO101_ONNX_CACHE": str(assets["onnx"])},
        "policy": {"SO101_POLICY_CHECKPOINT": str(assets["policy"]), "SO101_POLICY_BACKEND": "onnx"},
        "controller": {"SO101_CALIBRATION": str(EXAMPLE_PATH)},
        "servo": servo_env(link, estop_file, **(servo or {})),
        "estop": {"SO101_ESTOP_FILE": str(estop_file)},
    }
    for nid, extra in (env or {}).items():
        base[nid] = {**base.get(nid, {}), **extra}
    tap = _tap(repo, folder / "joint_state.jsonl", {"joint_state": "servo/joint_state"})
    tap2 = _tap(repo, folder / "messages.jsonl", {"observation": "observation/observation",
                                                  "goal": "controller/goal"}, node_id="tap_msgs")
    return prepare(flow_file("dataflow.yml"), folder / "dataflow.faults.yml", env=base, extra_nodes=[tap, tap2])


# --- checks on the bus log ------------------------------------------------------------------------

def _limits_steps() -> tuple[np.ndarray, np.ndarray]:
    from so101_deploy.arm.safety import JointLimits  # noqa: PLC0415

    limits = JointLimits.from_model().intersect(JointLimits(*CAL.limits_rad()))
    a, b = CAL.rad_to_steps(limits.lower_rad), CAL.rad_to_steps(limits.upper_rad)
    return np.minimum(a, b) - 1, np.maximum(a, b) + 1


def check_goals_safe(out: Outcome, log: BusLog) -> int:
    """Every goal inside the limits; within a torque-on stretch each write moves at most one step bound."""
    lo, hi = _limits_steps()
    n = 0
    for k, sid in enumerate(IDS):
        seq: list[list[int]] = [[]]
        for r in log.rows():
            if r["id"] != sid:
                continue
            if r["name"] == "Torque_Enable":
                seq.append([])
            elif r["name"] == "Goal_Position":
                seq[-1].append(r["value"])
        goals = [g for s in seq for g in s]
        n += len(goals)
        if goals:
            out.check(lo[k] <= min(goals) and max(goals) <= hi[k],
                      f"id {sid}: a goal outside the limits ({min(goals)}..{max(goals)}, limits {lo[k]:.0f}.."
                      f"{hi[k]:.0f})")
        for s in seq:
            jumps = np.abs(np.diff(s)) if len(s) > 1 else np.zeros(1)
            out.check(jumps.max() <= STEP_BOUND, f"id {sid}: a goal jumped {jumps.max():.0f} steps "
                                                 f"(bound {STEP_BOUND:.1f})")
    return n


def check_torque_released_last(out: Outcome, log: BusLog) -> None:
    rows = log.rows()
    for sid in IDS:
        torque = [(i, r["value"]) for i, r in enumerate(rows) if r["id"] == sid and r["name"] == "Torque_Enable"]
        goals = [i for i, r in enumerate(rows) if r["id"] == sid and r["name"] == "Goal_Position"]
        if not out.check(torque and torque[-1][1] == 0, f"id {sid}: torque not released (writes {torque[-3:]})"):
            continue
        out.check(not goals or goals[-1] < torque[-1][0], f"id {sid}: a goal was written after the release")


def check_slow_start(out: Outcome, log: BusLog, present: np.ndarray | None = None) -> None:
    """Before each servo's first Torque_Enable=1 its goal is set to the present steps."""
    present = START_STEPS if present is None else present
    rows = log.rows()
    for k, sid in enumerate(IDS):
        mine = [r for r in rows if r["id"] == sid and r["name"] in ("Goal_Position", "Torque_Enable")]
        on = next((i for i, r in enumerate(mine) if r["name"] == "Torque_Enable" and r["value"] == 1), None)
        if not out.check(on is not None, f"id {sid}: torque never enabled"):
            continue
        before = [r["value"] for r in mine[:on] if r["name"] == "Goal_Position"]
        out.check(before and abs(before[-1] - present[k]) <= 1,
                  f"id {sid}: goal before torque on {before[-1:]} is not the present {present[k]:.0f}")


def check_park(out: Outcome, batches: list[tuple[float, np.ndarray]]) -> float:
    """Goals after the hold: unchanged (hold) or moving toward the rest pose at most at the park speed;
    the last one at the rest pose.  Returns the park's duration (first to last move)."""
    rest = CAL.rad_to_steps(np.array(REST_POSE_RAD))
    if not out.check(batches, "no goal written after the fault (neither hold nor park)"):
        return 0.0
    speed = PARK_SPEED_RAD_S / RAD_PER_STEP  # steps/s
    moves = [(t, g) for (t, g), (_, prev) in zip(batches[1:], batches) if np.any(g != prev)]
    for (t0, g0), (t1, g1) in zip(batches, batches[1:]):
        d = np.abs(g1 - g0)
        if d.max() == 0:
            continue
        out.check(d.max() <= PARK_STEP, f"a park write moved {d.max():.0f} steps (bound {PARK_STEP:.1f})")
        closer = np.abs(rest - g1) <= np.abs(rest - g0) + 1
        out.check(closer.all(), f"a goal after the fault moved away from the rest pose: {g0} -> {g1}")
    if moves:
        t_first, g_first = batches[0]
        for t, g in moves:  # bounded by the speed over time (one tick of slack for the two clocks)
            d = np.abs(g - g_first).max()
            out.check(d <= speed * (t - t_first + 0.1) + 2,
                      f"the park moved {d:.0f} steps in {t - t_first:.2f} s (speed bound {speed:.0f} steps/s)")
    last = batches[-1][1]
    # the node goes limp once within safe_state.PARK_TOLERANCE_RAD (0.02) of the rest pose, without
    # writing that last step: the last goal written is at most one park step further out
    tol = 0.02 / RAD_PER_STEP + PARK_STEP + 1
    out.check(np.abs(last - rest).max() <= tol, f"the last goal {last} is not the rest pose {rest}")
    return (moves[-1][0] - moves[0][0]) if len(moves) > 1 else 0.0


def exit_code_of(text: str, node: str) -> int | None:
    """A node's exit code as dora reports it in the run's output, if it does."""
    import re  # noqa: PLC0415

    m = re.search(rf"{node}.*?exit(?:ed)? (?:with )?(?:code|status)[: ]+(-?\d+)", text, re.I)
    return int(m.group(1)) if m else None


# --- scenarios ------------------------------------------------------------------------------------

@dataclass
class Context:
    """Where a scenario writes, and the shared full-flow assets."""

    root: Path
    assets: FullAssets | None = None

    def folder(self, name: str) -> Path:
        f = self.root.resolve() / name
        if f.exists():
            import shutil  # noqa: PLC0415

            shutil.rmtree(f)
        f.mkdir(parents=True)
        return f

    def full_assets(self) -> dict[str, Path]:
        if self.assets is None:
            self.assets = FullAssets(self.root / "_assets")
        return self.assets.get()


SCENARIOS: dict[str, Callable[[Context], Outcome]] = {}


def scenario(fn: Callable[[Outcome, Context], None]) -> Callable[[Context], Outcome]:
    name = fn.__name__.removeprefix("scenario_")
    doc = (fn.__doc__ or "").strip().split("\n\n")
    fault, expected = doc[0].strip(), " ".join(doc[1].split()) if len(doc) > 1 else ""

    def run(ctx: Context) -> Outcome:
        out = Outcome(name, " ".join(fault.split()), expected)
        t0 = time.monotonic()
        try:
            fn(out, ctx)
        except ScenarioError as e:
            out.failures.append(str(e))
        except Exception as e:  # noqa: BLE001 - one broken scenario must not stop the matrix
            out.failures.append(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        out.wall_s = time.monotonic() - t0
        return out

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    SCENARIOS[name] = run
    return run


def _wait_running(out: Outcome, run: DoraRun, log: BusLog, states: StateLog, min_moves: int = 5,
                  moving: bool = True) -> float:
    """Until torque is on and goals move (``min_moves`` distinct goals; or, not ``moving``, that many
    writes); returns when torque came on."""
    t_on = wait_for(lambda: log.torque_on_at() or (run.exited() and -1), DEADLINE_UP_S, "torque on (RUN)")
    if t_on == -1:
        raise ScenarioError(f"dora run ended before the arm ran (exit {run.proc.returncode}): {run.text()[-1500:]}")
    count = (lambda: len({tuple(g) for _, g in log.goal_batches(t_on)})) if moving else \
        (lambda: len(log.goal_batches(t_on)))
    wait_for(lambda: count() >= min_moves or run.exited(), 60, "the arm to follow goals")
    if run.exited():
        raise ScenarioError(f"dora run ended while the arm ran (exit {run.proc.returncode}): {run.text()[-1500:]}")
    return t_on


def _touch(path: Path, text: str = "") -> float:
    t = time.time()
    path.write_text(text)
    return t


FAST = {"SO101_ACTION_SPEED_M_S": 0.15}  # the target moves several steps per 20 ms write: a freeze shows
FREEZE_TOL_STEPS = 2  # a hold may settle a goal onto the present pose by a step or two


def changes(batches: list[tuple[float, np.ndarray]], tol: float = FREEZE_TOL_STEPS) -> list[float]:
    """Times of the goal writes that changed a goal by more than ``tol`` steps."""
    return [t for (t, g), (_, prev) in zip(batches[1:], batches) if np.abs(g - prev).max() > tol]


def freeze_latency(log: BusLog, t0: float, until_t: float | None = None, tol: float = FREEZE_TOL_STEPS) -> float:
    """From ``t0`` to the last goal write that changed a goal by more than ``tol`` steps (0: none did)."""
    ts = [t for t in changes(log.goal_batches(t0 - 1.0), tol) if t >= t0 and (until_t is None or t <= until_t)]
    return max(ts) - t0 if ts else 0.0


# row: RUN
