"""``so101-deploy infer``: the whole perception-to-action chain offline, on image files.

A user checks the checkpoints on photos before the arm moves: frames -> seg (real 6 classes) and
Depth Anything (raw disparity) -> the training observation (the observation node's very code) ->
the policy's eval action.  Written to ``--out``:

- ``seg_masks.npy``: (N, 480, 640) uint8, real class ids 0-5;
- ``disparity.npy``: (N, 480, 640) float32, raw relative disparity (not normalised);
- ``observation.npz``: ``rgb`` (3, 2, 84, 84) uint8 from the last three frames (oldest first; fewer
  frames are padded with the first, as at an episode start) and ``low_dim_state`` (3, 18) float32;
- ``action.npy``: the action for the last frame (float32, 4 = cartesian, 6 = joint_delta);
- ``summary.json``: the action, its space, the files and options used;
- ``remapped/``: with ``--camera-calibration`` (default ``$SO101_CAMERA_CALIBRATION``), each frame as seg
  and depth saw it: undistorted and reprojected onto the sim's wrist_cam (the camera node's remap); the
  frames must then have the calibrated size.

``--joints FILE``: JSON, one entry per frame, in frame order, either a list or ``{"frames": [...]}``;
each entry ``{"positions_rad": [6 floats, JOINT_NAMES order, gripper as its joint angle],
"stamp_ns": int}`` (or ``"stamp_s": float``).  Velocities come from consecutive stamps, as on the
arm.  Without it the arm is taken at rest at zero, frames 1/30 s apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from so101_deploy.core.messages import JOINT_NAMES, N_JOINTS

FRAME_HW = (480, 640)
FRAME_PERIOD_NS = 33_333_333  # 30 fps, when no joints file gives stamps


class InferError(ValueError):
    """A user input of ``infer`` that cannot be used (missing frame, bad joints file...)."""


@dataclass
class JointSample:
    positions_rad: np.ndarray  # (6,)
    stamp_ns: int


def read_frame(path: str | Path, size: tuple[int, int] = (FRAME_HW[1], FRAME_HW[0])) -> np.ndarray:
    """An image file as BGR uint8 of ``size`` (width, height; 640x480 unless calibrated), or a clear error."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InferError(f"frame {path}: file not found")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InferError(f"frame {path}: not an image OpenCV can read")
    if (img.shape[1], img.shape[0]) != tuple(size):
        if tuple(size) != (FRAME_HW[1], FRAME_HW[0]):
            raise InferError(f"frame {path}: {img.shape[1]}x{img.shape[0]}, expected {size[0]}x{size[1]} (the size "
                             f"the --camera-calibration is for)")
        raise InferError(f"frame {path}: {img.shape[1]}x{img.shape[0]}, expected 640x480 (the wrist camera's "
                         f"frames; the observation's centre crop and field of view assume it)")
    return img


