"""A live view of the running graph with the rerun SDK: what the robot sees, thinks and does, on one timeline.

:class:`RerunView` turns the graph's messages into rerun entities (the paths are in :data:`ENTITIES`):

* ``world/camera/image``: the camera frame; ``world/camera/mask``: the learned mask as a segmentation
  image with the six class names and colours (an annotation context; a ``sim5`` mask is shown in the
  same classes, id + 1); ``world/camera/depth``: the disparity as a depth image.  ``world/camera`` holds
  the wrist camera's model (pinhole, 70.5 deg vertical field of view, MuJoCo's camera axes) and its pose
  on the gripper, so the depth image is also a point cloud in the 3-D view.  The disparity is relative
  (larger = nearer, no scale): the depth shown is ``near / d`` with ``d`` the frame's min-max normalised
  disparity, clipped to ``[near, far]`` (:data:`PSEUDO_DEPTH_NEAR_M`, :data:`PSEUDO_DEPTH_FAR_M`): a shape,
  not metres.
* ``policy/observation/frame_{0,1,2}/seg`` and ``/disparity``: the three 84x84 planes of the observation,
  oldest first, exactly the values the policy gets (sim 5 classes, disparity 0-255).
* ``policy/action``: the action vector (one series per component); ``controller/target``: the Cartesian
  target (m) the controller integrates, also drawn as ``world/target``.
* ``joints/<joint>/state``, ``/goal``, ``/clamp``: present position, goal (rad) and how far the safety filter
  moved the requested goal (requested - sent, rad), one plot per joint.
* ``world/arm``: the SO-101 as capsules between its body origins, posed from the joint state with the
  same MJCF the controller's kinematics use.
* ``events/safety`` and ``events/estop``: the safety filter's events and e-stop changes, as a text log.
* ``latency/<stage>``: capture -> the moment each stage sent its result (ms), from dora's send timestamps.

The timeline ``capture_time`` is each message's ``stamp_ns`` (the capture time of the camera frame it came
from; the read time of a joint state).  The view never feeds anything back into the graph, and the node's
inputs are ``queue_size: 1``: a viewer that lags sees fewer frames, the control path never waits for it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import mujoco
import numpy as np

from so101_deploy.arm.kinematics import GRIPPERFRAME_SETTING, SITE_NAME, so101_mjcf_path, so101_spec
from so101_deploy.core.messages import JOINT_NAMES, OBS_FRAMES, SEG_CLASSES_REAL, Message, split_observation
from so101_deploy.core.settings import Setting
from so101_deploy.sim.scene import CAMERA_FOVY_DEG, CAMERA_NAME, PAD_PICK101, add_wrist_camera
from so101_deploy.tools.monitor import REAL6_BGR

log = logging.getLogger(__name__)

MODES = ("serve", "save", "spawn", "connect")
APP_ID = "so101_deploy"
TIMELINE = "capture_time"
PSEUDO_DEPTH_NEAR_M = 0.05
PSEUDO_DEPTH_FAR_M = 1.0
SIM5_CLASSES = ("other", "floor", "cube", "static_finger", "moving_finger")
ACTION_NAMES = {4: ("dx", "dy", "dz", "gripper"), 6: JOINT_NAMES}
# inputs the viewer node takes -> message schema (all optional: wire what the flow has)
INPUTS = {"image": "image", "mask": "seg_mask", "disparity": "disparity", "observation": "observation",
          "action": "action", "goal": "joint_goal", "joint_state": "joint_state", "estop": "estop"}

SETTINGS = (
    Setting("SO101_VIEW_MODE", "choice", "serve", "serve: a web viewer on SO101_VIEW_WEB_PORT for a headless "
            "robot computer (rerun --serve-web); save: write SO101_VIEW_RRD; spawn: start the desktop viewer; "
            "connect: send to a viewer already running at SO101_VIEW_URL", choices=MODES),
    Setting("SO101_VIEW_RRD", "str", "artifacts/view/run.rrd", "the .rrd file written in save mode"),
    Setting("SO101_VIEW_WEB_PORT", "int", 9090, "serve mode: the web viewer's HTTP port", min=1, max=65535),
    Setting("SO101_VIEW_GRPC_PORT", "int", 9876, "serve mode: the port the web viewer reads the data from "
            "(also spawn mode's viewer port)", min=1, max=65535),
    Setting("SO101_VIEW_URL", "str", "rerun+http://127.0.0.1:9876/proxy", "connect mode: the viewer to send to"),
    Setting("SO101_VIEW_MEMORY_LIMIT", "str", "256MiB", "serve mode: data kept for late web clients (oldest dropped)"),
    Setting("SO101_VIEW_IMAGE_EVERY", "int", 1, "log every n-th camera image, mask and disparity (1 = all)",
            min=1, max=1000),
    Setting("SO101_VIEW_SCALE", "float", 0.5, "camera image, mask and depth logged at this fraction of the "
            "frame's size (the camera model follows); 1 = full size", min=0.05, max=1.0),
    Setting("SO101_VIEW_JPEG_QUALITY", "int", 85, "the camera image is logged as JPEG of this quality "
            "(a .rrd and the web viewer's traffic ~30x smaller); 0 = raw pixels", min=0, max=100),
    GRIPPERFRAME_SETTING,
)

ENTITIES = {
    "image": "world/camera/image", "mask": "world/camera/mask", "depth": "world/camera/depth",
    "camera": "world/camera", "arm": "world/arm", "target_3d": "world/target",
    "action": "policy/action", "target": "controller/target",
    "safety": "events/safety", "estop": "events/estop",
}


def obs_entity(frame: int, plane: str) -> str:
    return f"policy/observation/frame_{frame}/{plane}"


def joint_entity(joint: str, series: str) -> str:
    return f"joints/{joint}/{series}"


def latency_entity(stage: str) -> str:
    return f"latency/{stage}"


class ViewError(ValueError):
    """A bad view setting or an input the view cannot show."""


def _rr():
    import rerun as rr  # noqa: PLC0415 - only the viewer needs rerun; importing it costs ~0.3 s

    return rr


# --- the arm, from the controller's MJCF --------------------------------------------------------------

def _quat_z_to(v: np.ndarray) -> np.ndarray:
    """xyzw quaternion rotating +z onto the direction of ``v``."""
    z = np.array([0.0, 0.0, 1.0])
    n = np.linalg.norm(v)
    if n < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    d = v / n
    axis = np.cross(z, d)
    s = np.linalg.norm(axis)
    c = float(np.dot(z, d))
    if s < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0]) if c > 0 else np.array([1.0, 0.0, 0.0, 0.0])
    angle = math.atan2(s, c)
    axis = axis / s * math.sin(angle / 2)
    return np.array([axis[0], axis[1], axis[2], math.cos(angle / 2)])


def _quat_from_mat(m: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.asarray(m, np.float64).reshape(-1))
    return np.array([q[1], q[2], q[3], q[0]])  # wxyz -> xyzw


class ArmModel:
    """The SO-101 MJCF the controller uses (same gripperframe choice), with pick-101's wrist camera on the
    gripper: body poses for a joint vector, drawn as capsules, and the camera's pose."""

    CHAIN = ("base", "shoulder", "upper_arm", "lower_arm", "wrist", "gripper")
    RADIUS_M = 0.018

    def __init__(self, gripperframe: str | None = None, mjcf_path: str | Path | None = None):
        spec = so101_spec(Path(mjcf_path) if mjcf_path else so101_mjcf_path(), gripperframe)
        try:
            add_wrist_camera(spec)
        except ValueError as e:
            raise ViewError(str(e)) from None
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._qadr = [m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j)] for j in JOINT_NAMES]
        self._bodies = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, b) for b in self.CHAIN]
        self._jaw = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "moving_jaw_so101_v1")
        self._site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, SITE_NAME)
        self._cam = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA_NAME)
        if min(self._bodies + [self._jaw, self._site, self._cam]) < 0:
            raise ViewError(f"the SO-101 MJCF lacks one of the bodies {self.CHAIN}, the moving jaw or {SITE_NAME!r}")

    def pose(self, q_rad: np.ndarray) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
        """(segments [(name, start, end)], camera position, camera rotation matrix) in the world frame."""
        q = np.asarray(q_rad, np.float64).reshape(-1)
        if q.shape != (len(JOINT_NAMES),) or not np.all(np.isfinite(q)):
            raise ViewError(f"arm pose: expected {len(JOINT_NAMES)} finite joint angles (rad), got {q}")
        d = self.data
        d.qpos[:] = self.model.qpos0
        d.qpos[self._qadr] = q
        mujoco.mj_kinematics(self.model, d)
        mujoco.mj_camlight(self.model, d)  # camera poses are not part of mj_kinematics
        pts = [d.xpos[b].copy() for b in self._bodies]
        segs = [(f"{a}-{b}", pts[i], pts[i + 1]) for i, (a, b) in enumerate(zip(self.CHAIN, self.CHAIN[1:]))]
        g = self._bodies[-1]
        segs.append(("static_finger", d.xpos[g].copy(), d.site_xpos[self._site].copy()))
        jaw_tip = d.xpos[self._jaw] + d.xmat[self._jaw].reshape(3, 3) @ np.array(PAD_PICK101["moving_jaw_pad"][0])
        segs.append(("moving_finger", d.xpos[self._jaw].copy(), jaw_tip))
        return segs, d.cam_xpos[self._cam].copy(), d.cam_xmat[self._cam].reshape(3, 3).copy()


