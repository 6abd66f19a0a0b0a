"""``so101-deploy calibrate-camera``: checkerboard calibration of the wrist camera, once.

From a folder of photos (``--images DIR``) or a live camera (``--camera 0``, any SO101_CAMERA source):
finds the board's inner corners in each image, shows which parts of the image the corners have
covered (a grid in the terminal; with ``--show`` also drawn on a window), calibrates with OpenCV
(pinhole + k1 k2 p1 p2 k3) and writes intrinsics, distortion and the RMS reprojection error to
``--out`` (JSON), the file ``SO101_CAMERA_CALIBRATION`` names.  A calibration is refused, with the
reason, when fewer than 8 views found the board, the corners covered less than 60 % of the image,
or the RMS error is above 1.0 px.  It then prints the camera's field of view against the sim's
``wrist_cam`` and the share of the sim's view the camera covers.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from so101_deploy.perception.camera_calibration import (MAX_RMS_PX, MIN_VIEWS, Board,
                                                        CalibrationError, CameraCalibration, Coverage, Rectifier,
                                                        calibrate, detect_corners)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MIN_SHIFT_PX = 8.0  # live: a new view must move the board's corners this much (mean) from every kept view
# (a 30 deg tilt of a board filling a third of the image moves them ~10 px)


def parse_board(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"--board {text!r}: expected inner corners as COLSxROWS, e.g. 9x6")
    return int(m.group(1)), int(m.group(2))


def configure_parser(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="a folder of photos of the board (all of one camera mode)")
    src.add_argument("--camera", help="a live camera (index or /dev/videoN; any SO101_CAMERA source works)")
    p.add_argument("--board", type=parse_board, default=(9, 6),
                   help="inner corners COLSxROWS (a 10x7-square board has 9x6), default 9x6")
    p.add_argument("--square-mm", type=float, default=25.0, help="side of one square in mm, measured (default 25)")
    p.add_argument("--out", type=Path, default=Path("camera_calibration.json"), help="JSON to write")
    p.add_argument("--views", type=int, default=20, help="live: views to collect before calibrating (default 20)")
    p.add_argument("--timeout-s", type=float, default=300.0, help="live: give up collecting after this long")
    p.add_argument("--save-views", type=Path, help="live: also save the kept frames here (recalibrate with --images)")
    p.add_argument("--show", action="store_true", help="live: a window with the corners and the coverage ('q' ends)")
    p.add_argument("--fps", type=float, default=15.0, help="live: frames read per second")


def _fail(msg: str) -> int:
    print(f"calibrate-camera: error: {msg}", file=sys.stderr)
    return 2


def from_images(folder: Path, board: Board) -> tuple[list[np.ndarray], tuple[int, int], Coverage]:
    if not folder.is_dir():
        raise CalibrationError(f"--images {folder}: not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise CalibrationError(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    corners, size, coverage = [], None, None
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            print(f"  {path.name}: not a readable image, skipped")
            continue
        wh = (image.shape[1], image.shape[0])
        if size is None:
            size, coverage = wh, Coverage(wh)
        elif wh != size:
            raise CalibrationError(f"{path.name}: {wh[0]}x{wh[1]}, but the first image was {size[0]}x{size[1]}; "
                                   f"one calibration is for one camera mode")
        found = detect_corners(image, board)
        print(f"  {path.name}: {'board found' if found is not None else 'no board'}")
        if found is not None:
            corners.append(found)
            coverage.add(found)
    if size is None:
        raise CalibrationError(f"--images {folder}: no readable image")
    return corners, size, coverage


def _mean_shift(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.reshape(-1, 2) - b.reshape(-1, 2), axis=1).mean())


def from_camera(args, board: Board) -> tuple[list[np.ndarray], tuple[int, int], Coverage]:
    from so101_deploy.perception.camera import Camera, CameraError  # noqa: PLC0415

    logs = []
    try:
        cam = Camera(args.camera, fps=args.fps, loop=False, log=lambda level, msg: logs.append(msg))
        cam.open()
    except CameraError as e:
        raise CalibrationError(str(e)) from None
    corners: list[np.ndarray] = []
    coverage = None
    size = None
    window = "so101-deploy calibrate-camera" if args.show else None
    if window:
        try:
            cv2.namedWindow(window)
        except cv2.error:
            cam.close()
            raise CalibrationError("--show needs OpenCV with GUI support (opencv-python, not -headless) and a "
                                   "display; without --show the terminal prints the same coverage grid") from None
    deadline = time.monotonic() + args.timeout_s
    last_kept = -1e9
    if args.save_views:
        args.save_views.mkdir(parents=True, exist_ok=True)
    print(f"show the {board.cols}x{board.rows} board to the camera: tilted, near, far, in every part of the "
          f"image; {args.views} views are kept (Ctrl-C{' or q' if window else ''} to stop early)")
    try:
        while len(corners) < args.views and time.monotonic() < deadline:
            try:
                frame = cam.poll()
            except CameraError as e:
                raise CalibrationError(str(e)) from None
            if frame is None:
                if cam.state == "ended":
                    break
                time.sleep(0.005)
                continue
            image = frame.image_bgr
            size = (image.shape[1], image.shape[0])
            coverage = coverage or Coverage(size)
            found = detect_corners(image, board)
            now = time.monotonic()
            # a live view is kept at most every 0.5 s (time to move the board); a file source has no such wait
            if (found is not None and (now - last_kept > 0.5 or not cam.source.live)
                    and all(_mean_shift(found, c) > MIN_SHIFT_PX for c in corners)):
                corners.append(found)
                coverage.add(found)
                last_kept = now
                if args.save_views:
                    cv2.imwrite(str(args.save_views / f"view_{len(corners):03d}.png"), image)
                print(f"view {len(corners)}/{args.views} kept\n{coverage.text()}", flush=True)
            if window:
                shown = coverage.draw(image)
                if found is not None:
                    cv2.drawChessboardCorners(shown, board.size, found, True)
                cv2.imshow(window, shown)
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    break
    except KeyboardInterrupt:
        print("stopped; calibrating with the views kept so far")
    finally:
        cam.close()
        if window:
            cv2.destroyAllWindows()
    if size is None:
        raise CalibrationError(f"--camera {args.camera}: no frame arrived ({'; '.join(logs[-2:]) or 'no message'})")
    return corners, size, coverage


def report(calib: CameraCalibration) -> list[str]:
    """Lines comparing the calibration with the sim's wrist_cam (field of view, covered share)."""
    from so101_deploy.sim.scene import wrist_camera_pinhole  # noqa: PLC0415

    sim = wrist_camera_pinhole()
    rect = Rectifier(calib, sim)
    real_fov, sim_fov = calib.fov_deg(), sim.fov_deg()
    k, d = calib.camera_matrix, calib.dist_coeffs
    lines = [f"intrinsics: fx {k[0, 0]:.2f} fy {k[1, 1]:.2f} cx {k[0, 2]:.2f} cy {k[1, 2]:.2f} px at "
             f"{calib.width}x{calib.height}; distortion {np.array2string(d, precision=4, separator=', ')}",
             f"RMS reprojection error {calib.rms_px:.3f} px (bound {MAX_RMS_PX:g} px) from {calib.views} views",
             "field of view (deg)   horizontal  vertical  diagonal",
             f"  this camera        {real_fov['horizontal']:10.1f} {real_fov['vertical']:9.1f} {real_fov['diagonal']:9.1f}",
             f"  sim wrist_cam      {sim_fov['horizontal']:10.1f} {sim_fov['vertical']:9.1f} {sim_fov['diagonal']:9.1f}",
             f"the camera covers {rect.coverage:.1%} of the sim's view"]
    warning = rect.border_warning()
    if warning:
        lines.append(f"WARNING: {warning}")
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        board = Board(args.board[0], args.board[1], args.square_mm / 1000.0)
        if args.images is not None:
            corners, size, coverage = from_images(args.images, board)
            source = f"images {args.images}"
        else:
            if args.views < MIN_VIEWS:
                return _fail(f"--views {args.views}: at least {MIN_VIEWS} views are needed")
            corners, size, coverage = from_camera(args, board)
            source = f"camera {args.camera}"
        print(coverage.text())
        calib = calibrate(corners, size, board, source=source)
    except CalibrationError as e:
        return _fail(f"{e} (nothing written)")
    path = calib.save(args.out)
    for line in report(calib):
        print(line)
    print(f"wrote {path}; use it with SO101_CAMERA_CALIBRATION: {path.resolve()} in the camera node's env")
    return 0
