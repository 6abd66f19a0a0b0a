"""Deterministic generated wrist-camera scenes: the project's own test video, never downloaded.

A frame is 640x480 BGR: a table-coloured background with a fixed low-frequency texture, a red
cube (lit top face, darker sides) and the two gripper fingers entering from the bottom edge (the
static finger on the left, the moving finger on the right, opening and closing over time).  With
``moving=True`` the cube drifts along a smooth path and the moving finger opens and closes.

Every frame also carries its own index as a row of black/white blocks in the top-left corner
(:func:`read_frame_index`), so a test can tell which generated frame arrived and in what order
after video compression, a camera node and a dataflow.  :func:`render_scene` also returns the
real 6-class segmentation mask of what was drawn (classes of ``messages.SEG_CLASSES_REAL``), a
ground truth for segmentation tests.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 640, 480

# BGR colours
TABLE_BGR = (96, 146, 190)  # light wood
CUBE_TOP_BGR = (40, 40, 215)
CUBE_SIDE_BGR = (25, 25, 150)
STATIC_FINGER_BGR = (70, 70, 70)
MOVING_FINGER_BGR = (110, 110, 110)

# class ids of messages.SEG_CLASSES_REAL
CLASS_UNLABELED, CLASS_BACKGROUND, CLASS_TABLE, CLASS_CUBE, CLASS_STATIC_FINGER, CLASS_MOVING_FINGER = range(6)

# frame-index code: CODE_BITS blocks of CODE_BLOCK_PX, most significant bit first, on a black band
CODE_BITS = 12
CODE_BLOCK_PX = 16
CODE_ORIGIN = (8, 8)  # x, y of the first block
CODE_MODULO = 1 << CODE_BITS

VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


def _table_texture(seed: int) -> np.ndarray:
    """A fixed brightness texture (HxW float32 around 1.0) so the table is not flat.

    Quantised into bands (like wood grain) so recorded frames compress to ~13 kB with zstd."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, 1.0, (6, 8)).astype(np.float32)
    smooth = cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(0.9, 1.05, HEIGHT, dtype=np.float32)[:, None]  # nearer = brighter
    return np.round((ramp + 0.04 * smooth) / 0.02) * 0.02


