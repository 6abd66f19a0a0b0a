"""Camera frames for the pipeline: a live device, a video file or a folder of images, through OpenCV.

:class:`Camera` turns a source setting (``SO101_CAMERA``) into a stream of 640x480 BGR frames with
a ``frame_id`` that starts at 0 and grows by one per delivered frame (also across loops and
reopens) and the capture time ``stamp_ns`` (``time.time_ns()``).  It never blocks and never sleeps:
the node calls :meth:`Camera.poll` on every timer tick and gets a frame or ``None``.

What can go wrong, and what happens:

- a source that does not exist at start: a video file / folder -> :class:`CameraError` (the node
  exits with the message); a live device (index or ``/dev/video*``) -> reported, then retried
  with backoff, because a USB camera may be plugged in later;
- a source that delivers another size than 640x480 -> :class:`CameraError`, unless ``resize`` is
  on (then INTER_AREA to 640x480);
- a source that disappears mid-run (unplugged camera, deleted images, a video renamed away before
  it loops) -> reported once, then reopened with exponential backoff (0.1 s doubling to 2 s), each
  attempt logged once; frames resume with the next ``frame_id``;
- a file or folder that ends with ``loop`` off, or ``max_frames`` reached -> reported once, then
  no more frames.

With a camera calibration (``SO101_CAMERA_CALIBRATION``, a :class:`~so101_deploy.perception.
camera_calibration.Rectifier` given to :class:`Camera`) every frame is undistorted and reprojected onto
the simulator's ``wrist_cam`` pinhole with one precomputed ``cv2.remap`` table; the source must then
deliver the calibrated size (``resize`` is not applied: it would change the intrinsics).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from so101_deploy.core.log import leveled
from so101_deploy.core.settings import Setting
from so101_deploy.perception.camera_calibration import SETTINGS as CALIBRATION_SETTINGS
from so101_deploy.perception.camera_calibration import Rectifier

FRAME_WIDTH, FRAME_HEIGHT = 640, 480
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
EXPECTED_SOURCE = ("a device index like 0, a device path like /dev/video0, a video file (.mp4, .avi, ...) "
                   "or a folder of images (.png, .jpg)")

Log = Callable[[str, str], None]  # (level, message)

SETTINGS = (
    Setting("SO101_CAMERA", "str", required=True, doc="device index, /dev/videoN, a video file or an image folder"),
    Setting("SO101_CAMERA_FPS", "float", 30.0, "frames delivered per second", min=0.1, max=240.0),
    Setting("SO101_CAMERA_LOOP", "bool", None, "restart a file or folder at its end (default: on for files and "
            "folders, off for devices)"),
    Setting("SO101_CAMERA_RESIZE", "bool", False, "resize frames of another size to 640x480 (INTER_AREA) instead "
            "of refusing them"),
    Setting("SO101_CAMERA_MAX_FRAMES", "int", 0, "stop after this many frames (0: never)", min=0),
    Setting("SO101_CAMERA_JPEG_QUALITY", "int", 0, "send each frame as a JPEG of this quality (1-100), for a "
            "frame that crosses a network (docs/two-machines.md); 0: raw bgr8", min=0, max=100),
) + CALIBRATION_SETTINGS


class CameraError(RuntimeError):
    """A camera source that cannot be used as configured (the message says what was expected)."""


class SourceLost(Exception):
    """Internal: the source stopped delivering (unplugged device, deleted files)."""


@dataclass(frozen=True)
class Source:
    kind: str  # "device" | "video" | "folder"
    target: int | str  # device index, or a path
    text: str  # the setting as written

    @property
    def live(self) -> bool:
        return self.kind == "device"

    def describe(self) -> str:
        if self.kind == "device":
            return f"camera device {self.target}"
        return f"{self.kind} {self.target}"


@dataclass(frozen=True)
class Frame:
    image_bgr: np.ndarray  # 480x640x3 uint8, C-contiguous
    frame_id: int
    stamp_ns: int


def parse_source(text: str | int, setting: str = "SO101_CAMERA") -> Source:
    """Read a source setting: ``0`` / ``/dev/video0`` (live), a video file, or a folder of images."""
    text = str(text).strip()
    if not text:
        raise CameraError(f"{setting} is empty; expected {EXPECTED_SOURCE}")
    if text.isdigit():
        return Source("device", int(text), text)
    if text.startswith("/dev/"):
        return Source("device", text, text)  # may appear later (USB plugged in): retried
    path = Path(text).expanduser()
    if path.is_dir():
        return Source("folder", str(path), text)
    if path.is_file():
        return Source("video", str(path), text)
    raise CameraError(f"{setting}={text!r}: no such file or folder ({path.resolve()}); expected {EXPECTED_SOURCE}")


def video_devices() -> list[str]:
    """The V4L2 video device nodes of this machine (Linux), e.g. ['/dev/video0', '/dev/video1']."""
    return sorted(str(p) for p in Path("/dev").glob("video*")) if sys.platform.startswith("linux") else []


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class _CaptureReader:
    """cv2.VideoCapture of a device or a video file."""

    def __init__(self, source: Source, fps: float, size: tuple[int, int] = (FRAME_WIDTH, FRAME_HEIGHT)):
        self.source = source
        self.fps = fps
        self.size = size
        self.cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        self.release()
        if self.source.kind == "video" and not Path(self.source.target).is_file():
            raise SourceLost(f"video file {self.source.target} is missing")
        if self.source.live:
            node = self.source.target
            if isinstance(node, int) and sys.platform.startswith("linux"):
                node = f"/dev/video{node}"  # the V4L2 node of an index: a clear message, no OpenCV warnings
            if isinstance(node, str) and not os.path.exists(node):
                raise SourceLost(f"{node} does not exist (camera unplugged?)")
        cap = cv2.VideoCapture(self.source.target)
        if not cap.isOpened():
            cap.release()
            raise SourceLost(f"OpenCV cannot open {self.source.describe()}")
        if self.source.live:
            # ask for the pipeline's size and rate; keep only the newest frame so ticks see fresh images
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])  # 640x480, or the calibrated mode
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.cap = cap

    def read(self) -> np.ndarray | None:
        """A frame, or None at the end of a video file; raises SourceLost when a device fails."""
        assert self.cap is not None
        ok, image = self.cap.read()
        if ok and image is not None:
            return image
        if self.source.live:
            raise SourceLost(f"{self.source.describe()} stopped delivering frames")
        return None

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class _FolderReader:
    """Images of a folder in name order."""

    def __init__(self, source: Source, log: Log):
        self.folder = Path(source.target)
        self.log = log
        self.paths: list[Path] = []
        self.next_index = 0
        self.last_name: str | None = None

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceLost(f"folder {self.folder} is missing")
        paths = _list_images(self.folder)
        if not paths:
            raise SourceLost(f"folder {self.folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
        self.paths = paths
        # after a reopen, continue after the last image delivered
        names = [p.name for p in paths]
        self.next_index = 0 if self.last_name is None else sum(n <= self.last_name for n in names)

    def read(self) -> np.ndarray | None:
        while self.next_index < len(self.paths):
            path = self.paths[self.next_index]
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                if not path.exists():
                    raise SourceLost(f"image {path} disappeared")
                self.log("warning", f"skipping {path}: not a readable image")
                del self.paths[self.next_index]
                continue
            self.next_index += 1
            self.last_name = path.name
            return image
        return None

    def rewind(self) -> None:
        self.last_name = None

    def release(self) -> None:
        pass


_default_log = leveled(logging.getLogger(__name__))


class Camera:
    """Frames from a :class:`Source` at a limited rate, reopened with backoff when lost.

    ``loop`` (default: on for files and folders) restarts a file or folder at its end;
    ``resize`` turns frames of another size into 640x480 with INTER_AREA instead of refusing them;
    ``max_frames`` > 0 stops after that many frames; ``rectifier`` remaps every frame onto the sim's camera.
    """

    def __init__(self, source: str | int | Source, *, fps: float = 30.0, loop: bool | None = None,
                 resize: bool = False, max_frames: int = 0, backoff_initial_s: float = 0.1,
                 backoff_max_s: float = 2.0, log: Log | None = None,
                 clock: Callable[[], float] = time.monotonic, rectifier: Rectifier | None = None):
        self.rectifier = rectifier
        self.source = source if isinstance(source, Source) else parse_source(source)
        if not fps > 0:
            raise CameraError(f"SO101_CAMERA_FPS must be > 0, got {fps}")
        self.period_s = 1.0 / fps
        self.fps = fps
        self.loop = (not self.source.live) if loop is None else loop
        self.resize = resize
        self.max_frames = max_frames
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.log = log if log is not None else _default_log
        self.clock = clock
        self.state = "closed"  # closed | streaming | reconnecting | ended
        self.next_frame_id = 0
        self.reopen_attempts = 0  # failed attempts since the source was lost
        self.reconnects = 0  # successful reopens
        self.loops = 0
        self._delay_s = backoff_initial_s
        self._next_attempt = 0.0
        self._next_due: float | None = None
        self._pending: np.ndarray | None = None
        if rectifier is not None and resize:
            self.log("warning", "SO101_CAMERA_RESIZE is ignored with a camera calibration: frames must have the "
                                "calibrated size, and the remap makes them 640x480")
        if rectifier is not None and rectifier.output_size != (FRAME_WIDTH, FRAME_HEIGHT):
            raise CameraError(f"camera calibration remaps to {rectifier.output_size[0]}x{rectifier.output_size[1]}; "
                              f"the pipeline needs {FRAME_WIDTH}x{FRAME_HEIGHT} (the sim's wrist_cam)")
        self._reader = (_FolderReader(self.source, self.log) if self.source.kind == "folder"
                        else _CaptureReader(self.source, fps, rectifier.input_size if rectifier else
                                            (FRAME_WIDTH, FRAME_HEIGHT)))

    @classmethod
    def from_settings(cls, settings, log: Log | None = None, rectifier: Rectifier | None = None) -> "Camera":
        """Build from a node's :class:`~so101_deploy.core.settings.Settings` (:data:`SETTINGS`); the
        rectifier of ``SO101_CAMERA_CALIBRATION`` is built by the caller (it needs the sim's camera)."""
        return cls(parse_source(settings["SO101_CAMERA"]), fps=settings["SO101_CAMERA_FPS"],
                   loop=settings["SO101_CAMERA_LOOP"], resize=settings["SO101_CAMERA_RESIZE"],
                   max_frames=settings["SO101_CAMERA_MAX_FRAMES"], log=log, rectifier=rectifier)

    # --- opening -----------------------------------------------------------------------------

    def _checked(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        if image.dtype != np.uint8:
            raise CameraError(f"{self.source.describe()} delivers {image.dtype} frames; expected 8-bit BGR")
        h, w = image.shape[:2]
        if self.rectifier is not None:
            cw, ch = self.rectifier.input_size
            if (w, h) != (cw, ch):
                raise CameraError(f"{self.source.describe()} delivers {w}x{h} frames; the camera calibration "
                                  f"(SO101_CAMERA_CALIBRATION) is for {cw}x{ch}: choose that mode, or calibrate "
                                  f"this one with `so101-deploy calibrate-camera`")
            return np.ascontiguousarray(self.rectifier.apply(image))
        if (h, w) != (FRAME_HEIGHT, FRAME_WIDTH):
            if not self.resize:
                raise CameraError(
                    f"{self.source.describe()} delivers {w}x{h} frames; the pipeline needs "
                    f"{FRAME_WIDTH}x{FRAME_HEIGHT} BGR. Choose a {FRAME_WIDTH}x{FRAME_HEIGHT} mode/source, or set "
                    f"SO101_CAMERA_RESIZE=true to resize with INTER_AREA (aspect ratio is not kept)")
            image = cv2.resize(image, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(image)

    def _open_and_check(self) -> None:
        """Open the reader and check its first frame (kept, so no frame is lost)."""
        self._reader.open()
        first = self._reader.read()
        if first is None:
            raise SourceLost(f"{self.source.describe()} delivered no frame")
        self._pending = self._checked(first)

    def open(self, now: float | None = None) -> None:
        """Open the source.  Files and folders must be usable now (else :class:`CameraError`);
        a live device that is absent is reported and retried by :meth:`poll`."""
        try:
            self._open_and_check()
        except SourceLost as e:
            if not self.source.live:
                raise CameraError(f"SO101_CAMERA={self.source.text!r}: {e}; expected {EXPECTED_SOURCE}") from None
            devices = ", ".join(video_devices()) or "none"
            self.log("error", f"SO101_CAMERA={self.source.text!r}: {e}; retrying (plug the camera in, "
                              f"or check the index with `so101-deploy camera-check`; video devices here: {devices})")
            self._lost(self.clock() if now is None else now, announce=False)
            return
        self.state = "streaming"
        remap = "" if self.rectifier is None else (f", {self.rectifier.input_size[0]}x{self.rectifier.input_size[1]} "
                                                   f"remapped to the sim's camera")
        self.log("info", f"opened {self.source.describe()} ({FRAME_WIDTH}x{FRAME_HEIGHT} BGR at "
                         f"{self.fps:g} fps{', looping' if self.loop and not self.source.live else ''}{remap})")

    def _lost(self, now: float, reason: str = "", announce: bool = True) -> None:
        self._reader.release()
        self._pending = None
        self.state = "reconnecting"
        self.reopen_attempts = 0
        self._delay_s = self.backoff_initial_s
        self._next_attempt = now + self._delay_s
        if announce:
            self.log("error", f"{self.source.describe()} lost: {reason}; reopening in {self._delay_s:g} s "
                              f"(last frame_id {self.next_frame_id - 1})")

    def _try_reopen(self, now: float) -> None:
        try:
            self._open_and_check()
        except SourceLost as e:
            self.reopen_attempts += 1
            self._delay_s = min(self._delay_s * 2, self.backoff_max_s)
            self._next_attempt = now + self._delay_s
            self.log("warning", f"reopen attempt {self.reopen_attempts} of {self.source.describe()} failed: {e}; "
                                f"next in {self._delay_s:g} s")
            return
        self.reconnects += 1
        self.state = "streaming"
        self.log("info", f"reopened {self.source.describe()} after {self.reopen_attempts + 1} attempt(s); "
                         f"frames resume at frame_id {self.next_frame_id}")

    # --- reading -----------------------------------------------------------------------------

    def _due(self, now: float) -> bool:
        """Rate limit: a frame every period, tolerant of timer jitter, without bursts after a stall."""
        if self._next_due is None or now > self._next_due + self.period_s:
            self._next_due = now
        if now < self._next_due - 0.5 * self.period_s:
            return False
        self._next_due += self.period_s
        return True

    def _next_image(self) -> np.ndarray | None:
        if self._pending is not None:
            image, self._pending = self._pending, None
            return image
        image = self._reader.read()
        if image is None and self.loop and not self.source.live:
            self.loops += 1
            if isinstance(self._reader, _FolderReader):
                self._reader.rewind()
            # reopen from the path: a file renamed away is noticed here instead of replaying a stale handle
            self._reader.open()
            image = self._reader.read()
        return None if image is None else self._checked(image)

    def poll(self, now: float | None = None) -> Frame | None:
        """The next frame if one is due, else None.  Raises :class:`CameraError` only for a source
        that cannot be used as configured (wrong size without resize)."""
        now = self.clock() if now is None else now
        if self.state == "closed":
            self.open(now)
        if self.state == "ended":
            return None
        if self.state == "reconnecting":
            if now < self._next_attempt:
                return None
            self._try_reopen(now)
            if self.state != "streaming":
                return None
        if not self._due(now):
            return None
        try:
            image = self._next_image()
        except SourceLost as e:
            self._lost(now, str(e))
            return None
        if image is None:
            self.state = "ended"
            self._reader.release()
            self.log("info", f"end of {self.source.describe()} after {self.next_frame_id} frames "
                             f"(SO101_CAMERA_LOOP=false); no more frames")
            return None
        frame = Frame(image, self.next_frame_id, time.time_ns())
        self.next_frame_id += 1
        if self.max_frames and self.next_frame_id >= self.max_frames:
            self.state = "ended"
            self._reader.release()
            self.log("info", f"SO101_CAMERA_MAX_FRAMES={self.max_frames} reached; no more frames")
        return frame

    def close(self) -> None:
        self._reader.release()
        self._pending = None
        if self.state != "ended":
            self.state = "closed"