def read_joints(path: str | Path, n_frames: int) -> list[JointSample]:
    """The ``--joints`` JSON (see module doc); one sample per frame, stamps strictly increasing."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InferError(f"joints file {path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InferError(f"joints file {path}: not valid JSON ({e})") from None
    entries = data.get("frames") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise InferError(f"joints file {path}: expected a list of per-frame entries or {{\"frames\": [...]}}")
    if len(entries) != n_frames:
        raise InferError(f"joints file {path}: {len(entries)} entries for {n_frames} frames; expected one per frame")
    out: list[JointSample] = []
    for i, e in enumerate(entries):
        where = f"joints file {path}: entry {i}"
        if not isinstance(e, dict) or "positions_rad" not in e:
            raise InferError(f"{where}: expected {{\"positions_rad\": [{', '.join(JOINT_NAMES)}], \"stamp_ns\": int}}")
        try:
            q = np.asarray(e["positions_rad"], dtype=np.float64)
        except (TypeError, ValueError):
            raise InferError(f"{where}: positions_rad must be {N_JOINTS} numbers (rad)") from None
        if q.shape != (N_JOINTS,) or not np.isfinite(q).all():
            raise InferError(f"{where}: positions_rad must be {N_JOINTS} finite numbers (rad) in the order "
                             f"{list(JOINT_NAMES)}, got {e['positions_rad']!r}")
        if "stamp_ns" in e and isinstance(e["stamp_ns"], int) and not isinstance(e["stamp_ns"], bool):
            stamp = int(e["stamp_ns"])
        elif "stamp_s" in e and isinstance(e["stamp_s"], (int, float)) and np.isfinite(e["stamp_s"]):
            stamp = int(round(float(e["stamp_s"]) * 1e9))
        else:
            raise InferError(f"{where}: needs an integer stamp_ns (or a number stamp_s)")
        if out and stamp <= out[-1].stamp_ns:
            raise InferError(f"{where}: stamps must increase from frame to frame")
        out.append(JointSample(q, stamp))
    return out


def at_rest(n_frames: int) -> list[JointSample]:
    return [JointSample(np.zeros(N_JOINTS), i * FRAME_PERIOD_NS) for i in range(n_frames)]


def run_chain(seg_model, depth_model, runner, frames_bgr: list[np.ndarray], joints: list[JointSample],
              options=None, proprio=None) -> dict:
    """Frames + joint samples -> masks, disparities, the last observation and its action."""
    from so101_deploy.policy.observation import ObservationBuilder, ObservationOptions
    from so101_deploy.policy.proprio import Proprioception

    builder = ObservationBuilder(options or ObservationOptions(), proprio or Proprioception())
    masks, disps = [], []
    obs = None
    for i, (bgr, js) in enumerate(zip(frames_bgr, joints)):
        mask = seg_model.predict(bgr)
        disp = np.asarray(depth_model.predict(bgr), np.float32)
        if mask.shape != FRAME_HW or disp.shape != FRAME_HW:
            raise InferError(f"frame {i}: seg gave {mask.shape} and depth {disp.shape}, expected {FRAME_HW}")
        masks.append(mask)
        disps.append(disp)
        builder.proprio.update(js.positions_rad, js.stamp_ns)
        obs = builder.build(mask, disp, "real6", i, js.stamp_ns)
    assert obs is not None
    action, space = runner.act(obs.rgb_f32, obs.low_dim_state)
    return {"seg_masks": np.stack(masks), "disparity": np.stack(disps), "rgb": obs.rgb_u8,
            "low_dim_state": obs.low_dim_state, "action": action, "action_space": space}


def write_outputs(out_dir: Path, result: dict, summary: dict) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"seg_masks": out_dir / "seg_masks.npy", "disparity": out_dir / "disparity.npy",
             "observation": out_dir / "observation.npz", "action": out_dir / "action.npy",
             "summary": out_dir / "summary.json"}
    np.save(paths["seg_masks"], result["seg_masks"].astype(np.uint8))
    np.save(paths["disparity"], result["disparity"].astype(np.float32))
    np.savez(paths["observation"], rgb=result["rgb"].astype(np.uint8),
             low_dim_state=result["low_dim_state"].astype(np.float32))
    np.save(paths["action"], result["action"].astype(np.float32))
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return paths


# --- command line ----------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seg", required=True, type=Path, help="seg checkpoint (Lightning best.ckpt)")
    parser.add_argument("--depth", required=True, type=Path,
                        help="Depth Anything V2: a Hugging Face folder or the original .pth")
    parser.add_argument("--policy", required=True, type=Path,
                        help="policy: training snapshot {agent, cfg} or hand-off {encoder, actor} file")
    parser.add_argument("--frames", required=True, nargs="+", type=Path,
                        help="640x480 image files, in time order (the last three make the observation)")
    parser.add_argument("--joints", type=Path, help="JSON of per-frame joint positions (rad) and stamps; "
                                                    "default: the arm at rest at zero")
    parser.add_argument("--out", required=True, type=Path, help="folder for the outputs")
    parser.add_argument("--camera-calibration", default=os.environ.get("SO101_CAMERA_CALIBRATION", ""),
                        help="camera calibration JSON: remap the frames onto the sim's wrist_cam first, as the camera "
                             "node does (default: $SO101_CAMERA_CALIBRATION; empty: frames used as they are)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="for all three models")
    parser.add_argument("--depth-input-size", type=int, default=518,
                        help="Depth Anything input size, a multiple of 14 (518 = the model's own; the dataflow "
                             "uses what SO101_DEPTH_INPUT_SIZE says)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load this --policy file with full pickle (runs code in it): only for a file you made "
                             "or trust; prints its sha256, the value a dataflow's SO101_POLICY_TRUSTED_SHA256 takes")
    parser.add_argument("--disparity-interp", choices=("area", "linear"), default="area",
                        help="variant: disparity resize (training: area)")
    parser.add_argument("--normalise", choices=("frame", "crop"), default="frame",
                        help="variant: disparity min-max over the full frame (training) or the crop")
    parser.add_argument("--no-remap", action="store_true",
                        help="variant: feed the real class ids 0-5 (training saw sim ids, remapped)")


def _fail(msg: str) -> int:
    print(f"so101-deploy infer: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from so101_deploy.policy.observation import ObservationOptions
    from so101_deploy.policy.safe_load import TRUST_SHA256_ENV, CheckpointError, file_sha256

    from so101_deploy.perception.camera_calibration import (NO_CALIBRATION_WARNING, CalibrationError,
                                                            CameraCalibration, Rectifier)

    rectifier = None
    if args.camera_calibration:
        from so101_deploy.sim.scene import wrist_camera_pinhole

        try:
            rectifier = Rectifier(CameraCalibration.load(args.camera_calibration), wrist_camera_pinhole())
        except CalibrationError as e:
            return _fail(f"--camera-calibration: {e}")
        print(f"so101-deploy infer: {rectifier.describe()}", file=sys.stderr)
        if rectifier.border_warning():
            print(f"so101-deploy infer: warning: {rectifier.border_warning()}", file=sys.stderr)
    else:
        print(f"so101-deploy infer: warning: {NO_CALIBRATION_WARNING}", file=sys.stderr)
    try:
        size = rectifier.input_size if rectifier else (FRAME_HW[1], FRAME_HW[0])
        frames = [read_frame(p, size) for p in args.frames]
        if rectifier is not None:
            frames = [rectifier.apply(f) for f in frames]
        joints = read_joints(args.joints, len(frames)) if args.joints else at_rest(len(frames))
        options = ObservationOptions(args.disparity_interp, args.normalise, not args.no_remap)
    except InferError as e:
        return _fail(str(e))

    from so101_deploy.perception.depth import DepthModel
    from so101_deploy.policy.drqv2 import PolicyRunner
    from so101_deploy.perception.seg import SegModel

    # the policy first: it is the quickest to load and the likeliest to be refused
    trusted_sha256 = None
    if args.trust_checkpoint and args.policy.is_file():  # a missing file: the loader says so below
        # trust this very file: the loader re-hashes the bytes it reads and refuses any other
        try:
            trusted_sha256 = file_sha256(args.policy)
        except OSError as e:
            return _fail(f"--policy {args.policy}: {e.strerror or e}")
        print(f"so101-deploy infer: warning: --trust-checkpoint: loading {args.policy} (sha256 {trusted_sha256}) as a "
              f"full pickle, which can run code in it; in a dataflow: '{TRUST_SHA256_ENV}: {trusted_sha256}'",
              file=sys.stderr)
    try:
        runner = PolicyRunner.load(args.policy, device=args.device, backend=args.backend,
                                   trusted_sha256=trusted_sha256)
    except (CheckpointError, ValueError, RuntimeError) as e:
        return _fail(f"--policy {args.policy}: {e}")
    try:
        seg = SegModel.load(args.seg, device=args.device, backend=args.backend)
    except Exception as e:  # noqa: BLE001 - any load failure is reported with the option that named the file
        return _fail(f"--seg {args.seg}: {e}")
    try:
        depth = DepthModel.load(args.depth, device=args.device, backend=args.backend,
                                input_size=args.depth_input_size)
    except Exception as e:  # noqa: BLE001
        return _fail(f"--depth {args.depth}: {e}")

    try:
        result = run_chain(seg, depth, runner, frames, joints, options)
    except (InferError, ValueError) as e:
        return _fail(str(e))
    action = result["action"]
    summary = {
        "action": [float(a) for a in action], "action_space": result["action_space"],
        "policy": {"file": str(args.policy), "format": runner.loaded.format, "action_dim": runner.spec.action_dim},
        "seg": str(args.seg), "depth": str(args.depth), "depth_input_size": args.depth_input_size,
        "frames": [str(p) for p in args.frames], "joints": str(args.joints) if args.joints else "at rest at zero",
        "observation_options": {"disparity_interp": options.disparity_interp, "normalise": options.normalise,
                                "remap": options.remap, "training_default": options.is_training_default},
        "class_pixels_last_frame": np.bincount(result["seg_masks"][-1].ravel(), minlength=6).tolist(),
    }
    if rectifier is not None:
        import cv2

        remapped = args.out / "remapped"
        remapped.mkdir(parents=True, exist_ok=True)
        for i, (p, f) in enumerate(zip(args.frames, frames)):
            cv2.imwrite(str(remapped / f"{i:03d}_{Path(p).stem}.png"), f)
        summary["camera_calibration"] = {"file": str(args.camera_calibration), "coverage": rectifier.coverage,
                                         "remapped_frames": str(remapped)}
    else:
        summary["camera_calibration"] = None
    paths = write_outputs(args.out, result, summary)
    labels = {"cartesian": "[dx, dy, dz, gripper]", "joint_delta": f"[{', '.join(JOINT_NAMES)}] deltas"}
    print(f"action ({result['action_space']} {labels.get(result['action_space'], '')}): "
          f"{np.array2string(action, precision=4, separator=', ')}")
    print(f"outputs in {args.out}: " + ", ".join(p.name for p in paths.values()))
    return 0
