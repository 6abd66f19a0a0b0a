"""``so101-deploy camera-check``: open a camera source and report what it delivers.

Reads ``--frames`` frames through :class:`so101_deploy.perception.camera.Camera` (the camera node's
own reader) and prints the source, the frame size, the frame_id continuity, the measured rate and
the mean colour.  Exit codes: 0 frames read, 1 no frame within ``--timeout-s``, 2 a source that
cannot be used as given.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np

from so101_deploy.perception.camera import (EXPECTED_SOURCE, FRAME_HEIGHT, FRAME_WIDTH, Camera, CameraError,
                                            Frame)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", default=os.environ.get("SO101_CAMERA"),
                        help=f"{EXPECTED_SOURCE} (default: $SO101_CAMERA)")
    parser.add_argument("--frames", type=int, default=30, help="frames to read (default 30)")
    parser.add_argument("--fps", type=float, default=30.0, help="rate to read at (default 30)")
    parser.add_argument("--resize", action="store_true", help="resize other sizes to 640x480 (INTER_AREA)")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="give up after this long (default 10)")
    parser.add_argument("--save", type=Path, help="write the first frame to this image file")
    parser.add_argument("--camera-calibration", default=os.environ.get("SO101_CAMERA_CALIBRATION", ""),
                        help="camera calibration JSON: frames are remapped onto the sim's wrist_cam as the camera "
                             "node does, and --save writes the remapped frame (default: $SO101_CAMERA_CALIBRATION)")


def run(args: argparse.Namespace) -> int:
    if not args.source:
        print(f"camera-check: error: no source given and SO101_CAMERA is not set; expected {EXPECTED_SOURCE}")
        return 2

    def log(level: str, message: str) -> None:
        print(f"  [{level}] {message}")

    rectifier = None
    if args.camera_calibration:
        from so101_deploy.perception.camera_calibration import CalibrationError, CameraCalibration, Rectifier
        from so101_deploy.sim.scene import wrist_camera_pinhole

        try:
            rectifier = Rectifier(CameraCalibration.load(args.camera_calibration), wrist_camera_pinhole())
        except CalibrationError as e:
            print(f"camera-check: error: {e}")
            return 2
        log("info", rectifier.describe())
        if rectifier.border_warning():
            log("warning", rectifier.border_warning())
    try:
        cam = Camera(args.source, fps=args.fps, loop=False, resize=args.resize, max_frames=args.frames, log=log,
                     rectifier=rectifier)
        print(f"source: {cam.source.describe()} ({cam.source.kind})")
        cam.open()
    except CameraError as e:
        print(f"camera-check: error: {e}")
        return 2
    frames: list[Frame] = []
    start = time.monotonic()
    try:
        while len(frames) < args.frames and cam.state != "ended" and time.monotonic() - start < args.timeout_s:
            frame = cam.poll()
            if frame is None:
                time.sleep(0.002)
                continue
            if not frames and args.save is not None:
                cv2.imwrite(str(args.save), frame.image_bgr)
            frames.append(frame)
    except CameraError as e:
        print(f"camera-check: error: {e}")
        return 2
    finally:
        cam.close()
    if not frames:
        print(f"camera-check: no frame from {cam.source.describe()} within {args.timeout_s:g} s")
        return 1
    span_s = (frames[-1].stamp_ns - frames[0].stamp_ns) / 1e9
    rate = (len(frames) - 1) / span_s if span_s > 0 else float("nan")
    ids = [f.frame_id for f in frames]
    mean_bgr = np.mean([f.image_bgr.reshape(-1, 3).mean(axis=0) for f in frames], axis=0)
    print(f"frames: {len(frames)} of {FRAME_WIDTH}x{FRAME_HEIGHT}x3 uint8 BGR, frame_id {ids[0]}..{ids[-1]}"
          f"{' (continuous)' if ids == list(range(ids[0], ids[0] + len(ids))) else ' (GAPS)'}")
    print(f"rate: {rate:.1f} fps measured (asked {args.fps:g}); mean BGR {np.round(mean_bgr, 1).tolist()}")
    if args.save is not None:
        print(f"first frame written to {args.save}")
    return 0
