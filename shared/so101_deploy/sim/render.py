"""One GL context for the wrist camera: the oracle's geom ids and metric depth from ONE render pass,
plus colour frames (full size, or small for an episode video).

``mujoco.Renderer`` needs one renderer (and GL context) per kind of image, and the oracle used two
of them per frame: a segmentation render and a depth render.  Both render the same scene with the
same flags (``mjRND_SEGMENT`` + ``mjRND_IDCOLOR``; the depth renderer sets them too, for precision
at far distances), so a single ``mjr_render`` followed by one ``mjr_readPixels`` of the id colours
AND the depth buffer gives both images.  :meth:`WristRenderer.ids_and_depth` does that, and decodes
them exactly as ``mujoco.Renderer`` (mujoco 3.4, ``python/mujoco/renderer.py``) does, so the
results are bit-identical to the two-renderer way (tests/test_sim_render.py checks it):

- id colour ``r + 256 g + 65536 b`` = scene segid + 1 (0 = background) -> geom id, -1 where no geom
  is seen (background, or a scene object that is not a geom: sites, decor);
- depth buffer (reversed Z, ``mjDEPTH_ZEROFAR``) -> metres with the Renderer's float32 frustum
  coefficients and float64 division, cast back to float32;
- rows flipped (GL's origin is bottom-left).

Why the old seg image was slow (~130 ms more than the depth image on 2 cores): not the render and
not mujoco's decoding (~6 ms), but ``ids[seg[:, :, 1] != mujoco.mjtObj.mjOBJ_GEOM] = -1`` in
``SimArm.render_seg``: numpy cannot compare an int array with a pybind11 enum natively, so it
compares all 307,200 pixels one by one in Python (~105 ms; with ``int(...)`` it takes 0.25 ms).
Here the id colour goes through one small per-frame lookup table (scene segid -> geom id).

The GL backend is mujoco's (``MUJOCO_GL`` at import: osmesa, egl, glfw); with neither
``MUJOCO_GL`` nor a display on Linux, the project's OSMesa fallback applies.

``python -m so101_deploy.sim.render --bench`` prints render ms per frame, old way vs one pass.
"""

from __future__ import annotations

import copy
import os

import mujoco
import numpy as np
from mujoco import gl_context

from so101_deploy.core.gl import headless_gl_fallback
from so101_deploy.sim import scene as sim_scene

VIDEO_WIDTH = 160
VIDEO_HEIGHT = 120
_MAX_GEOM = 10000  # mujoco.Renderer's default scene size
_SEG_FLAGS = (mujoco.mjtRndFlag.mjRND_SEGMENT, mujoco.mjtRndFlag.mjRND_IDCOLOR)
_OBJ_GEOM = int(mujoco.mjtObj.mjOBJ_GEOM)  # an int: numpy compares with a pybind11 enum pixel by pixel


def depth_coefficients(model: mujoco.MjModel) -> tuple[np.float32, np.float32]:
    """(c, d) with metric depth = d / (buffer + c), computed as mujoco.Renderer does (float32,
    glFrustum's values turned to reversed Z), so the linearised depth is bit-identical."""
    extent = model.stat.extent
    zfar = np.float32(model.vis.map.zfar * extent)
    znear = np.float32(model.vis.map.znear * extent)
    c_coef = -(zfar + znear) / (zfar - znear)
    d_coef = -(np.float32(2) * zfar * znear) / (zfar - znear)
    return np.float32(-0.5) * c_coef - np.float32(0.5), np.float32(-0.5) * d_coef


