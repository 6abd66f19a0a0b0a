"""Evaluation in the simulator: the deployment's conditions as knobs, per-episode measures, and the
statistics of a success rate.  The sim arm node applies the knobs (:class:`ActionSchedule`,
:class:`PerceptionNoise`, scene variation) and records each finished episode (:class:`EpisodeRecord`);
``so101-deploy evaluate`` runs the graph and summarises (:func:`wilson_interval`).

Knobs, all in control steps of 20 ms (training's 50 Hz):

- ``latency_steps`` k: the goal computed from the frame of step t is applied from step t + k on (the
  steps before keep the previous goal): capture -> perception -> policy -> controller -> servo time.
- ``action_every`` m: a new action every m control steps; between them the arm keeps following the last
  goal (what the controller does on the real arm when actions come slower than 50 Hz: the servos hold the
  last joint goal, nothing integrates the Cartesian action again).  In lockstep, each goal runs m steps.
- perception noise p: each mask pixel becomes a random class with probability p, and the disparity is
  multiplied by (1 + p * N(0, 1)) per pixel: a crude stand-in for a learned model's errors on the oracle.

Everything random is drawn from generators seeded by the episode's seed, so an episode is reproduced by
its seed and the knobs alone (the report records both).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from so101_deploy.core.messages import N_JOINTS

CONTROL_DT_S = 0.02  # one control step: 10 x mj_step of 2 ms
N_SIM_CLASSES = 5
# stream ids for np.random.default_rng([seed, stream]): the reset's own draw uses default_rng(seed)
NOISE_STREAM = 1
VARIATION_STREAM = 2
FINISHED_LINE = "evaluation finished"  # the sim arm's log line once its SO101_SIM_EPISODES are done


class ActionSchedule:
    """Goals with a latency: a goal received at step t takes effect at step t + ``latency_steps``."""

    def __init__(self, latency_steps: int = 0, action_every: int = 1):
        if int(latency_steps) != latency_steps or latency_steps < 0:
            raise ValueError(f"latency_steps: expected an integer >= 0 (control steps of 20 ms), got {latency_steps!r}")
        if int(action_every) != action_every or action_every < 1:
            raise ValueError(f"action_every: expected an integer >= 1 (control steps of 20 ms), got {action_every!r}")
        self.latency_steps = int(latency_steps)
        self.action_every = int(action_every)
        self._pending: list[tuple[int, np.ndarray]] = []  # (first step it applies at, goal), in order

    def reset(self) -> None:
        """A new episode: goals computed in the last one never reach this one."""
        self._pending.clear()

    def push(self, goal_rad: np.ndarray, step: int) -> None:
        """A goal computed from the frame of control step ``step``."""
        goal = np.asarray(goal_rad, dtype=np.float64)
        if goal.shape != (N_JOINTS,) or not np.all(np.isfinite(goal)):
            raise ValueError(f"goal_rad: expected {N_JOINTS} finite joint angles, got {goal!r}")
        self._pending.append((int(step) + self.latency_steps, goal.copy()))

    def due(self, step: int) -> np.ndarray | None:
        """The goal to apply before control step ``step`` (the newest one whose time has come), or None
        to keep the present one; older goals are dropped."""
        goal = None
        while self._pending and self._pending[0][0] <= step:
            goal = self._pending.pop(0)[1]
        return goal

    @property
    def pending(self) -> int:
        return len(self._pending)


class LockstepPacer:
    """When a lockstep loop has stalled: no goal for the frame sent last within ``max(floor_s, 4 x the
    median of the last cycles)``.  A message lost on the way (dora has dropped one 1.2 MB disparity in ~25
    here) then costs a few cycles, not a fixed 5 s; a goal computed from an older frame is recognised by its
    stamp and dropped, so a re-send never leaves two frames in flight."""

    def __init__(self, floor_s: float, window: int = 20):
        if not (math.isfinite(floor_s) and floor_s > 0):
            raise ValueError(f"lockstep re-send floor: expected > 0 s, got {floor_s!r}")
        self.floor_s = float(floor_s)
        self._cycles: list[float] = []
        self._window = int(window)
        self.sent_s: float | None = None
        self.resends = 0
        self.stale_goals = 0

    def sent(self, now_s: float) -> None:
        self.sent_s = now_s

    def goal(self, now_s: float) -> None:
        """A goal for the frame sent last arrived."""
        if self.sent_s is not None:
            self._cycles = (self._cycles + [now_s - self.sent_s])[-self._window:]

    def timeout_s(self) -> float:
        if not self._cycles:
            return self.floor_s
        return max(self.floor_s, 4.0 * float(np.median(self._cycles)))

    def stalled(self, now_s: float) -> bool:
        return self.sent_s is None or now_s - self.sent_s > self.timeout_s()


class PerceptionNoise:
    """Noise on the oracle's mask and disparity (see the module doc); p = 0 changes nothing."""

    def __init__(self, p: float = 0.0):
        if not (isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"perception noise: expected a fraction in [0, 1], got {p!r}")
        self.p = float(p)
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng([int(seed), NOISE_STREAM])

    def mask(self, mask: np.ndarray) -> np.ndarray:
        if self.p == 0.0:
            return mask
        flip = self._rng.random(mask.shape) < self.p
        noisy = mask.copy()
        noisy[flip] = self._rng.integers(0, N_SIM_CLASSES, size=int(flip.sum()), dtype=mask.dtype)
        return noisy

    def disparity(self, disparity: np.ndarray) -> np.ndarray:
        if self.p == 0.0:
            return disparity
        gain = 1.0 + self.p * self._rng.standard_normal(disparity.shape, dtype=np.float32)
        return np.maximum(disparity * gain, 0.0).astype(np.float32)