def pseudo_depth(disparity: np.ndarray, near_m: float = PSEUDO_DEPTH_NEAR_M, far_m: float = PSEUDO_DEPTH_FAR_M) -> np.ndarray:
    """Relative disparity -> a depth-like image: ``near / d`` of the min-max normalised ``d``, in [near, far]."""
    d = np.asarray(disparity, np.float32)
    lo, hi = float(d.min()), float(d.max())
    norm = np.zeros_like(d) if hi - lo <= 1e-12 else (d - lo) / (hi - lo)
    return (near_m / np.maximum(norm, near_m / far_m)).astype(np.float32)


def _floats(text: Any, n: int) -> np.ndarray | None:
    """A ``"a,b,c"`` metadata value -> n floats, or None when absent or malformed."""
    if not isinstance(text, str) or not text:
        return None
    try:
        v = np.array([float(x) for x in text.split(",")])
    except ValueError:
        return None
    return v if v.shape == (n,) and np.all(np.isfinite(v)) else None


class RerunView:
    """Messages in, rerun entities out.  ``rec`` is a ``rerun.RecordingStream`` with its sink set;
    ``clock`` (Unix ns) is the fallback for a latency when a message has no dora send timestamp (None: no
    latency then, as when converting a recording)."""

    def __init__(self, rec: Any, arm: ArmModel | None = None, image_every: int = 1,
                 clock: Callable[[], int] | None = time.time_ns, scale: float = 0.5, jpeg_quality: int = 85):
        if image_every < 1:
            raise ViewError(f"image_every must be >= 1, got {image_every}")
        if not 0 < scale <= 1 or not 0 <= jpeg_quality <= 100:
            raise ViewError(f"scale must be in (0, 1] and jpeg_quality in 0..100, got {scale}, {jpeg_quality}")
        self.scale = float(scale)
        self.jpeg_quality = int(jpeg_quality)
        self.rr = _rr()
        self.rec = rec
        self.arm = arm
        self.image_every = int(image_every)
        self.clock = clock
        self.counts: Counter = Counter()  # entity path -> rows logged
        self._seen: Counter = Counter()
        self._resolution: tuple[int, int] | None = None
        self._estop: int | None = None
        self._action_dim: int | None = None
        self._static()

    # --- helpers --------------------------------------------------------------------------------
    def _log(self, path: str, *entity: Any, static: bool = False) -> None:
        self.rec.log(path, *entity, static=static)
        if not static:
            self.counts[path] += 1

    def _time(self, msg: Message) -> None:
        self.rec.set_time(TIMELINE, timestamp=msg.stamp_ns * 1e-9)

    def _latency(self, stage: str, msg: Message) -> None:
        sent = msg.sent_ns if msg.sent_ns is not None else (self.clock() if self.clock is not None else None)
        if sent is not None:
            self._log(latency_entity(stage), self.rr.Scalars((sent - msg.stamp_ns) / 1e6))

    def _keep(self, kind: str) -> bool:
        self._seen[kind] += 1
        return (self._seen[kind] - 1) % self.image_every == 0

    def _static(self) -> None:
        rr = self.rr
        real = [rr.AnnotationInfo(i, name, tuple(int(c) for c in REAL6_BGR[i][::-1]))
                for i, name in enumerate(SEG_CLASSES_REAL)]
        self._log("world/camera", rr.AnnotationContext(real), static=True)
        sim = [rr.AnnotationInfo(i, name, tuple(int(c) for c in REAL6_BGR[i + 1][::-1]))
               for i, name in enumerate(SIM5_CLASSES)]
        self._log("policy/observation", rr.AnnotationContext(sim), static=True)
        self._log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        for j in JOINT_NAMES:
            for series, colour in (("state", (60, 140, 230)), ("goal", (240, 160, 40)), ("clamp", (230, 40, 40))):
                self._log(joint_entity(j, series), rr.SeriesLines(names=f"{j} {series}", colors=[colour]), static=True)
        self._log(ENTITIES["target"], rr.SeriesLines(names=["x", "y", "z"]), static=True)

    def _camera_model(self, h: int, w: int) -> None:
        if self._resolution == (h, w):
            return
        self._resolution = (h, w)
        f = (h / 2) / math.tan(math.radians(CAMERA_FOVY_DEG) / 2)  # MuJoCo: square pixels, fovy over the height
        self._log(ENTITIES["camera"], self.rr.Pinhole(focal_length=f, width=w, height=h,
                                                     camera_xyz=self.rr.ViewCoordinates.RUB,
                                                     image_plane_distance=0.05), static=True)

    def _fit(self, img: np.ndarray, interp: int) -> np.ndarray:
        """``img`` at the camera model's size (set here from this frame's, scaled, if none came yet)."""
        if self._resolution is None:
            h, w = img.shape[:2]
            self._camera_model(max(1, round(h * self.scale)), max(1, round(w * self.scale)))
        if img.shape[:2] == self._resolution:
            return img
        h, w = self._resolution
        return cv2.resize(img, (w, h), interpolation=interp)

    # --- inputs ---------------------------------------------------------------------------------
    def on_image(self, msg: Message) -> None:
        if not self._keep("image"):
            return
        self._time(msg)
        h, w = msg.data.shape[:2]
        self._camera_model(max(1, round(h * self.scale)), max(1, round(w * self.scale)))
        image = self.rr.Image(self._fit(np.ascontiguousarray(msg.data), cv2.INTER_AREA), color_model="BGR")
        self._log(ENTITIES["image"], image.compress(jpeg_quality=self.jpeg_quality) if self.jpeg_quality else image)

    def on_mask(self, msg: Message) -> None:
        self._time(msg)
        self._latency("seg", msg)
        if not self._keep("mask"):
            return
        mask = np.asarray(msg.data, np.uint8)
        if msg.meta.get("classes") == "sim5":
            mask = mask + 1  # shown in the real classes: sim s is real s + 1 (the inverse of clip(id - 1, 0, 4))
        self._log(ENTITIES["mask"], self.rr.SegmentationImage(self._fit(mask, cv2.INTER_NEAREST), opacity=0.6))

    def on_disparity(self, msg: Message) -> None:
        self._time(msg)
        self._latency("depth", msg)
        if not self._keep("disparity"):
            return
        depth_mm = np.rint(self._fit(pseudo_depth(msg.data), cv2.INTER_AREA) * 1000).astype(np.uint16)
        self._log(ENTITIES["depth"], self.rr.DepthImage(depth_mm, meter=1000.0,
                                                        depth_range=(PSEUDO_DEPTH_NEAR_M * 1000, PSEUDO_DEPTH_FAR_M * 1000)))

    def on_observation(self, msg: Message) -> None:
        self._time(msg)
        self._latency("observation", msg)
        rgb, _ = split_observation(msg.data)
        for k in range(OBS_FRAMES):
            self._log(obs_entity(k, "seg"), self.rr.SegmentationImage(rgb[k, 0].astype(np.uint8)))
            self._log(obs_entity(k, "disparity"), self.rr.Image(rgb[k, 1].astype(np.uint8), color_model="L"))

    def on_action(self, msg: Message) -> None:
        self._time(msg)
        self._latency("policy", msg)
        a = np.asarray(msg.data, np.float64)
        if self._action_dim != a.size:
            self._action_dim = a.size
            names = ACTION_NAMES.get(a.size, tuple(f"a{i}" for i in range(a.size)))
            self._log(ENTITIES["action"], self.rr.SeriesLines(names=list(names)), static=True)
        self._log(ENTITIES["action"], self.rr.Scalars(a))

    def on_goal(self, msg: Message) -> None:
        self._time(msg)
        self._latency("controller", msg)
        goal = np.asarray(msg.data, np.float64)
        requested = _floats(msg.meta.get("requested_rad"), len(JOINT_NAMES))
        for i, j in enumerate(JOINT_NAMES):
            self._log(joint_entity(j, "goal"), self.rr.Scalars(goal[i]))
            if requested is not None:
                self._log(joint_entity(j, "clamp"), self.rr.Scalars(requested[i] - goal[i]))
        target = _floats(msg.meta.get("target_m"), 3)
        if target is not None:
            self._log(ENTITIES["target"], self.rr.Scalars(target))
            self._log(ENTITIES["target_3d"], self.rr.Points3D([target], radii=0.008, colors=[(240, 60, 200)]))
        events = str(msg.meta.get("events", "")).strip()
        if events:
            self._log(ENTITIES["safety"], self.rr.TextLog(f"frame {msg.frame_id}: {events} "
                                                          f"(source {msg.meta.get('source', '?')})", level="WARN"))

    def on_joint_state(self, msg: Message) -> None:
        self._time(msg)
        q = np.asarray(msg.data, np.float64)[0]
        for i, j in enumerate(JOINT_NAMES):
            self._log(joint_entity(j, "state"), self.rr.Scalars(q[i]))
        if self.arm is None:
            return
        segs, cam_pos, cam_mat = self.arm.pose(q)
        starts = np.array([s for _, s, _ in segs])
        ends = np.array([e for _, _, e in segs])
        rr = self.rr
        self._log(ENTITIES["arm"], rr.Capsules3D(
            lengths=np.linalg.norm(ends - starts, axis=1), radii=[ArmModel.RADIUS_M] * len(segs), translations=starts,
            quaternions=[rr.Quaternion(xyzw=_quat_z_to(e - s)) for s, e in zip(starts, ends)],
            labels=[n for n, _, _ in segs], show_labels=False, colors=[(200, 200, 200)] * (len(segs) - 2) + [(230, 160, 40), (60, 220, 60)]))
        self._log(ENTITIES["camera"], rr.Transform3D(translation=cam_pos,
                                                     quaternion=rr.Quaternion(xyzw=_quat_from_mat(cam_mat))))

    def on_estop(self, msg: Message) -> None:
        state = int(msg.data[0])
        if state == self._estop:
            return  # the estop node repeats its state 20 times a second: log the changes
        self._time(msg)
        self._estop = state
        text = {0: "released", 1: "ENGAGED: hold", 2: "ENGAGED: release torque"}[state]
        self._log(ENTITIES["estop"], self.rr.TextLog(f"e-stop {text}", level="INFO" if state == 0 else "ERROR"))

    def handlers(self) -> dict[str, Callable[[Message], None]]:
        return {"image": self.on_image, "mask": self.on_mask, "disparity": self.on_disparity,
                "observation": self.on_observation, "action": self.on_action, "goal": self.on_goal,
                "joint_state": self.on_joint_state, "estop": self.on_estop}


