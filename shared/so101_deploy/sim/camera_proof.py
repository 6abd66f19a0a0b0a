"""The camera remap, proved in the simulator: a "real" wrist camera with a wider field of view and a
known lens distortion, calibrated from rendered checkerboard views, remapped onto the sim's
``wrist_cam`` and compared with the sim's own render of the same state.

- The "real" camera (:data:`REAL_CAMERA`): 640x480, fx = fy = 260 px (about 102 deg horizontal before
  distortion, ~118 deg with it), barrel distortion k1 -0.18, k2 0.03, small tangential terms; the
  sim's ``wrist_cam`` is 86.6 deg horizontal.
- Its images are made in two steps: MuJoCo renders a wide distortion-free pinhole
  (:data:`SOURCE_FOVY_DEG` at 1280x960, same pose as ``wrist_cam``), then OpenCV's distortion model
  resamples it into the real camera's pixels (:func:`distort`: each real pixel's ray is found with
  ``cv2.undistortPointsIter`` and looked up in the wide render).
- Calibration views: a 9x6 checkerboard (black boxes on a white plate) rendered by the same wide
  pinhole from :func:`calibration_poses`, distorted, and fed to the project's own
  :func:`~so101_deploy.perception.camera_calibration.calibrate`.
- Comparison: the simulator's segmentation (geom ids -> sim classes) seen by the real camera,
  remapped with the calibrated table, vs the direct ``wrist_cam`` segmentation, both as the 84x84
  observation (centre crop + INTER_NEAREST); the same without the remap shows the gap it closes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import mujoco
import numpy as np

from so101_deploy.perception.camera_calibration import (Board, CameraCalibration, PinholeCamera, Rectifier,
                                                        calibrate, detect_corners)
from so101_deploy.policy.observation import crop_resize
from so101_deploy.sim import scene as sim_scene
from so101_deploy.sim.oracle import CLASS_CUBE, OracleSeg

SOURCE_FOVY_DEG = 106.0
SOURCE_SIZE = (1280, 960)
WIDE_CAMERA = "wide_cam"


@dataclass(frozen=True)
class LensCamera:
    """A camera with OpenCV's distortion model (the truth the calibration must recover)."""

    width: int
    height: int
    matrix: np.ndarray
    dist: np.ndarray


REAL_CAMERA = LensCamera(640, 480, np.array([[260.0, 0, 321.3], [0, 260.0, 238.2], [0, 0, 1]]),
                         np.array([-0.18, 0.03, 0.0008, -0.0005, 0.0]))
SOURCE = PinholeCamera.from_fovy(SOURCE_FOVY_DEG, *SOURCE_SIZE)


def distort(source_image: np.ndarray, source: PinholeCamera = SOURCE, lens: LensCamera = REAL_CAMERA,
            interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """A distortion-free ``source`` render resampled into ``lens``'s pixels (black where the source has no ray)."""
    u, v = np.meshgrid(np.arange(lens.width, dtype=np.float64), np.arange(lens.height, dtype=np.float64))
    pts = np.stack([u.ravel(), v.ravel()], axis=1).reshape(-1, 1, 2)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10)
    xy = cv2.undistortPointsIter(pts, lens.matrix, lens.dist, None, None, crit).reshape(lens.height, lens.width, 2)
    map_x = (xy[..., 0] * source.fx + source.cx).astype(np.float32)
    map_y = (xy[..., 1] * source.fy + source.cy).astype(np.float32)
    return cv2.remap(source_image, map_x, map_y, interpolation, borderMode=cv2.BORDER_CONSTANT)


# --- calibration views of a rendered checkerboard -----------------------------------------------------


def board_model(board: Board, source: PinholeCamera = SOURCE) -> mujoco.MjModel:
    """A white plate with ``board``'s black squares at the world origin (face up, +z), flat-lit, and a
    camera ``cal_cam`` with the wide source pinhole's field of view."""
    spec = mujoco.MjSpec()
    spec.visual.global_.offwidth, spec.visual.global_.offheight = source.width, source.height
    spec.visual.headlight.ambient = [1.0, 1.0, 1.0]
    spec.visual.headlight.diffuse = [0.0, 0.0, 0.0]
    spec.visual.headlight.specular = [0.0, 0.0, 0.0]
    spec.visual.map.znear = 0.01
    world = spec.worldbody
    s = board.square_m
    nx, ny = board.cols + 1, board.rows + 1  # squares
    plate = world.add_geom()
    plate.type = mujoco.mjtGeom.mjGEOM_BOX
    plate.size = [(nx / 2 + 1) * s, (ny / 2 + 1) * s, 0.002]
    plate.pos = [0, 0, -0.002]
    plate.rgba = [1, 1, 1, 1]
    for i in range(nx):
        for j in range(ny):
            if (i + j) % 2:
                continue
            sq = world.add_geom()
            sq.type = mujoco.mjtGeom.mjGEOM_BOX
            sq.size = [s / 2, s / 2, 0.0005]
            # square (i, j) spans x in [(i - nx/2) s, ...]: the inner corners fall on a grid of pitch s
            sq.pos = [(i - nx / 2 + 0.5) * s, (j - ny / 2 + 0.5) * s, 0.0005]
            sq.rgba = [0, 0, 0, 1]
    cam = world.add_camera()
    cam.name = "cal_cam"
    cam.fovy = 2 * math.degrees(math.atan(0.5 * source.height / source.fy))
    return spec.compile()


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])}[axis]


