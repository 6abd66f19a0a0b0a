"""``so101-deploy camera-overlay``: check the wrist camera's mounting pose against the MJCF's ``wrist_cam``.

Take a photo with the wrist camera (the gripper's fingers are always in view), note the six joint
angles at that moment (rad, JOINT_NAMES order; only the gripper angle moves the fingers in this
view), and run this: the photo is remapped onto the sim's camera (``--camera-calibration``, default
``$SO101_CAMERA_CALIBRATION``), the sim renders its fingers at the same angles, and ``--out`` gets the
photo with the sim's finger outlines side by side with the sim's render.  Outlines that sit on the
real fingers mean the camera is mounted where the sim's camera is; a shift or a rotation tells how it
differs (see docs/camera-calibration.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from so101_deploy.core.messages import JOINT_NAMES


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--photo", required=True, type=Path, help="a wrist camera photo (the calibrated size)")
    p.add_argument("--joints", required=True,
                   help=f"six joint angles in rad, comma-separated, in the order {', '.join(JOINT_NAMES)}")
    p.add_argument("--camera-calibration", default=os.environ.get("SO101_CAMERA_CALIBRATION", ""),
                   help="camera calibration JSON (default: $SO101_CAMERA_CALIBRATION)")
    p.add_argument("--out", type=Path, default=Path("camera_overlay.png"), help="side-by-side image to write")


def _fail(msg: str) -> int:
    print(f"camera-overlay: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from so101_deploy.perception.camera_calibration import (NO_CALIBRATION_WARNING, CalibrationError,
                                                            CameraCalibration, Rectifier)
    from so101_deploy.sim import scene as sim_scene
    from so101_deploy.sim.finger_overlay import finger_overlay, sim_fingers
    from so101_deploy.sim.sim_arm import SimArm

    try:
        q = np.array([float(x) for x in args.joints.split(",")], np.float64)
    except ValueError:
        q = np.zeros(0)
    if q.shape != (len(JOINT_NAMES),) or not np.isfinite(q).all():
        return _fail(f"--joints {args.joints!r}: expected {len(JOINT_NAMES)} comma-separated angles in rad "
                     f"({', '.join(JOINT_NAMES)})")
    photo = cv2.imread(str(args.photo), cv2.IMREAD_COLOR)
    if photo is None:
        return _fail(f"--photo {args.photo}: not an image OpenCV can read")
    model = sim_scene.build_model()
    if args.camera_calibration:
        try:
            rect = Rectifier(CameraCalibration.load(args.camera_calibration), sim_scene.wrist_camera_pinhole(model))
            photo = rect.apply(photo)
        except CalibrationError as e:
            return _fail(str(e))
    else:
        print(f"camera-overlay: warning: {NO_CALIBRATION_WARNING}", file=sys.stderr)
        if photo.shape[:2] != (sim_scene.IMAGE_HEIGHT, sim_scene.IMAGE_WIDTH):
            return _fail(f"--photo {args.photo}: {photo.shape[1]}x{photo.shape[0]}, expected 640x480 without a "
                         f"calibration")
    sim = SimArm(model)
    try:
        sim_bgr, classes = sim_fingers(sim, q)
    finally:
        sim.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), finger_overlay(photo, sim_bgr, classes))
    print(f"wrote {args.out}: left the photo with the sim's finger outlines (orange static, green moving), right "
          f"the sim's wrist_cam at the same joint angles")
    return 0
