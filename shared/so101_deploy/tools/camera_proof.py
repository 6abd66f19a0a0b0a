"""``so101-deploy camera-proof``: the camera remap, proved in the simulator (see sim/camera_proof.py).

Renders the checkerboard views of a wider, distorted "real" wrist camera, calibrates it with the
project's own calibration, builds the remap onto the sim's ``wrist_cam``, and for ``--states`` seeded
scene states compares the simulator's segmentation seen through the remapped real camera with the
direct ``wrist_cam`` render in the 84x84 observation, with and without the remap; then the mounting
check: the fingers' overlap for a camera mounted as the MJCF says and one pitched by ``--mispose-deg``.
Writes ``--out``/camera-proof.md (+ .json) and two figures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np

MISPOSE_JOINTS = (0.0, -0.3, 0.4, 1.0, 0.0, 0.8)  # gripper open: both fingers in view


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("artifacts/camera-proof"), help="folder for the report and figures")
    p.add_argument("--states", type=int, default=5, help="scene states (reset seeds 0..N-1) to compare (default 5)")
    p.add_argument("--mispose-deg", type=float, default=7.7,
                   help="pitch error of the mis-mounted camera (default 7.7 deg = 0.134 rad, the euler offset "
                        "another pick-101 rig measured for its camera)")


def run(args: argparse.Namespace) -> int:
    from so101_deploy.perception.camera_calibration import CameraCalibration, Rectifier
    from so101_deploy.sim import camera_proof as proof
    from so101_deploy.sim.finger_overlay import finger_agreement, finger_overlay
    from so101_deploy.sim.scene import wrist_camera_pinhole
    from so101_deploy.sim.sim_arm import SimArm

    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    lens = proof.REAL_CAMERA
    calib, rendered = proof.calibrate_from_renders(lens=lens)
    model = proof.proof_model()
    sim_cam = wrist_camera_pinhole(model)
    rect = Rectifier(calib, sim_cam)
    fx_err = calib.camera_matrix[0, 0] / lens.matrix[0, 0] - 1
    fy_err = calib.camera_matrix[1, 1] / lens.matrix[1, 1] - 1
    sim = SimArm(model)
    rows = []
    try:
        for seed in range(args.states):
            sim.reset(seed)
            frames = proof.render_state(model, sim.data, lens, rgb=(seed == 0))
            rows.append({"seed": seed, **proof.compare(frames, rect)})
            if seed == 0:
                cv2.imwrite(str(args.out / "camera_remap.png"),
                            np.hstack([frames.real_bgr, rect.apply(frames.real_bgr), frames.direct_bgr]))
        mounts = {}
        truth = Rectifier(CameraCalibration(lens.width, lens.height, lens.matrix, lens.dist, 0.0), sim_cam)
        sim.set_joint_positions(np.array(MISPOSE_JOINTS))
        for name, pitch in (("as in the MJCF", 0.0), (f"pitched {args.mispose_deg:g} deg", args.mispose_deg)):
            proof.set_wide_mount(model, sim.data, -math.radians(pitch))
            frames = proof.render_state(model, sim.data, lens, rgb=bool(pitch))
            mounts[name] = finger_agreement(truth.apply(frames.real_seg, cv2.INTER_NEAREST), frames.direct_seg)
            if pitch:
                cv2.imwrite(str(args.out / "camera_overlay_mispose.png"),
                            finger_overlay(truth.apply(frames.real_bgr), frames.direct_bgr, frames.direct_seg))
    finally:
        proof.set_wide_mount(model, sim.data)
        sim.close()
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "seed"}
    worst = {k: float(np.min([r[k] for r in rows])) for k in rows[0] if k != "seed"}
    real_fov, sim_fov = calib.fov_deg(), sim_cam.fov_deg()
    report = {
        "lens_truth": {"camera_matrix": lens.matrix.tolist(), "dist_coeffs": lens.dist.tolist()},
        "calibration": calib.to_json(), "views_rendered": rendered,
        "focal_error": {"fx": fx_err, "fy": fy_err},
        "fov_deg": {"real": real_fov, "sim": sim_fov}, "coverage": rect.coverage,
        "states": rows, "mean": mean, "worst": worst, "mounting_check_finger_iou": mounts,
        "seconds": time.monotonic() - t0,
    }
    (args.out / "camera-proof.json").write_text(json.dumps(report, indent=2) + "\n")
    k = calib.camera_matrix
    lines = [
        "# Camera remap, proved in the simulator", "",
        f"Command: `so101-deploy camera-proof --out {args.out} --states {args.states} "
        f"--mispose-deg {args.mispose_deg:g}` "
        f"({report['seconds']:.0f} s on this machine).", "",
        "| | fx (px) | fy (px) | cx | cy | k1 | k2 | HFOV x VFOV (deg) |", "|---|---|---|---|---|---|---|---|",
        f"| truth (\"real\" camera) | {lens.matrix[0, 0]:.2f} | {lens.matrix[1, 1]:.2f} | {lens.matrix[0, 2]:.2f} | "
        f"{lens.matrix[1, 2]:.2f} | {lens.dist[0]:.4f} | {lens.dist[1]:.4f} | |",
        f"| calibrated from {calib.views}/{rendered} rendered board views | {k[0, 0]:.2f} | {k[1, 1]:.2f} | "
        f"{k[0, 2]:.2f} | {k[1, 2]:.2f} | {calib.dist_coeffs[0]:.4f} | {calib.dist_coeffs[1]:.4f} | "
        f"{real_fov['horizontal']:.1f} x {real_fov['vertical']:.1f} |",
        f"| sim `wrist_cam` | {sim_cam.fx:.2f} | {sim_cam.fy:.2f} | {sim_cam.cx:.2f} | {sim_cam.cy:.2f} | 0 | 0 | "
        f"{sim_fov['horizontal']:.1f} x {sim_fov['vertical']:.1f} |", "",
        f"Focal length error: fx {fx_err:+.3%}, fy {fy_err:+.3%} (bound 1 %); RMS reprojection error "
        f"{calib.rms_px:.3f} px; the real camera covers {rect.coverage:.1%} of the sim's view.", "",
        "Simulator segmentation in the 84x84 observation, real camera vs the direct `wrist_cam` render "
        "(share of equal pixels; cube IoU):", "",
        "| seed | with remap | without remap | cube IoU with | cube IoU without |", "|---|---|---|---|---|",
        *[f"| {r['seed']} | {r['with_remap']:.4f} | {r['without_remap']:.4f} | {r['cube_iou_with_remap']:.3f} | "
          f"{r['cube_iou_without_remap']:.3f} |" for r in rows],
        f"| **mean** | **{mean['with_remap']:.4f}** | **{mean['without_remap']:.4f}** | "
        f"**{mean['cube_iou_with_remap']:.3f}** | **{mean['cube_iou_without_remap']:.3f}** |", "",
        "Mounting check (fingers' IoU, remapped real view vs the sim at the same joint angles):", "",
        "| camera mount | static finger | moving finger |", "|---|---|---|",
        *[f"| {name} | {v['static_finger']:.3f} | {v['moving_finger']:.3f} |" for name, v in mounts.items()], "",
        "Figures: `camera_remap.png` (real camera | remapped | sim wrist_cam), `camera_overlay_mispose.png` "
        "(the mis-mounted camera's remapped view with the sim's finger outlines | the sim).", "",
    ]
    (args.out / "camera-proof.md").write_text("\n".join(lines))
    print("\n".join(lines))
    ok = worst["with_remap"] >= 0.97 and abs(fx_err) < 0.01 and abs(fy_err) < 0.01
    print(f"{'PASS' if ok else 'FAIL'}: agreement with remap {worst['with_remap']:.4f} (worst) / target 0.97, "
          f"focal error {max(abs(fx_err), abs(fy_err)):.3%} / bound 1 %")
    return 0 if ok else 1