def calibration_poses(lens: LensCamera = REAL_CAMERA) -> list[tuple[np.ndarray, np.ndarray]]:
    """(R board->camera, t board centre in camera metres) of the views a careful user would take: the
    board centred on a 3x3 grid of image places (corners and edges included), tilted +-30 deg, plus
    two near views; OpenCV camera axes (x right, y down, z forward)."""
    poses = []
    facing = np.diag([1.0, -1.0, -1.0])  # the board's +z (its printed face) towards the camera
    places = [(0.5, 0.5, 0.26, 0, 0), (0.5, 0.5, 0.3, 30, 0), (0.5, 0.5, 0.3, 0, 30), (0.5, 0.5, 0.3, -25, -25)]
    for fu in (0.22, 0.5, 0.78):
        for fv in (0.25, 0.5, 0.75):
            if (fu, fv) != (0.5, 0.5):
                places.append((fu, fv, 0.33, 20 * (0.5 - fv) * 2, -20 * (0.5 - fu) * 2))
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-10)
    for fu, fv, depth, tilt_x, tilt_y in places:
        px = np.array([[[fu * lens.width, fv * lens.height]]], np.float64)
        ray = cv2.undistortPointsIter(px, lens.matrix, lens.dist, None, None, crit).reshape(2)
        t = np.array([ray[0] * depth, ray[1] * depth, depth])
        poses.append((_rot("x", tilt_x) @ _rot("y", tilt_y) @ facing, t))
    return poses


def render_calibration_views(board: Board = Board(cols=9, rows=6, square_m=0.02), lens: LensCamera = REAL_CAMERA,
                             source: PinholeCamera = SOURCE) -> list[np.ndarray]:
    """The board seen by the "real" camera from every :func:`calibration_poses` pose (grey uint8 images)."""
    from so101_deploy.core.gl import headless_gl_fallback  # noqa: PLC0415

    headless_gl_fallback()
    model = board_model(board, source)
    data = mujoco.MjData(model)
    cam = model.camera("cal_cam").id
    out = []
    with mujoco.Renderer(model, source.height, source.width) as renderer:
        for r_bc, t in calibration_poses(lens):
            # camera pose in the board (world) frame, then OpenCV axes -> MuJoCo's (x right, y up, z back)
            r_cw = r_bc.T
            pos = -r_cw @ t
            r_mj = r_cw @ np.diag([1.0, -1.0, -1.0])
            quat = np.zeros(4)
            mujoco.mju_mat2Quat(quat, r_mj.ravel())
            model.cam_pos[cam], model.cam_quat[cam] = pos, quat
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera=cam)
            grey = cv2.cvtColor(renderer.render(), cv2.COLOR_RGB2GRAY)
            out.append(distort(grey, source, lens))
    return out


def calibrate_from_renders(board: Board = Board(cols=9, rows=6, square_m=0.02),
                           lens: LensCamera = REAL_CAMERA) -> tuple[CameraCalibration, int]:
    """Calibrate the "real" camera from its rendered board views; also returns how many views were rendered."""
    views = render_calibration_views(board, lens)
    corners = [c for c in (detect_corners(v, board) for v in views) if c is not None]
    return calibrate(corners, (lens.width, lens.height), board, source="rendered checkerboard (sim proof)"), len(views)


# --- the comparison in the pick-101 scene ------------------------------------------------------------


def proof_model() -> mujoco.MjModel:
    """The training scene plus ``wide_cam``: ``wrist_cam``'s pose, the wide source field of view."""
    spec = sim_scene.build_spec()
    spec.visual.global_.offwidth, spec.visual.global_.offheight = SOURCE.width, SOURCE.height
    cam = spec.body(sim_scene.CAMERA_BODY).add_camera()
    cam.name = WIDE_CAMERA
    cam.pos = list(sim_scene.CAMERA_POS_M)
    cam.alt.type = mujoco.mjtOrientation.mjORIENTATION_EULER
    cam.alt.euler = list(sim_scene.CAMERA_EULER_RAD)
    cam.fovy = SOURCE_FOVY_DEG
    return spec.compile()