# --- the layout ----------------------------------------------------------------------------------------

def blueprint() -> Any:
    """The default layout: camera + mask, depth, the 3-D scene; the observation, action, target; a plot per
    joint; latency and the event log."""
    import rerun.blueprint as rrb  # noqa: PLC0415

    cam = ENTITIES["camera"]
    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Vertical(
                rrb.Spatial2DView(origin=cam, contents=[f"+ {ENTITIES['image']}", f"+ {ENTITIES['mask']}"],
                                  name="camera + learned mask"),
                rrb.Spatial2DView(origin=cam, contents=[f"+ {ENTITIES['depth']}"], name="disparity as depth"),
                rrb.Spatial3DView(origin="world", name="arm, target, camera, point cloud"),
            ),
            rrb.Vertical(
                rrb.Horizontal(*[rrb.Spatial2DView(origin=f"policy/observation/frame_{k}", name=f"obs t-{2 - k}")
                                 for k in range(OBS_FRAMES)]),
                rrb.TimeSeriesView(origin=ENTITIES["action"], name="action"),
                rrb.TimeSeriesView(origin=ENTITIES["target"], name="Cartesian target (m)"),
                rrb.TimeSeriesView(origin="latency", name="capture -> stage sent (ms)"),
                rrb.TextLogView(origin="events", name="safety and e-stop"),
            ),
            rrb.Grid(*[rrb.TimeSeriesView(origin=f"joints/{j}", contents=["+ $origin/state", "+ $origin/goal"],
                                          name=f"{j} (rad)") for j in JOINT_NAMES],
                     rrb.TimeSeriesView(origin="joints", contents=[f"+ $origin/{j}/clamp" for j in JOINT_NAMES],
                                        name="safety filter clamps: requested - sent (rad)"),
                     grid_columns=1),
            column_shares=[3, 3, 2],
        ),
        collapse_panels=True,
    )


