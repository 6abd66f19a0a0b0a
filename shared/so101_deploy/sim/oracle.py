"""Oracle perception: what the simulator gave the policy during training, computed from the
MuJoCo renders instead of the learned seg and depth models (facts sections 2.1 and 2.2).

- segmentation: geom id per pixel -> the 5 sim classes 0 other (arm links, sky), 1 floor, 2 cube,
  3 static finger = every geom of the ``gripper`` body (wrist-roll servo mesh and jaw pad
  included), 4 moving finger = every geom of the moving jaw body.  The map is built by BODY from
  the compiled model, never from geom ids (this MJCF's ids differ from pick-101's).
- depth: metric depth (m) -> raw disparity ``1 / (depth + 1e-3)`` float32.  Not normalised: the
  observation node does training's per-frame min-max, exactly as for Depth Anything's output.
"""

from __future__ import annotations

import mujoco
import numpy as np

from so101_deploy.sim import scene as sim_scene

CLASS_OTHER, CLASS_FLOOR, CLASS_CUBE, CLASS_STATIC_FINGER, CLASS_MOVING_FINGER = range(5)
DISPARITY_EPS_M = 1e-3


class OracleError(ValueError):
    """A render the oracle cannot turn into a mask or a disparity (wrong shape, dtype, NaN)."""


def class_of_geom(model: mujoco.MjModel) -> np.ndarray:
    """(ngeom,) uint8: the sim class of every geom of ``model``, decided by the body it belongs to."""
    body_class = {
        model.body(sim_scene.CUBE_BODY).id: CLASS_CUBE,
        model.body(sim_scene.GRIPPER_BODY).id: CLASS_STATIC_FINGER,
        model.body(sim_scene.MOVING_JAW_BODY).id: CLASS_MOVING_FINGER,
    }
    classes = np.zeros(model.ngeom, dtype=np.uint8)
    for g in range(model.ngeom):
        classes[g] = body_class.get(int(model.geom_bodyid[g]), CLASS_OTHER)
    # the floor is a world geom; the world's other geoms (none here) stay "other"
    classes[model.geom(sim_scene.FLOOR_GEOM).id] = CLASS_FLOOR
    return classes


class OracleSeg:
    """Geom-id renders -> sim class masks for one model."""

    def __init__(self, model: mujoco.MjModel):
        self.ngeom = model.ngeom
        # index 0 is "no geom" (-1 shifted by one), so the lookup is a single take
        self._lut = np.concatenate([[CLASS_OTHER], class_of_geom(model)]).astype(np.uint8)

    def classes(self, geom_ids: np.ndarray) -> np.ndarray:
        """(H, W) int geom ids (-1 = no geom) -> (H, W) uint8 sim classes 0-4."""
        ids = np.asarray(geom_ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise OracleError(f"geom ids: expected an (H, W) integer array, got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < -1 or ids.max() >= self.ngeom):
            raise OracleError(f"geom ids: expected values in [-1, {self.ngeom - 1}], got "
                              f"[{ids.min()}, {ids.max()}]")
        return self._lut[ids.astype(np.int64) + 1]


def disparity_from_depth(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) metric depth (m, >= 0) -> (H, W) float32 raw disparity ``1/(depth + 1e-3)``."""
    depth = np.asarray(depth_m)
    if depth.ndim != 2 or depth.dtype.kind != "f":
        raise OracleError(f"depth: expected an (H, W) float array in metres, got {depth.dtype} {depth.shape}")
    if not np.all(np.isfinite(depth)) or (depth.size and depth.min() < 0):
        raise OracleError("depth: expected finite non-negative metres (a NaN/inf or negative depth means a "
                          "broken render)")
    return (1.0 / (depth.astype(np.float32) + np.float32(DISPARITY_EPS_M))).astype(np.float32)
