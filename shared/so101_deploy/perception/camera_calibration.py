"""Wrist camera calibration (OpenCV checkerboard) and the remap of real frames to the simulator's camera.

The policy learned from a MuJoCo pinhole camera (``wrist_cam``: fovy 70.5 deg, 640x480, no distortion).
A real camera has another field of view and lens distortion, so the cube's size and place in the 84x84
observation differ from anything the policy saw.  This module:

- finds checkerboard corners (:func:`detect_corners`), tracks how much of the image they covered
  (:class:`Coverage`, a grid shown in the terminal or drawn on the live view) and calibrates
  (:func:`calibrate`, ``cv2.calibrateCamera``, pinhole + k1 k2 p1 p2 k3);
- writes / reads the result as JSON (:class:`CameraCalibration`, the file ``SO101_CAMERA_CALIBRATION``
  names), refusing a file whose RMS reprojection error is above :data:`MAX_RMS_PX`;
- builds one ``cv2.remap`` table from the sim camera's pixels to the real camera's
  (:class:`Rectifier`): every frame is undistorted and reprojected onto the sim's pinhole in one
  lookup.  Sim pixels whose ray the real camera does not see stay black; :attr:`Rectifier.coverage`
  is their complement (1.0 = the real camera sees all of the sim's view).

Conventions: OpenCV pixel coordinates (pixel centres at integers).  A MuJoCo camera of vertical field
of view ``fovy`` rendering W x H has ``fx = fy = (H / 2) / tan(fovy / 2)`` and its principal point at
the image centre, ``((W - 1) / 2, (H - 1) / 2)`` in these coordinates.  The remap keeps the camera's
orientation: it corrects intrinsics and distortion, not a mounting rotation (see docs/camera-calibration.md
for the mounting-pose check).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from so101_deploy.core.settings import Setting

FORMAT = "so101-camera-calibration/1"
# a calibration whose RMS reprojection error is above this is refused: a sharp, flat, correctly sized
# board gives 0.1-0.5 px; above 1 px the corners were blurred, the board bent or the pattern size wrong
MAX_RMS_PX = 1.0
MIN_VIEWS = 8  # fewer views do not constrain focal length and distortion together
MIN_COVERAGE = 0.6  # share of the coverage grid's cells the corners must have touched
# the focal length's standard deviation (OpenCV's estimate) must stay below this share of it: views that
# are all nearly parallel to the image leave focal length and distance interchangeable (a tiny RMS error
# with a focal length tens of percent off); tilted views pin it down
MAX_FOCAL_STD = 0.01
# and at least this many views must show the board tilted by TILT_DEG or more: with the board always
# facing the camera, a wrong focal length and a matching distortion fit the corners just as well
MIN_TILTED_VIEWS, TILT_DEG = 3, 15.0
COVERAGE_GRID = (4, 6)  # rows, cols
DEFAULT_BOARD = (9, 6)  # inner corners (columns, rows) of the common 10x7-square OpenCV board
COVERAGE_WARN = 0.995  # below: the real camera leaves black borders in the sim's view

SETTINGS = (
    Setting("SO101_CAMERA_CALIBRATION", "str", "", "JSON from `so101-deploy calibrate-camera`: frames are undistorted "
            "and reprojected onto the simulator's wrist_cam pinhole (empty: frames pass through unchanged)"),
)


class CalibrationError(ValueError):
    """A calibration that cannot be made or used (the message says why and what to do)."""


@dataclass(frozen=True)
class Board:
    """A checkerboard: ``cols`` x ``rows`` inner corners, squares of ``square_m`` metres."""

    cols: int = DEFAULT_BOARD[0]
    rows: int = DEFAULT_BOARD[1]
    square_m: float = 0.025

    def __post_init__(self):
        if self.cols < 3 or self.rows < 3 or self.cols == self.rows:
            raise CalibrationError(f"board {self.cols}x{self.rows}: expected inner-corner counts >= 3 and different "
                                   f"from each other (a square pattern has an ambiguous orientation), e.g. 9x6")
        if not self.square_m > 0:
            raise CalibrationError(f"board square size {self.square_m} m: expected > 0")

    @property
    def size(self) -> tuple[int, int]:
        return self.cols, self.rows

    def object_points(self) -> np.ndarray:
        """(cols*rows, 3) float32 corner positions on the board plane (z = 0), row by row."""
        grid = np.mgrid[0:self.cols, 0:self.rows].T.reshape(-1, 2).astype(np.float32)
        return np.hstack([grid * np.float32(self.square_m), np.zeros((len(grid), 1), np.float32)])

    def as_dict(self) -> dict:
        return {"cols": self.cols, "rows": self.rows, "square_m": self.square_m}


@dataclass(frozen=True)
class PinholeCamera:
    """A distortion-free camera: ``width`` x ``height`` pixels, focal lengths and principal point in px."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_fovy(cls, fovy_deg: float, width: int, height: int) -> "PinholeCamera":
        """A MuJoCo camera (vertical field of view ``fovy_deg``, square pixels, centred principal point)."""
        if not 0 < fovy_deg < 180 or width <= 0 or height <= 0:
            raise CalibrationError(f"camera fovy {fovy_deg} deg at {width}x{height}: expected 0 < fovy < 180 and a "
                                   f"positive size")
        f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
        return cls(int(width), int(height), f, f, (width - 1) / 2, (height - 1) / 2)

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float64)

    def fov_deg(self) -> dict[str, float]:
        return field_of_view(self.matrix, np.zeros(5), (self.width, self.height))