@dataclass
class EpisodeRecord:
    """What one episode did; times in control steps and seconds of simulated time."""

    episode: int
    seed: int
    cube_start_z_m: float
    success: bool = False
    steps: int = 0
    grasp_step: int | None = None  # first control step with the cube grasped (jaw closed, both pads on it)
    max_cube_z_m: float = -math.inf
    variation: dict = field(default_factory=dict)
    policy_steps: int = 0  # goals received (one per action of the policy)
    resends: int = 0  # lockstep frames re-sent after a stall: the policy saw a frame twice (not reproducible)
    started_s: float | None = None  # wall clock at the first goal (not at the reset: the first episode's
    wall_s: float = 0.0  # reset happens before the other nodes have even loaded), for steps per second

    def update(self, step: int, cube_z_m: float, grasped: bool, success: bool) -> None:
        self.steps = int(step)
        self.max_cube_z_m = max(self.max_cube_z_m, float(cube_z_m))
        if grasped and self.grasp_step is None:
            self.grasp_step = int(step)
        self.success = bool(success)
        if self.started_s is not None:
            self.wall_s = time.monotonic() - self.started_s

    def on_policy_step(self) -> None:
        """A goal computed from one of this episode's frames arrived."""
        if self.started_s is None:
            self.started_s = time.monotonic()
        self.policy_steps += 1

    def as_dict(self) -> dict:
        d = asdict(self)
        del d["started_s"]
        d["wall_s"] = round(self.wall_s, 3)
        d["lift_height_m"] = round(max(0.0, self.max_cube_z_m - self.cube_start_z_m), 4)
        d["time_to_grasp_s"] = None if self.grasp_step is None else round(self.grasp_step * CONTROL_DT_S, 3)
        d["duration_s"] = round(self.steps * CONTROL_DT_S, 3)
        d["max_cube_z_m"] = round(self.max_cube_z_m, 4) if math.isfinite(self.max_cube_z_m) else None
        d["cube_start_z_m"] = round(self.cube_start_z_m, 4)
        return d


def append_jsonl(path: str | Path, row: dict) -> None:
    """One JSON object per line, flushed at once: a run stopped mid-way keeps its finished episodes."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95 % by default): sound at 0/n and n/n and for
    small n, where the normal approximation gives nonsense such as [1, 1] for 10/10."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes: expected 0..{n}, got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exactly 0 and 1 at the ends (the formula gives 1 - 1e-16 for n/n)
    return (0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes == n else min(1.0, centre + half))
