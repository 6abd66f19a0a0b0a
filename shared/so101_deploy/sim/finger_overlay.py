"""The mounting-pose check of the wrist camera: the sim's fingers drawn over a photo of the real ones.

The fingers are always in the wrist camera's view, fixed to it (the static finger) or moved only by
the gripper joint (the moving jaw), so they show where the camera sits: a photo of the real gripper,
remapped onto the sim's ``wrist_cam`` with the camera calibration, must show the fingers where the sim
renders them at the same joint angles.  :func:`finger_overlay` returns the photo with the sim's finger
outlines on it, side by side with the sim's render; :func:`finger_agreement` measures the overlap when
the real fingers' mask is known (IoU per finger).
"""

from __future__ import annotations

import cv2
import numpy as np

from so101_deploy.sim.oracle import CLASS_MOVING_FINGER, CLASS_STATIC_FINGER, OracleSeg
from so101_deploy.sim.sim_arm import SimArm

OUTLINE_BGR = {CLASS_STATIC_FINGER: (40, 160, 230), CLASS_MOVING_FINGER: (60, 220, 60)}


def sim_fingers(sim: SimArm, q_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sim's wrist view (BGR) and its class mask with the arm at ``q_rad`` (6 joint angles, rad)."""
    sim.set_joint_positions(q_rad)
    return sim.render_rgb_bgr(), OracleSeg(sim.model).classes(sim.render_seg())


def finger_overlay(photo_bgr: np.ndarray, sim_bgr: np.ndarray, sim_classes: np.ndarray) -> np.ndarray:
    """[photo with the sim's finger outlines | sim render with the same outlines], 1280x480 BGR."""
    if photo_bgr.shape != sim_bgr.shape or photo_bgr.shape[:2] != sim_classes.shape:
        raise ValueError(f"photo {photo_bgr.shape} and sim render {sim_bgr.shape}: expected the same 640x480 BGR "
                         f"(remap the photo onto the sim's camera first)")
    left, right = photo_bgr.copy(), sim_bgr.copy()
    for cls, colour in OUTLINE_BGR.items():
        contours, _ = cv2.findContours((sim_classes == cls).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        for image in (left, right):
            cv2.drawContours(image, contours, -1, colour, 2)
    cv2.putText(left, "photo (remapped) + sim finger outlines", (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                (255, 255, 255), 2)
    cv2.putText(right, "sim wrist_cam, same joint angles", (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                (255, 255, 255), 2)
    return np.hstack([left, right])


def finger_agreement(real_classes: np.ndarray, sim_classes: np.ndarray) -> dict[str, float]:
    """IoU of the static and the moving finger between two sim-class masks of the same view."""
    out = {}
    for name, cls in (("static_finger", CLASS_STATIC_FINGER), ("moving_finger", CLASS_MOVING_FINGER)):
        a, b = real_classes == cls, sim_classes == cls
        union = int((a | b).sum())
        out[name] = float((a & b).sum() / union) if union else 1.0
    return out