def set_wide_mount(model: mujoco.MjModel, data: mujoco.MjData, pitch_rad: float = 0.0) -> None:
    """Mount the "real" camera as ``wrist_cam`` is, turned by ``pitch_rad`` about the gripper body's x axis
    (the axis of the MJCF camera's euler pitch): a camera mounted at another angle.  0 restores it."""
    wrist, wide = model.camera(sim_scene.CAMERA_NAME).id, model.camera(WIDE_CAMERA).id
    turn = np.array([math.cos(pitch_rad / 2), math.sin(pitch_rad / 2), 0.0, 0.0])
    quat = np.zeros(4)
    mujoco.mju_mulQuat(quat, turn, model.cam_quat[wrist])
    model.cam_quat[wide] = quat
    model.cam_pos[wide] = model.cam_pos[wrist]
    mujoco.mj_forward(model, data)  # the camera's world pose follows


@dataclass
class ProofFrames:
    direct_seg: np.ndarray  # (480, 640) sim classes, wrist_cam
    real_seg: np.ndarray  # (480, 640) sim classes, the "real" camera
    direct_bgr: np.ndarray
    real_bgr: np.ndarray


def render_state(model: mujoco.MjModel, data: mujoco.MjData, lens: LensCamera = REAL_CAMERA,
                 rgb: bool = False) -> ProofFrames:
    """The sim's segmentation (and, with ``rgb``, colour) of one state through wrist_cam and the real camera."""
    from so101_deploy.core.gl import headless_gl_fallback  # noqa: PLC0415

    headless_gl_fallback()
    oracle = OracleSeg(model)

    def seg_of(r: mujoco.Renderer, camera: str) -> np.ndarray:
        r.update_scene(data, camera=camera)
        s = r.render()
        ids = s[:, :, 0].astype(np.int32)
        ids[s[:, :, 1] != mujoco.mjtObj.mjOBJ_GEOM] = -1
        return oracle.classes(ids)

    w, h = sim_scene.IMAGE_WIDTH, sim_scene.IMAGE_HEIGHT
    with mujoco.Renderer(model, h, w) as small, mujoco.Renderer(model, SOURCE.height, SOURCE.width) as wide:
        direct_bgr = real_bgr = None
        if rgb:
            small.update_scene(data, camera=sim_scene.CAMERA_NAME)
            direct_bgr = np.ascontiguousarray(small.render()[:, :, ::-1])
            wide.update_scene(data, camera=WIDE_CAMERA)
            real_bgr = distort(np.ascontiguousarray(wide.render()[:, :, ::-1]), SOURCE, lens)
        small.enable_segmentation_rendering()
        wide.enable_segmentation_rendering()
        direct = seg_of(small, sim_scene.CAMERA_NAME)
        real = distort(seg_of(wide, WIDE_CAMERA), SOURCE, lens, cv2.INTER_NEAREST)
    return ProofFrames(direct, real, direct_bgr, real_bgr)


def observation_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal pixels of two 640x480 class masks in the 84x84 observation (crop + NEAREST)."""
    return float((crop_resize(a, cv2.INTER_NEAREST) == crop_resize(b, cv2.INTER_NEAREST)).mean())


def cube_iou(a: np.ndarray, b: np.ndarray, cube: int = CLASS_CUBE) -> float:
    """Intersection over union of the cube's pixels of two 640x480 class masks in the 84x84 observation."""
    ca, cb = crop_resize(a, cv2.INTER_NEAREST) == cube, crop_resize(b, cv2.INTER_NEAREST) == cube
    union = int((ca | cb).sum())
    return float((ca & cb).sum() / union) if union else 1.0


def compare(frames: ProofFrames, rectifier: Rectifier) -> dict[str, float]:
    """Agreement with the direct wrist_cam segmentation in the 84x84 observation, with and without the remap."""
    remapped = rectifier.apply(frames.real_seg, cv2.INTER_NEAREST)
    return {"with_remap": observation_agreement(remapped, frames.direct_seg),
            "without_remap": observation_agreement(frames.real_seg, frames.direct_seg),
            "cube_iou_with_remap": cube_iou(remapped, frames.direct_seg),
            "cube_iou_without_remap": cube_iou(frames.real_seg, frames.direct_seg)}