class WristRenderer:
    """Renders one camera of ``model`` from one GL context: geom ids + depth in one pass, and colour.

    ``lite`` turns off shadows and the floor reflection (for a cheap video, see :func:`video_renderer`;
    not the look the policy was trained on).  Not thread-safe (one GL context, made current on each
    call); call :meth:`close` when done.
    """

    def __init__(self, model: mujoco.MjModel, height: int = sim_scene.IMAGE_HEIGHT,
                 width: int = sim_scene.IMAGE_WIDTH, camera: str | int = sim_scene.CAMERA_NAME,
                 lite: bool = False):
        if width > model.vis.global_.offwidth or height > model.vis.global_.offheight:
            raise ValueError(f"image {width}x{height} exceeds the model's offscreen buffer "
                             f"{model.vis.global_.offwidth}x{model.vis.global_.offheight}")
        cam_id = camera if isinstance(camera, int) else mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if not 0 <= cam_id < model.ncam:
            raise ValueError(f"the model has no camera {camera!r}")
        self.model = model
        self.height, self.width = int(height), int(width)
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = cam_id
        self._option = mujoco.MjvOption()
        self._scene = mujoco.MjvScene(model, maxgeom=_MAX_GEOM)
        if lite:
            self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.empty((self.height, self.width, 3), np.uint8)
        self._depth = np.empty((self.height, self.width), np.float32)
        self._gl = None
        self._con = None
        headless_gl_fallback()
        try:
            if gl_context.GLContext is not None:
                self._gl = gl_context.GLContext(self.width, self.height)
                self._gl.make_current()
            self._con = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150.value)
        except Exception as e:  # noqa: BLE001 - GL setup errors come in several types
            self.close()
            raise RuntimeError(f"cannot create a MuJoCo GL context (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}); "
                               f"on a headless machine set MUJOCO_GL=osmesa (libosmesa6) or egl: {e}") from e
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._con)
        self._con.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR

    # --- rendering ----------------------------------------------------------------------------

    def _render(self, data: mujoco.MjData, rect: mujoco.MjrRect, seg: bool) -> None:
        if self._con is None:
            raise RuntimeError("WristRenderer: render after close")
        mujoco.mjv_updateScene(self.model, data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL.value, self._scene)
        if self._gl is not None:
            self._gl.make_current()
        flags = self._scene.flags
        saved = [flags[f] for f in _SEG_FLAGS]
        if seg:
            for f in _SEG_FLAGS:
                flags[f] = True
        try:
            mujoco.mjr_render(rect, self._scene, self._con)
        finally:
            for f, v in zip(_SEG_FLAGS, saved):
                flags[f] = v

    def _geom_lut(self) -> np.ndarray:
        """(scene ngeom + 1,) int32: id colour value (segid + 1; 0 background) -> geom id or -1."""
        n = self._scene.ngeom
        lut = np.full(n + 1, -1, dtype=np.int32)
        for g in self._scene.geoms[:n]:
            if g.segid != -1 and g.objtype == _OBJ_GEOM:
                lut[g.segid + 1] = g.objid
        return lut

    def _decode_ids(self, rgb: np.ndarray) -> np.ndarray:
        seg = rgb[::-1, :, 0].astype(np.int32)
        seg |= rgb[::-1, :, 1].astype(np.int32) << 8
        seg |= rgb[::-1, :, 2].astype(np.int32) << 16
        # an id colour beyond the scene raises IndexError, as in mujoco.Renderer
        return self._geom_lut()[seg]

    def _linear_depth(self, depth: np.ndarray) -> np.ndarray:
        # mujoco.Renderer: out64 = d / (float64(buffer) + c), cast to float32, then flipped; the
        # same elementwise float64 operations, in the same order, on the flipped rows
        c_coef, d_coef = depth_coefficients(self.model)  # per frame, as the Renderer (the model may change)
        out64 = np.add(depth[::-1], c_coef, dtype=np.float64)
        np.divide(d_coef, out64, out=out64)
        return out64.astype(np.float32)

    def ids_and_depth(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        """One render pass: ((H, W) int32 geom id per pixel, -1 where no geom; (H, W) float32 metric
        depth along the camera axis), bit-identical to mujoco.Renderer's seg and depth renders."""
        self._render(data, self._rect, seg=True)
        mujoco.mjr_readPixels(self._rgb, self._depth, self._rect, self._con)
        return self._decode_ids(self._rgb), self._linear_depth(self._depth)

    def geom_ids(self, data: mujoco.MjData) -> np.ndarray:
        """(H, W) int32 geom ids only (no depth readback)."""
        self._render(data, self._rect, seg=True)
        mujoco.mjr_readPixels(self._rgb, None, self._rect, self._con)
        return self._decode_ids(self._rgb)

    def depth_m(self, data: mujoco.MjData) -> np.ndarray:
        """(H, W) float32 metric depth only (no colour readback)."""
        self._render(data, self._rect, seg=True)
        mujoco.mjr_readPixels(None, self._depth, self._rect, self._con)
        return self._linear_depth(self._depth)

    def rgb(self, data: mujoco.MjData, height: int | None = None, width: int | None = None) -> np.ndarray:
        """(h, w, 3) uint8 RGB colour image, full size by default; a smaller (h, w) renders only that
        many pixels (the same camera and field of view when h/w keeps the aspect ratio), e.g.
        VIDEO_HEIGHT x VIDEO_WIDTH for an episode video."""
        h = self.height if height is None else int(height)
        w = self.width if width is None else int(width)
        if not (0 < h <= self.height and 0 < w <= self.width):
            raise ValueError(f"rgb size {w}x{h}: expected 1..{self.width} x 1..{self.height}")
        rect = mujoco.MjrRect(0, 0, w, h)
        self._render(data, rect, seg=False)
        out = np.empty((h, w, 3), np.uint8)
        mujoco.mjr_readPixels(out, None, rect, self._con)
        return out[::-1].copy()

    def close(self) -> None:
        if getattr(self, "_gl", None) is not None:
            self._gl.free()
        self._gl = None
        if getattr(self, "_con", None) is not None:
            self._con.free()
        self._con = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def video_renderer(model: mujoco.MjModel, height: int = VIDEO_HEIGHT, width: int = VIDEO_WIDTH,
                   camera: str | int = sim_scene.CAMERA_NAME) -> WristRenderer:
    """A cheap colour renderer for an episode video: its own GL context on a copy of ``model`` whose
    offscreen buffer is just ``width`` x ``height`` without multisampling, and the ``lite`` look (no
    shadows: the 4096^2 shadow map and the floor reflection cost most of a colour frame in llvmpipe,
    whatever the image size)."""
    small = copy.deepcopy(model)
    small.vis.global_.offwidth = int(width)
    small.vis.global_.offheight = int(height)
    small.vis.quality.offsamples = 0
    r = WristRenderer(small, height, width, camera, lite=True)
    # the copy only sized the GL buffer (its meshes and textures are the model's); each frame's scene comes
    # from the live model, so a scene variation (cube size and colour, lights, camera pose) shows in the video
    r.model = model
    return r


# --- measurement ------------------------------------------------------------------------------

BENCH_VARIANTS = ("old seg+depth", "old, int compare", "one pass", "one pass + oracle", "rgb 640x480", "video 160x120")


def _bench_backend(frames: int) -> dict[str, list[float]]:
    """Per-frame ms of each variant in this process (its MUJOCO_GL), the variants interleaved frame
    by frame so that load from other processes hits them alike."""
    import time

    from so101_deploy.sim.oracle import OracleSeg, disparity_from_depth
    from so101_deploy.sim.sim_arm import SimArm

    sim = SimArm()
    sim.reset(0)
    h, w = sim_scene.IMAGE_HEIGHT, sim_scene.IMAGE_WIDTH
    seg_r = mujoco.Renderer(sim.model, h, w)
    seg_r.enable_segmentation_rendering()
    depth_r = mujoco.Renderer(sim.model, h, w)
    depth_r.enable_depth_rendering()
    one = WristRenderer(sim.model)
    video = video_renderer(sim.model)
    oracle = OracleSeg(sim.model)
    geom = mujoco.mjtObj.mjOBJ_GEOM

    def old(obj_geom):
        seg_r.update_scene(sim.data, camera=sim_scene.CAMERA_NAME)
        seg = seg_r.render()
        ids = seg[:, :, 0].astype(np.int32)
        ids[seg[:, :, 1] != obj_geom] = -1  # the enum: what SimArm.render_seg did before
        depth_r.update_scene(sim.data, camera=sim_scene.CAMERA_NAME)
        return ids, np.asarray(depth_r.render(), dtype=np.float32)

    def with_oracle():
        ids, depth = one.ids_and_depth(sim.data)
        return oracle.classes(ids), disparity_from_depth(depth)

    fns = {"old seg+depth": lambda: old(geom), "old, int compare": lambda: old(int(geom)),
           "one pass": lambda: one.ids_and_depth(sim.data), "one pass + oracle": with_oracle,
           "rgb 640x480": lambda: one.rgb(sim.data), "video 160x120": lambda: video.rgb(sim.data)}
    try:
        for fn in fns.values():  # first frames: GL contexts, shader compilation
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for i in range(frames):
            sim.step()  # a moving scene, as in an episode
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
        return times
    finally:
        for r in (seg_r, depth_r, one, video):
            r.close()
        sim.close()


def bench(backends: tuple[str, ...] = ("osmesa", "egl"), rounds: int = 3, frames: int = 5) -> dict:
    """Median ms per frame of each variant per GL backend.  mujoco picks the backend when it is
    imported, so each backend runs in child processes, alternating backends round by round."""
    import json
    import subprocess
    import sys

    times = {b: {k: [] for k in BENCH_VARIANTS} for b in backends}
    for _ in range(rounds):
        for b in backends:
            env = {**os.environ, "MUJOCO_GL": b, "PYOPENGL_PLATFORM": b}
            p = subprocess.run([sys.executable, "-m", "so101_deploy.sim.render", "--bench-child", str(frames)],
                               env=env, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"MUJOCO_GL={b}: benchmark child failed: {p.stderr.strip()[-2000:]}")
            for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items():
                times[b][k].extend(v)
    return {b: {k: (float(np.median(v)), len(v)) for k, v in t.items()} for b, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m so101_deploy.sim.render",
                                     description="wrist camera render times (ms per frame)")
    parser.add_argument("--bench", action="store_true", help="old two-renderer way vs one pass, per backend")
    parser.add_argument("--backends", default="osmesa,egl", help="MUJOCO_GL values, comma separated")
    parser.add_argument("--rounds", type=int, default=3, help="child processes per backend (alternating)")
    parser.add_argument("--frames", type=int, default=5, help="frames per variant per child")
    parser.add_argument("--bench-child", type=int, metavar="FRAMES", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bench_child:
        print(json.dumps(_bench_backend(args.bench_child)))
        return 0
    if not args.bench:
        parser.print_help()
        return 2
    result = bench(tuple(b for b in args.backends.split(",") if b), args.rounds, args.frames)
    print(f"median ms per frame ({args.rounds} rounds x {args.frames} frames per backend, variants interleaved "
          f"frame by frame; {os.cpu_count()} CPUs, other load on the machine shows up here)")
    print(f"{'':20s}" + "".join(f"{b:>12s}" for b in result))
    for k in BENCH_VARIANTS:
        print(f"{k:20s}" + "".join(f"{result[b][k][0]:12.1f}" for b in result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