# --- where the data goes -------------------------------------------------------------------------------

def open_stream(mode: str, *, rrd: str | Path | None = None, web_port: int = 9090, grpc_port: int = 9876,
                url: str | None = None, memory_limit: str = "256MiB", open_browser: bool = False,
                recording_id: str | None = None) -> tuple[Any, str]:
    """A recording stream with its sink for ``mode``; returns (stream, where to look)."""
    rr = _rr()
    if mode not in MODES:
        raise ViewError(f"view mode must be one of {list(MODES)}, got {mode!r}")
    rec = rr.RecordingStream(APP_ID, recording_id=recording_id)
    if mode == "save":
        if not rrd:
            raise ViewError("save mode needs a .rrd path")
        path = Path(rrd)
        path.parent.mkdir(parents=True, exist_ok=True)
        rec.save(path, default_blueprint=blueprint())
        return rec, str(path.resolve())
    if mode == "spawn":
        rec.spawn(port=grpc_port, default_blueprint=blueprint())
        return rec, f"a desktop viewer on port {grpc_port}"
    if mode == "connect":
        rec.connect_grpc(url, default_blueprint=blueprint())
        return rec, str(url)
    server = rec.serve_grpc(grpc_port=grpc_port, server_memory_limit=memory_limit, default_blueprint=blueprint())
    rr.serve_web_viewer(web_port=web_port, open_browser=open_browser, connect_to=server)
    return rec, f"http://127.0.0.1:{web_port}/?url={server}"


