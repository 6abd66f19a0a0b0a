"""A short video per simulated episode, for a person checking an evaluation: the wrist camera at
160x120 and, with oracle perception, the mask and disparity the policy was given, side by side, with the
step, the cube height and the grasp written on each frame.  One frame every ``every`` control steps, played
at 50/every fps: real time.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from so101_deploy.sim.render import VIDEO_HEIGHT, VIDEO_WIDTH

# sim classes 0 other, 1 floor, 2 cube, 3 static finger, 4 moving finger -> BGR
CLASS_BGR = np.array([[40, 40, 40], [150, 110, 70], [40, 40, 230], [60, 200, 60], [220, 160, 40]], dtype=np.uint8)


class EpisodeVideo:
    def __init__(self, folder: str | Path, oracle: bool = False, every: int = 2):
        if every < 1:
            raise ValueError(f"video every: expected >= 1 control steps, got {every}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.oracle = oracle
        self.every = int(every)
        self._writer: cv2.VideoWriter | None = None
        self._path: Path | None = None
        self._mask: np.ndarray | None = None
        self._disparity: np.ndarray | None = None

    def start(self, episode: int, seed: int) -> None:
        self.finish()
        self._path = self.folder / f"episode_{episode:03d}_seed_{seed}.mp4"
        width = VIDEO_WIDTH * (3 if self.oracle else 1)
        self._writer = cv2.VideoWriter(str(self._path), cv2.VideoWriter_fourcc(*"mp4v"), 50.0 / self.every,
                                       (width, VIDEO_HEIGHT))
        if not self._writer.isOpened():
            raise RuntimeError(f"cannot write a video to {self._path} (OpenCV mp4v)")
        self._mask = self._disparity = None

    def note_oracle(self, mask: np.ndarray, disparity: np.ndarray) -> None:
        """The oracle frame the policy was last given (full size; shown beside the camera)."""
        self._mask, self._disparity = mask, disparity

    def add(self, sim) -> None:
        if self._writer is None:
            return
        tiles = [sim.render_video_bgr()]
        if self.oracle:
            if self._mask is not None:
                mask = cv2.resize(CLASS_BGR[np.clip(self._mask, 0, 4)], (VIDEO_WIDTH, VIDEO_HEIGHT),
                                  interpolation=cv2.INTER_NEAREST)
                d = self._disparity
                span = float(d.max() - d.min())
                gray = ((d - d.min()) / span * 255).astype(np.uint8) if span > 1e-6 else np.full(d.shape, 255, np.uint8)
                disp = cv2.cvtColor(cv2.resize(gray, (VIDEO_WIDTH, VIDEO_HEIGHT), interpolation=cv2.INTER_AREA),
                                    cv2.COLOR_GRAY2BGR)
            else:
                mask = disp = np.zeros((VIDEO_HEIGHT, VIDEO_WIDTH, 3), np.uint8)
            tiles += [mask, disp]
        frame = np.ascontiguousarray(np.concatenate(tiles, axis=1))
        text = f"step {sim.step_count} z {sim.cube_pos()[2]:.3f}" + (" grasp" if sim.is_grasped() else "")
        cv2.putText(frame, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        self._writer.write(frame)

    def finish(self) -> str | None:
        """Close the present episode's file; returns its path (None when none was open)."""
        path = None
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            path = str(self._path)
        return path

    def close(self) -> None:
        self.finish()
