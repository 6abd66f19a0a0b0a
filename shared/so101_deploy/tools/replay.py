"""``so101-deploy replay-demo``: the generated video through the camera node into the recorder.

Writes the project's generated video into ``--out``, runs ``dora run dataflow.replay.yml
--stop-after S`` (a copy in ``--out`` with absolute node paths, so dora's own ``out/`` logs land
there too) with ``SO101_REPLAY_VIDEO`` / ``SO101_REPLAY_RECORD_DIR`` pointing there (nothing is
written into the repository or the installed package), then reads the recording back and prints
frames, rate and frame_id continuity.  The first command a user runs: it needs no robot, camera or model.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from so101_deploy.core.dataflow import DataflowError, add_flows_argument, flow_file, prepare, run_dataflow
from so101_deploy.core.messages import Message
from so101_deploy.core.recording import read_recording
from so101_deploy.sim.synthetic import read_frame_index, write_video

DATAFLOW = "dataflow.replay.yml"


def find_dataflow(name: str = DATAFLOW, flows: str | Path | None = None) -> Path:
    """The replay dataflow in ``--flows DIR``, $SO101_FLOWS, the checkout or the installed package."""
    return flow_file(name, flows)


@dataclass
class Summary:
    frames: int
    rate_hz: float
    first_frame_id: int
    last_frame_id: int
    gaps: int  # missing frame_ids between consecutive messages
    out_of_order: int
    video_order_ok: bool  # each frame shows the generated frame that follows the previous one

    def lines(self) -> list[str]:
        return [
            f"frames: {self.frames} (frame_id {self.first_frame_id}..{self.last_frame_id})",
            f"rate: {self.rate_hz:.1f} Hz (from capture stamps)",
            f"frame_id continuity: {'ok' if not self.gaps and not self.out_of_order else 'BROKEN'} "
            f"({self.gaps} missing, {self.out_of_order} out of order)",
            f"video order: {'ok' if self.video_order_ok else 'BROKEN'} (frame index read from the pixels)",
        ]


def summarize(messages: list[Message], video_frames: int) -> Summary:
    """Frames, rate and continuity of recorded ``image`` messages of the generated video."""
    if not messages:
        raise ValueError("the recording has no image messages (did the dataflow stop before the camera started? "
                         "--stop-after counts from dora's start: try more --seconds)")
    ids = np.array([m.frame_id for m in messages])
    stamps = np.array([m.stamp_ns for m in messages], dtype=np.int64)
    steps = np.diff(ids)
    span_s = (stamps[-1] - stamps[0]) / 1e9
    shown = [read_frame_index(m.data) for m in messages]
    expected = [(shown[0] + i) % video_frames for i in range(len(shown))]
    return Summary(frames=len(messages), rate_hz=(len(messages) - 1) / span_s if span_s > 0 else float("nan"),
                   first_frame_id=int(ids[0]), last_frame_id=int(ids[-1]),
                   gaps=int(np.sum(steps[steps > 1] - 1)), out_of_order=int(np.sum(steps < 1)),
                   video_order_ok=shown == expected)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder for the video, the recording and dora's log")
    parser.add_argument("--seconds", type=int, default=5, help="how long the dataflow runs, whole seconds (default 5)")
    parser.add_argument("--frames", type=int, default=90, help="frames in the generated video (default 90)")
    parser.add_argument("--seed", type=int, default=0, help="scene variant (default 0)")
    add_flows_argument(parser)


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    try:
        dataflow = find_dataflow(flows=args.flows)
    except DataflowError as e:
        print(f"replay-demo: error: {e}")
        return 2
    if out.is_relative_to(dataflow.parent) and not out.is_relative_to(dataflow.parent / "out"):
        print(f"replay-demo: error: --out {out} is inside the flows folder {dataflow.parent}; use a folder outside "
              f"it or under out/")
        return 2
    video = out / "video.mp4"
    record_dir = out / "recording"
    if record_dir.exists():
        shutil.rmtree(record_dir)  # a recording is appended to; start clean
    write_video(video, args.frames, seed=args.seed)
    print(f"video: {video} ({args.frames} generated frames)")
    env = {"SO101_REPLAY_VIDEO": str(video), "SO101_REPLAY_RECORD_DIR": str(record_dir),
           "SO101_REPLAY_MAX_FRAMES": "0"}
    log_path = out / "dora.log"
    seconds = max(1, round(args.seconds))
    print(f"running: dora run {dataflow} --stop-after {seconds}s (log: {log_path})")
    try:
        prepared = prepare(dataflow, out / dataflow.name)
        result = run_dataflow(prepared, seconds, log_path=log_path, extra_env=env)
    except DataflowError as e:
        print(f"replay-demo: error: {e}")
        return 2
    if result.returncode != 0:
        print(f"replay-demo: error: dora exited with {result.returncode}; see {log_path}")
        return 1
    try:
        messages = read_recording(record_dir).get("image", []) if record_dir.exists() else []
        summary = summarize(messages, args.frames)
    except (OSError, ValueError) as e:
        print(f"replay-demo: error: reading the recording {record_dir}: {e}; see {log_path}")
        return 1
    print(f"recording: {record_dir}")
    for line in summary.lines():
        print(line)
    ok = summary.frames > 1 and not summary.gaps and not summary.out_of_order and summary.video_order_ok
    return 0 if ok else 1