def view_from_settings(settings: Mapping[str, Any]) -> tuple[RerunView, str]:
    rec, where = open_stream(settings["SO101_VIEW_MODE"], rrd=settings["SO101_VIEW_RRD"],
                             web_port=settings["SO101_VIEW_WEB_PORT"], grpc_port=settings["SO101_VIEW_GRPC_PORT"],
                             url=settings["SO101_VIEW_URL"], memory_limit=settings["SO101_VIEW_MEMORY_LIMIT"])
    return RerunView(rec, ArmModel(settings["SO101_GRIPPERFRAME"]), image_every=settings["SO101_VIEW_IMAGE_EVERY"],
                     scale=settings["SO101_VIEW_SCALE"], jpeg_quality=settings["SO101_VIEW_JPEG_QUALITY"]), where


# --- a recording folder -> .rrd ---------------------------------------------------------------------------

def view_recording(folder: str | Path, out: str | Path, gripperframe: str | None = None,
                   topics: Mapping[str, str] | None = None) -> Counter:
    """Turn a recording folder (the recorder node's ``<input id>.arrow`` files) into a .rrd with the same
    entities as the live view.  Each topic goes to the view input of its message schema (``topics`` maps a
    topic name to a view input where that is ambiguous); messages are logged in capture-time order.
    There are no dora send timestamps in a recording, so no latency is logged.  Returns the entity counts."""
    from so101_deploy.core.recording import read_recording  # noqa: PLC0415

    folder = Path(folder)
    if not folder.is_dir():
        raise ViewError(f"{folder}: not a recording folder (expected the recorder's <input id>.arrow files)")
    recorded = read_recording(folder)
    if not recorded:
        raise ViewError(f"{folder}: no .arrow recordings in it")
    unknown = sorted(set(topics or {}) - set(recorded))
    bad = sorted(v for v in (topics or {}).values() if v not in INPUTS)
    if unknown or bad:
        raise ViewError(f"view: topics {unknown} are not in {folder}" if unknown else
                        f"view: {bad} are not view inputs (inputs: {list(INPUTS)})")
    # a topic goes to the input named after it (or given in `topics`); else to the input of its message
    # schema, unless another topic is named after that input (e.g. gated_image when image is recorded)
    by_schema = {schema: iid for iid, schema in INPUTS.items()}
    taken = {t for t in recorded if t in INPUTS} | set((topics or {}).values())
    routed: list[tuple[int, int, str, Message]] = []
    for order, (topic, msgs) in enumerate(sorted(recorded.items())):
        if not msgs:
            continue
        target = (topics or {}).get(topic) or (topic if topic in INPUTS else None)
        if target is None and by_schema.get(msgs[0].name) not in taken:
            target = by_schema.get(msgs[0].name)
        if target is None or INPUTS[target] != msgs[0].name:
            log.warning(f"view: topic {topic!r} ({msgs[0].name}) has no place in the view; skipped")
            continue
        routed += [(m.stamp_ns, order, target, m) for m in msgs]
    routed.sort(key=lambda r: (r[0], r[1]))
    rec, _ = open_stream("save", rrd=out)
    view = RerunView(rec, ArmModel(gripperframe), clock=None)
    handlers = view.handlers()
    for _, _, target, msg in routed:
        handlers[target](msg)
    rec.flush()
    rec.disconnect()
    return view.counts