def _cube_corners(index: int, seed: int, moving: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pixel corners of the cube's top face and of its visible front face."""
    phase = 0.7 * seed
    t = index / 30.0 if moving else 0.0
    cx = WIDTH / 2 + 90 * np.sin(0.8 * t + phase)
    cy = HEIGHT / 2 - 10 + 40 * np.sin(0.5 * t + 1.3 + phase)
    angle = 0.35 * np.sin(0.4 * t + phase)
    half = 55.0
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    square = np.array([[-half, -half], [half, -half], [half, half], [-half, half]]) @ rot.T
    top = square + [cx, cy]
    depth_px = 28.0  # the front face seen below the top face
    front = np.array([top[3], top[2], top[2] + [0, depth_px], top[3] + [0, depth_px]])
    return top.round().astype(np.int32), front.round().astype(np.int32)


def _finger_polygons(index: int, moving: bool) -> tuple[np.ndarray, np.ndarray]:
    static = np.array([[0, 330], [95, 360], [150, HEIGHT], [0, HEIGHT]], np.int32)
    opening = 0.5 + 0.5 * np.sin(index / 30.0 * 1.2) if moving else 0.5
    shift = int(round(60 * opening))
    moving_poly = np.array([[WIDTH, 320], [WIDTH - 100 + shift, 350], [WIDTH - 160 + shift, HEIGHT],
                            [WIDTH, HEIGHT]], np.int32)
    return static, moving_poly


def _draw_code(image: np.ndarray, mask: np.ndarray, index: int) -> None:
    x0, y0 = CODE_ORIGIN
    b = CODE_BLOCK_PX
    pad = 4
    cv2.rectangle(image, (x0 - pad, y0 - pad), (x0 + CODE_BITS * b + pad - 1, y0 + b + pad - 1), (0, 0, 0), -1)
    mask[y0 - pad:y0 + b + pad, x0 - pad:x0 + CODE_BITS * b + pad] = CLASS_UNLABELED
    value = index % CODE_MODULO
    for bit in range(CODE_BITS):
        if (value >> (CODE_BITS - 1 - bit)) & 1:
            x = x0 + bit * b
            image[y0:y0 + b, x:x + b] = 255


def read_frame_index(image_bgr: np.ndarray) -> int:
    """The frame index drawn by :func:`render_frame` (modulo 4096), read from the block code."""
    image_bgr = np.asarray(image_bgr)
    if image_bgr.shape != (HEIGHT, WIDTH, 3):
        raise ValueError(f"expected a {HEIGHT}x{WIDTH}x3 frame, got shape {image_bgr.shape}")
    x0, y0 = CODE_ORIGIN
    b = CODE_BLOCK_PX
    value = 0
    for bit in range(CODE_BITS):
        x = x0 + bit * b
        # the centre of a block survives lossy video codecs
        centre = image_bgr[y0 + b // 4:y0 + 3 * b // 4, x + b // 4:x + 3 * b // 4]
        value = (value << 1) | int(centre.mean() > 127)
    return value


def render_scene(index: int, *, seed: int = 0, moving: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``index`` of the scene: (BGR uint8 480x640x3, real 6-class mask uint8 480x640)."""
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    texture = _table_texture(seed)
    image = np.clip(np.asarray(TABLE_BGR, np.float32) * texture[..., None], 0, 255).astype(np.uint8)
    mask = np.full((HEIGHT, WIDTH), CLASS_TABLE, np.uint8)
    # a strip of wall behind the table
    image[:40] = (150, 150, 140)
    mask[:40] = CLASS_BACKGROUND

    top, front = _cube_corners(index, seed, moving)
    cv2.fillConvexPoly(image, front, CUBE_SIDE_BGR)
    cv2.fillConvexPoly(mask, front, CLASS_CUBE)
    cv2.fillConvexPoly(image, top, CUBE_TOP_BGR)
    cv2.fillConvexPoly(mask, top, CLASS_CUBE)

    static, moving_poly = _finger_polygons(index, moving)
    cv2.fillConvexPoly(image, static, STATIC_FINGER_BGR)
    cv2.fillConvexPoly(mask, static, CLASS_STATIC_FINGER)
    cv2.fillConvexPoly(image, moving_poly, MOVING_FINGER_BGR)
    cv2.fillConvexPoly(mask, moving_poly, CLASS_MOVING_FINGER)

    _draw_code(image, mask, index)
    return image, mask


def render_frame(index: int, *, seed: int = 0, moving: bool = True) -> np.ndarray:
    """Frame ``index`` of the scene as BGR uint8 480x640x3."""
    return render_scene(index, seed=seed, moving=moving)[0]


def write_video(path: str | Path, frames: int = 60, *, fps: float = 30.0, seed: int = 0,
                moving: bool = True) -> Path:
    """Write ``frames`` generated frames to ``path`` (.mp4 with mp4v or .avi with MJPG)."""
    path = Path(path)
    codec = VIDEO_CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: expected a video file name ending in {sorted(VIDEO_CODECS)}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), float(fps), (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write {codec} video here (check the OpenCV build)")
    try:
        for i in range(frames):
            writer.write(render_frame(i, seed=seed, moving=moving))
    finally:
        writer.release()
    return path


def write_image_folder(folder: str | Path, frames: int = 30, *, seed: int = 0, moving: bool = True,
                       suffix: str = ".png") -> list[Path]:
    """Write generated frames as ``frame_00000.png`` ... (lossless, so frames compare exactly)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(frames):
        p = folder / f"frame_{i:05d}{suffix}"
        if not cv2.imwrite(str(p), render_frame(i, seed=seed, moving=moving)):
            raise RuntimeError(f"{p}: OpenCV could not write the image")
        paths.append(p)
    return paths

