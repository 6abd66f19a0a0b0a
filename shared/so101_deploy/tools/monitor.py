"""What the pipeline sees and does, for people: a side-by-side video and a run report.

The monitor listens to the camera frames, the masks, the disparities, the actions and the goals
of a running graph.  It writes

* a video: wrist view | mask (class colours) | disparity (near = bright), one row per frame for
  which both perception results arrived, plus stills of the first and the last row;
* a report (JSON and Markdown): frames seen, control rate (goals per second and the spread of
  the intervals), end-to-end latency (camera capture stamp -> goal received, per goal), the
  safety events the controller reported, and whether frame ids flowed in order end to end.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from so101_deploy.core import trace

logger = logging.getLogger(__name__)
PROGRESS_LOG_AT = (1, 3, 10, 30, 100, 300)
from so101_deploy.core.messages import Message
from so101_deploy.core.settings import Setting

SETTINGS = (
    Setting("SO101_MONITOR_DIR", "str", "artifacts/monitor", "where the report and the video are written"),
    Setting("SO101_MONITOR_FPS", "float", 10.0, "frame rate of the side-by-side video", min=1.0, max=120.0),
)

# BGR colours for the real 6 classes and the sim 5 classes (same semantic colour for both).
REAL6_BGR = np.array([[0, 0, 0], [90, 90, 90], [60, 160, 200], [30, 30, 230], [230, 160, 40], [60, 220, 60]],
                     np.uint8)
SIM5_BGR = REAL6_BGR[[1, 2, 3, 4, 5]]
SIM5_BGR[0] = (90, 90, 90)

TILE_W, TILE_H = 320, 240


def colour_mask(mask: np.ndarray, classes: str) -> np.ndarray:
    lut = SIM5_BGR if classes == "sim5" else REAL6_BGR
    return lut[np.clip(mask, 0, len(lut) - 1)]


def colour_disparity(disp: np.ndarray) -> np.ndarray:
    d = disp.astype(np.float32)
    lo, hi = float(d.min()), float(d.max())
    norm = np.zeros_like(d) if hi - lo <= 1e-12 else (d - lo) / (hi - lo)
    return cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)


def compose_row(image_bgr: np.ndarray, mask: np.ndarray, classes: str, disparity: np.ndarray,
                caption: str = "") -> np.ndarray:
    tiles = [cv2.resize(image_bgr, (TILE_W, TILE_H), interpolation=cv2.INTER_AREA),
             cv2.resize(colour_mask(mask, classes), (TILE_W, TILE_H), interpolation=cv2.INTER_NEAREST),
             cv2.resize(colour_disparity(disparity), (TILE_W, TILE_H), interpolation=cv2.INTER_AREA)]
    for tile, label in zip(tiles, ("wrist camera", f"segmentation ({classes})", "disparity (near = bright)")):
        cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    row = np.concatenate(tiles, axis=1)
    if caption:
        cv2.putText(row, caption, (6, TILE_H - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return row


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, np.float64)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "max": float(a.max()), "mean": float(a.mean())}


@dataclass
class Monitor:
    out_dir: Path
    fps: float = 10.0
    keep_frames: int = 32
    images: "OrderedDict[int, np.ndarray]" = field(default_factory=OrderedDict)
    masks: dict[int, tuple[np.ndarray, str]] = field(default_factory=dict)
    disps: dict[int, np.ndarray] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    safety_events: Counter = field(default_factory=Counter)
    goal_times_s: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    goal_frame_ids: list[int] = field(default_factory=list)
    new_frame_goal_s: list[float] = field(default_factory=list)  # goals that carry a newer camera frame
    new_frame_latencies_ms: list[float] = field(default_factory=list)
    action_spaces: Counter = field(default_factory=Counter)
    episodes: Counter = field(default_factory=Counter)
    started_s: float = field(default_factory=time.time)
    limits: Any = None  # safety.JointLimits: every goal is checked against them
    goals_outside_limits: int = 0
    max_goal_step_rad: np.ndarray | None = None  # per joint, between consecutive goals
    _last_goal: np.ndarray | None = None
    _writer: Any = None
    _max_goal_frame: int = -1
    _first_row: np.ndarray | None = None
    _last_row: np.ndarray | None = None
    rows_written: int = 0
    # per new camera frame that reached the arm: its timeline stamps (see so101_deploy.core.trace),
    # relative to the capture, in ms; the servo's write of that goal is added from its joint_state
    timelines: "OrderedDict[int, dict[str, float]]" = field(default_factory=OrderedDict)
    keep_timelines: int = 10000

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    # --- inputs ----------------------------------------------------------------------------
    def on_image(self, msg: Message) -> None:
        self.counts["image"] += 1
        self.images[msg.frame_id] = np.array(msg.data)  # copy: the Arrow buffer is released after the event
        while len(self.images) > self.keep_frames:
            old, _ = self.images.popitem(last=False)
            self.masks.pop(old, None)
            self.disps.pop(old, None)
        self._try_compose(msg.frame_id)

    def on_mask(self, msg: Message) -> None:
        self.counts["mask"] += 1
        self.masks[msg.frame_id] = (np.array(msg.data), str(msg.meta.get("classes", "real6")))
        self._try_compose(msg.frame_id)

    def on_disparity(self, msg: Message) -> None:
        self.counts["disparity"] += 1
        self.disps[msg.frame_id] = np.array(msg.data)
        self._try_compose(msg.frame_id)

    def on_action(self, msg: Message) -> None:
        self.counts["action"] += 1
        self.action_spaces[str(msg.meta.get("action_space"))] += 1

    def on_joint_state(self, msg: Message) -> None:
        self.counts["joint_state"] += 1
        line = self.timelines.get(int(msg.meta.get("goal_frame_id", -1)))
        if line is not None and "servo_write" not in line and "t_servo_write_ns" in msg.meta:
            line["servo_write"] = (int(msg.meta["t_servo_write_ns"]) - line.pop("_capture_ns")) / 1e6
        finished = msg.meta.get("previous_episode_success")  # the simulator's first state after a reset
        if finished is not None:
            self.episodes["success" if int(finished) else "failure"] += 1

    def on_goal(self, msg: Message, now_ns: int | None = None) -> None:
        now_ns = time.time_ns() if now_ns is None else now_ns
        self.counts["goal"] += 1
        self.goal_times_s.append(now_ns / 1e9)
        self.latencies_ms.append((now_ns - msg.stamp_ns) / 1e6)
        if msg.frame_id > self._max_goal_frame:
            self.new_frame_goal_s.append(now_ns / 1e9)
            self.new_frame_latencies_ms.append((now_ns - msg.stamp_ns) / 1e6)
            self._max_goal_frame = msg.frame_id
            n = len(self.new_frame_goal_s)
            if n in PROGRESS_LOG_AT or n % 1000 == 0:  # a run in progress says it is moving (tests wait on it)
                logger.info(f"{n} new camera frame(s) reached the arm")
            line = {k[len(trace.PREFIX):-3]: (v - msg.stamp_ns) / 1e6 for k, v in trace.stamps(msg.meta).items()}
            self.timelines[msg.frame_id] = {**line, "_capture_ns": msg.stamp_ns}
            while len(self.timelines) > self.keep_timelines:
                self.timelines.popitem(last=False)
        self.goal_frame_ids.append(msg.frame_id)
        goal = np.asarray(msg.data, np.float64)
        if self.limits is not None and not self.limits.contains(goal, tol_rad=1e-9):
            self.goals_outside_limits += 1
        restarted = "episode_restart" in str(msg.meta.get("events", ""))  # the simulator teleported the arm
        if self._last_goal is not None and not restarted:
            step = np.abs(goal - self._last_goal)
            self.max_goal_step_rad = step if self.max_goal_step_rad is None else np.maximum(self.max_goal_step_rad, step)
        self._last_goal = goal
        for ev in str(msg.meta.get("events", "")).split(","):
            if ev.strip():
                self.safety_events[ev.strip()] += 1

    # --- video -----------------------------------------------------------------------------
    def _try_compose(self, frame_id: int) -> None:
        if frame_id not in self.images or frame_id not in self.masks or frame_id not in self.disps:
            return
        mask, classes = self.masks.pop(frame_id)
        row = compose_row(self.images[frame_id], mask, classes, self.disps.pop(frame_id), f"frame {frame_id}")
        if self._writer is None:
            h, w = row.shape[:2]
            self._writer = cv2.VideoWriter(str(self.out_dir / "wrist_view.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                                           self.fps, (w, h))
            if not self._writer.isOpened():
                raise RuntimeError(f"monitor: cannot open a video writer at {self.out_dir / 'wrist_view.mp4'}")
        self._writer.write(row)
        if self._first_row is None:
            self._first_row = row
        self._last_row = row
        self.rows_written += 1

    # --- report ----------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        intervals_ms = list(np.diff(self.goal_times_s) * 1e3) if len(self.goal_times_s) > 1 else []
        span_s = (self.goal_times_s[-1] - self.goal_times_s[0]) if len(self.goal_times_s) > 1 else 0.0
        ids = self.goal_frame_ids
        new = self.new_frame_goal_s
        new_span_s = new[-1] - new[0] if len(new) > 1 else 0.0
        new_intervals_ms = list(np.diff(new) * 1e3) if len(new) > 1 else []
        return {
            "wall_s": round(time.time() - self.started_s, 2),
            "messages": dict(self.counts),
            "video_rows": self.rows_written,
            "control_rate_hz": (len(self.goal_times_s) - 1) / span_s if span_s > 0 else 0.0,
            "goal_interval_ms": _percentiles(intervals_ms),
            "latency_capture_to_goal_ms": _percentiles(self.latencies_ms),
            # the rate at which new camera frames turn into goals (a held/repeated goal does not count)
            "new_frame_goal_rate_hz": (len(new) - 1) / new_span_s if new_span_s > 0 else 0.0,
            "new_frame_latency_ms": _percentiles(self.new_frame_latencies_ms),
            "new_frame_goal_interval_ms": _percentiles(new_intervals_ms),
            "safety_events": dict(self.safety_events),
            "goals_outside_limits": self.goals_outside_limits if self.limits is not None else None,
            "max_goal_step_rad": None if self.max_goal_step_rad is None else
            [round(float(x), 4) for x in self.max_goal_step_rad],
            "action_spaces": dict(self.action_spaces),
            "episodes": dict(self.episodes),
            "goal_frame_ids_nondecreasing": all(b >= a for a, b in zip(ids, ids[1:])),
            "distinct_goal_frame_ids": len(set(ids)),
            "first_goal_unix_s": self.goal_times_s[0] if self.goal_times_s else None,
            "timeline_ms": self.timeline(),
        }

    def timeline(self) -> dict[str, dict[str, float]]:
        """One frame's way from capture to the servo write: per stamp, the p50/p90 ms after capture over
        the new frames that reached the arm (the first ones skipped: warm-up), in the order of the p50."""
        lines = list(self.timelines.values())[3:]
        keys = {k for line in lines for k in line if not k.startswith("_")}
        out = {k: _percentiles([line[k] for line in lines if k in line]) for k in keys}
        return dict(sorted(((k, v) for k, v in out.items() if v is not None), key=lambda kv: kv[1]["p50"]))

    def close(self) -> dict[str, Any]:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._first_row is not None:  # the start of the run (the arm at its reset pose, cube in view)
            cv2.imwrite(str(self.out_dir / "wrist_view_first.png"), self._first_row)
        if self._last_row is not None:
            cv2.imwrite(str(self.out_dir / "wrist_view_still.png"), self._last_row)
        rep = self.report()
        (self.out_dir / "report.json").write_text(json.dumps(rep, indent=2))
        (self.out_dir / "report.md").write_text(render_markdown(rep))
        return rep


def _fmt(p: dict[str, float] | None, unit: str) -> str:
    if not p:
        return "n/a"
    return f"p50 {p['p50']:.1f} {unit}, p90 {p['p90']:.1f} {unit}, max {p['max']:.1f} {unit} (n={p['n']})"


def render_markdown(rep: dict[str, Any]) -> str:
    lines = [
        "# so101-deploy run report", "",
        f"- wall time: {rep['wall_s']} s",
        f"- messages seen: {rep['messages']}",
        f"- video rows (frames with mask and disparity): {rep['video_rows']}",
        f"- control rate: {rep['control_rate_hz']:.1f} Hz (goal interval {_fmt(rep['goal_interval_ms'], 'ms')})",
        f"- end-to-end latency, camera capture -> goal: {_fmt(rep['latency_capture_to_goal_ms'], 'ms')}",
        f"- new camera frames reaching the arm: {rep['new_frame_goal_rate_hz']:.2f} Hz "
        f"(latency {_fmt(rep['new_frame_latency_ms'], 'ms')})",
        f"- safety events: {rep['safety_events'] or 'none'}",
        f"- goals outside the joint limits: {rep['goals_outside_limits']}; largest change between consecutive "
        f"goals per joint (rad): {rep['max_goal_step_rad']}",
        f"- action spaces: {rep['action_spaces']}",
        f"- episodes: {rep['episodes'] or 'none finished'}",
        f"- goal frame ids in order: {rep['goal_frame_ids_nondecreasing']} "
        f"({rep['distinct_goal_frame_ids']} distinct camera frames reached the arm)",
    ]
    return "\n".join(lines + timeline_table(rep.get("timeline_ms") or {})) + "\n"


def timeline_table(timeline: dict[str, dict[str, float]]) -> list[str]:
    """The per-stage timeline of one frame as Markdown: each stamp's ms after capture and the step from
    the stamp before it (``<node>_in``: the node received it; ``<node>_out``: it sent its result)."""
    if not timeline:
        return []
    out = ["", "Timeline of one frame, capture = 0 (p50 over the frames that reached the arm):", "",
           "| stamp | ms after capture p50 | p90 | step from the previous p50 |", "|---|---|---|---|"]
    prev = 0.0
    for key, p in timeline.items():
        out.append(f"| {key} | {p['p50']:.1f} | {p['p90']:.1f} | {p['p50'] - prev:+.1f} |")
        prev = p["p50"]
    return out