def field_of_view(matrix: np.ndarray, dist: np.ndarray, size: tuple[int, int]) -> dict[str, float]:
    """Horizontal, vertical and diagonal field of view (deg) between the image's outer pixel edges,
    through the principal point (distortion removed)."""
    w, h = size
    cx, cy = matrix[0, 2], matrix[1, 2]
    pts = np.array([[-0.5, cy], [w - 0.5, cy], [cx, -0.5], [cx, h - 0.5], [-0.5, -0.5], [w - 0.5, h - 0.5]],
                   np.float64).reshape(-1, 1, 2)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-12)
    xy = cv2.undistortPointsIter(pts, matrix, np.asarray(dist, np.float64), None, None, crit).reshape(-1, 2)
    rays = np.hstack([xy, np.ones((len(xy), 1))])
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)

    def angle(a: int, b: int) -> float:
        return math.degrees(math.acos(float(np.clip(rays[a] @ rays[b], -1.0, 1.0))))

    return {"horizontal": angle(0, 1), "vertical": angle(2, 3), "diagonal": angle(4, 5)}


def _number_list(value, n: int | tuple[int, ...], what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(f"{what}: expected numbers, got {value!r}") from None
    sizes = (n,) if isinstance(n, int) else n
    if arr.ndim != 1 or arr.size not in sizes or not np.isfinite(arr).all():
        raise CalibrationError(f"{what}: expected {' or '.join(map(str, sizes))} finite numbers, got {value!r}")
    return arr


@dataclass(frozen=True)
class CameraCalibration:
    """Intrinsics + distortion of one camera mode (``width`` x ``height``), with its quality figures."""

    width: int
    height: int
    camera_matrix: np.ndarray  # 3x3
    dist_coeffs: np.ndarray  # OpenCV order: k1 k2 p1 p2 [k3 [k4 k5 k6 [s1 s2 s3 s4]]]
    rms_px: float
    views: int = 0
    coverage: float = 0.0
    board: dict = field(default_factory=dict)
    source: str = ""
    created: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def fov_deg(self) -> dict[str, float]:
        return field_of_view(self.camera_matrix, self.dist_coeffs, self.size)

    def to_json(self) -> dict:
        fov = self.fov_deg()
        return {
            "format": FORMAT,
            "image_width": self.width, "image_height": self.height,
            "camera_matrix": self.camera_matrix.tolist(),
            "dist_coeffs": [float(x) for x in self.dist_coeffs],
            "rms_reprojection_error_px": self.rms_px,
            "max_rms_px": MAX_RMS_PX,
            "views": self.views, "coverage": round(self.coverage, 4),
            "fov_deg": {k: round(v, 3) for k, v in fov.items()},
            "board": self.board, "source": self.source,
            "created": self.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def from_json(cls, data, where: str = "calibration", max_rms_px: float = MAX_RMS_PX) -> "CameraCalibration":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise CalibrationError(f"{where}: not a camera calibration (expected \"format\": \"{FORMAT}\", got "
                                   f"{got!r}); write one with `so101-deploy calibrate-camera`")
        try:
            w, h = data["image_width"], data["image_height"]
            k, d, rms = data["camera_matrix"], data["dist_coeffs"], data["rms_reprojection_error_px"]
        except KeyError as e:
            raise CalibrationError(f"{where}: missing key {e.args[0]!r} (expected image_width, image_height, "
                                   f"camera_matrix, dist_coeffs, rms_reprojection_error_px)") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
            raise CalibrationError(f"{where}: image_width / image_height must be positive integers, got {w!r} x {h!r}")
        kk = _number_list(np.asarray(k, dtype=object).ravel().tolist() if isinstance(k, list) else k, 9,
                          f"{where}: camera_matrix (3x3)").reshape(3, 3)
        if not (kk[0, 0] > 0 and kk[1, 1] > 0 and kk[2, 2] == 1 and kk[1, 0] == kk[2, 0] == kk[2, 1] == 0):
            raise CalibrationError(f"{where}: camera_matrix must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with "
                                   f"fx, fy > 0, got {k!r}")
        dd = _number_list(d, (4, 5, 8, 12, 14), f"{where}: dist_coeffs")
        if not isinstance(rms, (int, float)) or isinstance(rms, bool) or not math.isfinite(rms) or rms < 0:
            raise CalibrationError(f"{where}: rms_reprojection_error_px must be a non-negative number, got {rms!r}")
        if rms > max_rms_px:
            raise CalibrationError(f"{where}: RMS reprojection error {rms:.3f} px is above the bound of "
                                   f"{max_rms_px:g} px, so the intrinsics cannot be trusted; recalibrate (sharp, "
                                   f"flat board, correct --board size, more varied views)")
        return cls(w, h, kk, dd, float(rms), int(data.get("views", 0) or 0), float(data.get("coverage", 0) or 0),
                   dict(data.get("board") or {}), str(data.get("source", "")), str(data.get("created", "")))

    @classmethod
    def load(cls, path: str | Path, max_rms_px: float = MAX_RMS_PX) -> "CameraCalibration":
        path = Path(path).expanduser()
        where = f"camera calibration {path}"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CalibrationError(f"{where}: file not found; write one with `so101-deploy calibrate-camera`, or "
                                   f"leave SO101_CAMERA_CALIBRATION empty to pass frames through") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CalibrationError(f"{where}: not readable JSON ({e})") from None
        return cls.from_json(data, where, max_rms_px)


# --- detection and coverage ------------------------------------------------------------------------


def detect_corners(image: np.ndarray, board: Board) -> np.ndarray | None:
    """The board's inner corners in ``image`` (BGR or grey) as (N, 1, 2) float32, sub-pixel refined,
    or None when the whole board is not found."""
    if image.ndim not in (2, 3) or image.dtype != np.uint8:
        raise CalibrationError(f"image: expected an 8-bit grey or BGR array, got {image.dtype} {image.shape}")
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_FAST_CHECK
    found, corners = cv2.findChessboardCorners(grey, board.size, flags=flags)
    if not found:
        return None
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-3)
    return cv2.cornerSubPix(grey, corners, (5, 5), (-1, -1), crit)


class Coverage:
    """Which cells of a ``rows`` x ``cols`` grid over the image the detected corners have touched."""

    def __init__(self, size: tuple[int, int], grid: tuple[int, int] = COVERAGE_GRID):
        self.width, self.height = size
        self.rows, self.cols = grid
        self.counts = np.zeros(grid, np.int64)

    def add(self, corners: np.ndarray) -> None:
        xy = np.asarray(corners, np.float64).reshape(-1, 2)
        c = np.clip((xy[:, 0] * self.cols / self.width).astype(int), 0, self.cols - 1)
        r = np.clip((xy[:, 1] * self.rows / self.height).astype(int), 0, self.rows - 1)
        np.add.at(self.counts, (r, c), 1)

    @property
    def share(self) -> float:
        return float((self.counts > 0).mean())

    def text(self) -> str:
        """The grid as terminal lines: '#' cells have corners, '.' cells still need the board."""
        lines = ["+" + "-" * (2 * self.cols + 1) + "+"]
        for r in range(self.rows):
            lines.append("| " + " ".join("#" if n else "." for n in self.counts[r]) + " |")
        lines.append("+" + "-" * (2 * self.cols + 1) + "+")
        lines.append(f"coverage {self.share:.0%} of the image ('#' = corners seen; move the board into the '.' "
                     f"cells, near the edges and corners too)")
        return "\n".join(lines)

    def draw(self, image: np.ndarray) -> np.ndarray:
        """A copy of ``image`` with the cells that still need corners tinted red."""
        out = image.copy()
        ch, cw = self.height / self.rows, self.width / self.cols
        tint = out.copy()
        for r in range(self.rows):
            for c in range(self.cols):
                if not self.counts[r, c]:
                    cv2.rectangle(tint, (int(c * cw), int(r * ch)), (int((c + 1) * cw) - 1, int((r + 1) * ch) - 1),
                                  (0, 0, 255), -1)
        return cv2.addWeighted(tint, 0.3, out, 0.7, 0)


def calibrate(corner_sets: Sequence[np.ndarray], size: tuple[int, int], board: Board, *,
              max_rms_px: float = MAX_RMS_PX, min_views: int = MIN_VIEWS, min_coverage: float = MIN_COVERAGE,
              source: str = "") -> CameraCalibration:
    """``cv2.calibrateCamera`` on the corner sets of ``size`` (width, height) images; refused with the
    reason when there are too few views, the corners covered too little of the image, or the RMS
    reprojection error is above ``max_rms_px``."""
    views = [np.asarray(c, np.float32).reshape(-1, 1, 2) for c in corner_sets]
    n_expected = board.cols * board.rows
    for i, c in enumerate(views):
        if len(c) != n_expected:
            raise CalibrationError(f"view {i}: {len(c)} corners, expected {n_expected} for a {board.cols}x{board.rows} board")
    if len(views) < min_views:
        raise CalibrationError(f"{len(views)} views with the board found; need at least {min_views} (tilted "
                               f"views, board near the edges and corners of the image)")
    coverage = Coverage(size)
    for c in views:
        coverage.add(c)
    if coverage.share < min_coverage:
        raise CalibrationError(f"the corners covered {coverage.share:.0%} of the image, need {min_coverage:.0%}: "
                               f"show the board near the edges and corners too (distortion is strongest there)\n"
                               f"{coverage.text()}")
    obj = [board.object_points()] * len(views)
    rms, k, d, rvecs, _, std, _, _ = cv2.calibrateCameraExtended(obj, views, size, None, None)
    calib = CameraCalibration(size[0], size[1], np.asarray(k, np.float64), np.asarray(d, np.float64).ravel(),
                              float(rms), len(views), coverage.share, board.as_dict(), source)
    if not math.isfinite(rms) or rms > max_rms_px:
        raise CalibrationError(f"RMS reprojection error {rms:.3f} px is above the bound of {max_rms_px:g} px: "
                               f"check the --board inner-corner count and --square size, use a flat, sharp, "
                               f"evenly lit board and hold it still")
    tilts = [math.degrees(math.acos(min(1.0, abs(float(cv2.Rodrigues(r)[0][2, 2]))))) for r in rvecs]
    tilted = sum(t >= TILT_DEG for t in tilts)
    if tilted < MIN_TILTED_VIEWS:
        raise CalibrationError(f"only {tilted} of {len(views)} views show the board tilted by {TILT_DEG:g} deg or "
                               f"more, need {MIN_TILTED_VIEWS}: with the board always facing the camera the focal "
                               f"length cannot be told from the distortion; add views tilted 20-40 deg to each side")
    focal_std = float(max(std[0, 0] / k[0, 0], std[1, 0] / k[1, 1]))
    if not math.isfinite(focal_std) or focal_std > MAX_FOCAL_STD:
        raise CalibrationError(f"the focal length is poorly constrained (fx {k[0, 0]:.1f} px +- {focal_std:.1%}, "
                               f"bound {MAX_FOCAL_STD:.0%}): the views do not pin it down (too few, too alike or "
                               f"blurred corners); add sharp views with the board tilted 20-40 deg to each side "
                               f"and near the image corners")
    return calib


# --- remap to the simulator's camera ---------------------------------------------------------------


def _radial_limit(dist: np.ndarray, r_max: float = 10.0) -> float:
    """The undistorted radius (normalised) up to which the radial model grows monotonically: beyond
    it the polynomial folds back and would map rays the lens never sees into the image."""
    d = np.zeros(8)
    d[:min(len(dist), 8)] = dist[:8]
    k1, k2, p1, p2, k3, k4, k5, k6 = d
    r = np.linspace(0.0, r_max, 20001)
    r2 = r * r
    radial = r * (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    bad = np.nonzero((np.diff(radial) <= 0) | ~np.isfinite(radial[1:]))[0]
    return float(r[bad[0]]) if len(bad) else r_max


class Rectifier:
    """One precomputed ``cv2.remap`` table: real camera frame (``calibration`` size) -> the pinhole
    ``target`` (the sim's wrist_cam), undistorted and reprojected; what the real camera does not see is black."""

    def __init__(self, calibration: CameraCalibration, target: PinholeCamera):
        self.calibration = calibration
        self.target = target
        w, h = calibration.size
        limit = _radial_limit(calibration.dist_coeffs)
        img = np.empty((target.height, target.width, 2), np.float64)
        u = np.arange(target.width, dtype=np.float64)
        x_row = (u - target.cx) / target.fx
        rows = 40  # a band of rows at a time keeps the start-up memory small
        for v0 in range(0, target.height, rows):
            v = np.arange(v0, min(v0 + rows, target.height), dtype=np.float64)
            y = np.repeat((v - target.cy) / target.fy, target.width)
            x = np.tile(x_row, len(v))
            pts, _ = cv2.projectPoints(np.stack([x, y, np.ones_like(x)], axis=1), np.zeros(3), np.zeros(3),
                                       calibration.camera_matrix, calibration.dist_coeffs)
            img[v0:v0 + len(v)] = pts.reshape(len(v), target.width, 2)
        x = ((np.arange(target.width) - target.cx) / target.fx)[None, :]
        y = ((np.arange(target.height) - target.cy) / target.fy)[:, None]
        valid = ((np.hypot(x, y) < limit) & np.isfinite(img).all(axis=2)
                 & (img[..., 0] >= -0.5) & (img[..., 0] <= w - 0.5) & (img[..., 1] >= -0.5) & (img[..., 1] <= h - 0.5))
        map_x = np.where(valid, img[..., 0], -1.0).astype(np.float32)
        map_y = np.where(valid, img[..., 1], -1.0).astype(np.float32)
        self.valid = valid
        self.coverage = float(valid.mean())
        # fixed-point tables: the fastest cv2.remap form; kept in float too for nearest-neighbour use
        self.map_x, self.map_y = map_x, map_y
        self._fixed = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.calibration.size

    @property
    def output_size(self) -> tuple[int, int]:
        return self.target.width, self.target.height

    def apply(self, image: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """The frame seen through the sim's camera (``interpolation``: INTER_NEAREST for label images)."""
        h, w = image.shape[:2]
        if (w, h) != self.input_size:
            raise CalibrationError(f"frame {w}x{h}: the camera calibration is for {self.input_size[0]}x"
                                   f"{self.input_size[1]} frames; calibrate this camera mode")
        if interpolation == cv2.INTER_NEAREST:
            return cv2.remap(image, self.map_x, self.map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
        return cv2.remap(image, self._fixed[0], self._fixed[1], interpolation, borderMode=cv2.BORDER_CONSTANT)

    def describe(self) -> str:
        real, sim = self.calibration.fov_deg(), self.target.fov_deg()
        return (f"remapping {self.input_size[0]}x{self.input_size[1]} frames (fx {self.calibration.camera_matrix[0, 0]:.1f} "
                f"px, HFOV {real['horizontal']:.1f} deg, VFOV {real['vertical']:.1f} deg, RMS "
                f"{self.calibration.rms_px:.3f} px) onto the sim's wrist_cam {self.target.width}x{self.target.height} "
                f"(fx {self.target.fx:.1f} px, HFOV {sim['horizontal']:.1f} deg, VFOV {sim['vertical']:.1f} deg); "
                f"the real camera covers {self.coverage:.1%} of the sim's view")

    def border_warning(self) -> str | None:
        """The loud start message when the real camera is narrower than the sim's (black borders), else None."""
        if self.coverage >= COVERAGE_WARN:
            return None
        real, sim = self.calibration.fov_deg(), self.target.fov_deg()
        return (f"THE REAL CAMERA SEES ONLY {self.coverage:.1%} OF THE SIM'S VIEW: {1 - self.coverage:.1%} of every "
                f"frame is black border the policy never saw (real {real['horizontal']:.1f} x {real['vertical']:.1f} "
                f"deg, sim {sim['horizontal']:.1f} x {sim['vertical']:.1f} deg, horizontal x vertical); use a wider "
                f"lens or camera mode")


def rectifier_from_path(path: str | Path, target: PinholeCamera) -> Rectifier:
    """Load a calibration file and build its table onto ``target`` (errors: :class:`CalibrationError`)."""
    return Rectifier(CameraCalibration.load(path), target)


NO_CALIBRATION_WARNING = (
    "SO101_CAMERA_CALIBRATION is not set: frames pass through unchanged, so the cube's size and place in the "
    "observation follow this camera's field of view and distortion, not the sim's wrist_cam; calibrate with "
    "`so101-deploy calibrate-camera` (docs/camera-calibration.md)")


def rectifier_from_settings(settings, sim_camera: Callable[[], PinholeCamera],
                            log: Callable[[str, str], None]) -> Rectifier | None:
    """The camera node's start: no calibration -> None with one warning (today's behaviour); a
    calibration -> its table onto ``sim_camera()``, described, with a loud warning for black borders.
    A missing, corrupt or bad-RMS file is one :class:`CalibrationError` line naming the setting."""
    path = settings["SO101_CAMERA_CALIBRATION"]
    if not path:
        log("warning", NO_CALIBRATION_WARNING)
        return None
    try:
        rectifier = Rectifier(CameraCalibration.load(path), sim_camera())
    except CalibrationError as e:
        raise CalibrationError(f"SO101_CAMERA_CALIBRATION={path}: {e}") from None
    log("info", rectifier.describe())
    warning = rectifier.border_warning()
    if warning:
        log("warning", warning)
    return rectifier
