"""Regenerate the committed recordings in tests/data/recordings/ from a real dataflow run.

    python tests/data/make_recordings.py

camera_replay/: a folder of generated PNG frames (lossless, so each recorded frame equals
``synthetic.render_frame(i)`` exactly) -> the camera node -> the recorder, through
``dora run dataflow.replay.yml``, stopped after SO101_REPLAY_MAX_FRAMES frames.  About 13 kB per
frame (zstd), so a few frames keep the committed data at tens of kilobytes.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from so101_deploy.core.dataflow import run_dataflow
from so101_deploy.core.recording import read_messages
from so101_deploy.sim.synthetic import render_frame, write_image_folder

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
FRAMES = 3


def make_camera_replay(out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        frames = Path(tmp) / "frames"
        write_image_folder(frames, frames=FRAMES, seed=0)
        record_dir = Path(tmp) / "recording"
        result = run_dataflow(REPO_ROOT / "dataflow.replay.yml", 3, extra_env={
            "SO101_REPLAY_VIDEO": str(frames), "SO101_REPLAY_RECORD_DIR": str(record_dir),
            "SO101_REPLAY_MAX_FRAMES": str(FRAMES)})
        if result.returncode != 0:
            sys.exit(f"dora run failed ({result.returncode}):\n{result.log[-3000:]}")
        messages = read_messages(record_dir / "image.arrow")
        if [m.frame_id for m in messages] != list(range(FRAMES)):
            sys.exit(f"unexpected frame ids {[m.frame_id for m in messages]}")
        for i, m in enumerate(messages):
            if not (m.data == render_frame(i, seed=0)).all():
                sys.exit(f"recorded frame {i} differs from the generated frame")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(record_dir, out)
    return out


if __name__ == "__main__":
    path = make_camera_replay(HERE / "recordings" / "camera_replay")
    for f in sorted(path.iterdir()):
        print(f"{f.relative_to(REPO_ROOT)}: {f.stat().st_size} bytes")