def read_rrd_counts(path: str | Path) -> Counter:
    """Entity path -> rows logged on the timeline (static rows not counted), read back with the rerun SDK."""
    from rerun.chunk import RrdReader  # noqa: PLC0415

    counts: Counter = Counter()
    for chunk in RrdReader(str(path)).stream().to_chunks():
        if chunk.is_static:
            continue
        counts[str(chunk.entity_path).lstrip("/")] += chunk.num_rows
    return counts


# --- `so101-deploy view RECORDING_DIR` -------------------------------------------------------------------

def configure_parser(p) -> None:
    p.add_argument("recording", help="a recording folder (the recorder node's <input id>.arrow files)")
    p.add_argument("--out", help="the .rrd to write (default: RECORDING/view.rrd)")
    p.add_argument("--topic", action="append", default=[], metavar="TOPIC=INPUT",
                   help=f"send a recorded topic to a view input (inputs: {', '.join(INPUTS)}); repeatable")
    p.add_argument("--gripperframe", choices=("training", "lerobot"), default=None,
                   help="the gripperframe site of the arm model (default: SO101_GRIPPERFRAME or training)")


def run(args) -> int:
    topics = {}
    for item in args.topic:
        topic, sep, target = item.partition("=")
        if not sep or not topic or not target:
            print(f"view: error: --topic {item!r} must look like TOPIC=INPUT")
            return 2
        topics[topic] = target
    out = Path(args.out) if args.out else Path(args.recording) / "view.rrd"
    try:
        counts = view_recording(args.recording, out, gripperframe=args.gripperframe, topics=topics)
    except ViewError as e:
        print(f"view: error: {e}")
        return 2
    print(f"view: wrote {out} ({sum(counts.values())} rows in {len(counts)} entities); open it with `rerun {out}`")
    for path, n in sorted(counts.items()):
        print(f"  {path}: {n}")
    return 0
