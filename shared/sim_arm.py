"""The simulated SO-101 on pick-101's lift-cube scene: reset, joint goals in, joint state and wrist
camera frames out, and the task's success test.

One control step is 10 ``mj_step`` of 2 ms (20 ms, 50 Hz), as ``LiftCubeCartesianEnv.step``.
The reset is curriculum stage 3 (facts section 4): cube at (0.25 +- 0.02, 0 +- 0.02, 0.015),
wrist_flex = wrist_roll = pi/2, 50 settle steps, then 100 IK iterations (one ``mj_step`` each,
gain 0.5) toward cube + (0, -0.015, 0.035) with the gripper at action 0.3.

Renderers are created on first use (``MUJOCO_GL=osmesa`` renders headless on a CPU machine), so
a simulation that never renders (tests, the bus variant without a camera) needs no GL at all.
"""

from __future__ import annotations

import math
import os

import mujoco
import numpy as np

from . import sim_scene
from .kinematics import Kinematics, gripper_action_to_rad
from .messages import JOINT_NAMES, N_JOINTS

CUBE_XY_M = (0.25, 0.0)
CUBE_XY_SPREAD_M = 0.02
RESET_WRIST_RAD = math.pi / 2
RESET_SETTLE_STEPS = 50
RESET_IK_ITERS = 100
RESET_IK_OFFSET_M = (0.0, -0.015, 0.035)  # pick-101: cube + (0, -0.015, 0.005 + 0.03)
RESET_GRIPPER_ACTION = 0.3
EPISODE_STEPS = 200
LIFT_HEIGHT_M = 0.08
HOLD_STEPS = 10
# pick-101 calls the gripper "closed" below 0.25 rad, with its 2.5 mm finger pads. The lerobot
# pads are thicker: they hold the 3 cm cube at ~0.33-0.37 rad (measured), so "closed" is 0.45 rad
# here (the open reset gripper is 1.07 rad, where no 3 cm cube can touch both pads).
GRIPPER_CLOSED_BELOW_RAD = 0.45


class SimError(ValueError):
    """A goal the simulator cannot apply (wrong shape, NaN/inf)."""


class SimArm:
    """The MuJoCo SO-101 with the cube; all positions in metres, joints in rad (JOINT_NAMES order)."""

    def __init__(self, model: mujoco.MjModel | None = None, kinematics: Kinematics | None = None):
        self.model = model if model is not None else sim_scene.build_model()
        self.data = mujoco.MjData(self.model)
        self.kin = kinematics if kinematics is not None else Kinematics()
        m = self.model
        jids = [m.joint(n).id for n in JOINT_NAMES]
        self._qadr = np.array([m.jnt_qposadr[j] for j in jids])
        self._vadr = np.array([m.jnt_dofadr[j] for j in jids])
        self._act = np.array([m.actuator(n).id for n in JOINT_NAMES])
        self.ctrl_low = m.actuator_ctrlrange[self._act, 0].copy()
        self.ctrl_high = m.actuator_ctrlrange[self._act, 1].copy()
        cj = m.joint(sim_scene.CUBE_JOINT).id
        self._cube_qadr = int(m.jnt_qposadr[cj])
        self._cube_vadr = int(m.jnt_dofadr[cj])
        self._cube_body = m.body(sim_scene.CUBE_BODY).id
        self._cube_geom = m.geom(sim_scene.CUBE_GEOM).id
        self._pads = {m.geom(n).id for n in sim_scene.PAD_GEOMS}
        self._site = m.site("gripperframe").id
        self._renderers: dict[str, mujoco.Renderer] = {}
        self.step_count = 0
        self.lift_streak = 0
        self.episode = 0
        self.seed: int | None = None

    # --- episode ------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """Stage-3 reset: random cube, wrist at pi/2, settle, IK above the cube, gripper 0.3."""
        rng = np.random.default_rng(seed)
        self.seed = seed
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        cube_xy = np.array(CUBE_XY_M) + rng.uniform(-CUBE_XY_SPREAD_M, CUBE_XY_SPREAD_M, size=2)
        d.qpos[self._cube_qadr:self._cube_qadr + 3] = [cube_xy[0], cube_xy[1], sim_scene.CUBE_HALF_M]
        d.qpos[self._cube_qadr + 3:self._cube_qadr + 7] = [1.0, 0.0, 0.0, 0.0]
        q = np.zeros(N_JOINTS)
        q[3] = q[4] = RESET_WRIST_RAD
        d.qpos[self._qadr] = q
        d.ctrl[self._act] = q
        mujoco.mj_forward(m, d)
        for _ in range(RESET_SETTLE_STEPS):
            mujoco.mj_step(m, d)
        target = self.cube_pos() + np.array(RESET_IK_OFFSET_M)
        gripper_rad = gripper_action_to_rad(RESET_GRIPPER_ACTION)
        for _ in range(RESET_IK_ITERS):
            q_arm = self.kin.ik_step(d.qpos[self._qadr], target, gain=0.5)
            d.ctrl[self._act[:5]] = q_arm
            d.ctrl[self._act[5]] = gripper_rad
            mujoco.mj_step(m, d)
        self.step_count = 0
        self.lift_streak = 0
        self.episode += 1

    # --- control ------------------------------------------------------------------------------

    def apply_goal(self, goal_rad: np.ndarray) -> None:
        """Set the position actuators' goals (6 joints, rad); clipped to the actuators' ctrlrange."""
        goal = np.asarray(goal_rad, dtype=np.float64)
        if goal.shape != (N_JOINTS,):
            raise SimError(f"goal_rad: expected shape ({N_JOINTS},) in {JOINT_NAMES} order, got {goal.shape}")
        if not np.all(np.isfinite(goal)):
            raise SimError(f"goal_rad: expected finite values, got {goal.tolist()}")
        self.data.ctrl[self._act] = np.clip(goal, self.ctrl_low, self.ctrl_high)

    def goal_rad(self) -> np.ndarray:
        return self.data.ctrl[self._act].copy()

    def step(self) -> None:
        """One control step: 10 x mj_step (20 ms); updates the lift streak for :meth:`is_success`."""
        for _ in range(sim_scene.SUBSTEPS):
            mujoco.mj_step(self.model, self.data)
        self.step_count += 1
        self.lift_streak = self.lift_streak + 1 if (self.is_grasped() and self.is_lifted()) else 0

    # --- state --------------------------------------------------------------------------------

    def joint_state(self) -> np.ndarray:
        """(2, 6) float64: row 0 positions (rad), row 1 velocities (rad/s), JOINT_NAMES order."""
        return np.stack([self.data.qpos[self._qadr], self.data.qvel[self._vadr]]).astype(np.float64)

    def set_joint_positions(self, q_rad: np.ndarray) -> None:
        """Teleport the arm (tests, emulator start-up); goals follow so the arm holds there."""
        q = np.asarray(q_rad, dtype=np.float64)
        if q.shape != (N_JOINTS,) or not np.all(np.isfinite(q)):
            raise SimError(f"q_rad: expected 6 finite joint angles, got {q!r}")
        self.data.qpos[self._qadr] = q
        self.data.qvel[self._vadr] = 0.0
        self.data.ctrl[self._act] = np.clip(q, self.ctrl_low, self.ctrl_high)
        mujoco.mj_forward(self.model, self.data)

    def cube_pos(self) -> np.ndarray:
        """Cube centre in the world frame (m)."""
        return self.data.xpos[self._cube_body].copy()

    def gripper_pos(self) -> np.ndarray:
        """``gripperframe`` site in the world frame (m)."""
        return self.data.site_xpos[self._site].copy()

    def pad_contacts(self) -> set[int]:
        """Ids of the jaw pad geoms that touch the cube now."""
        touching = set()
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            pair = {int(c.geom1), int(c.geom2)}
            if self._cube_geom in pair:
                touching |= pair & self._pads
        return touching

    def is_grasped(self) -> bool:
        """pick-101's grasp test: gripper closed (below GRIPPER_CLOSED_BELOW_RAD) and both jaw pads
        touching the cube."""
        closed = self.data.qpos[self._qadr[5]] < GRIPPER_CLOSED_BELOW_RAD
        return bool(closed and self.pad_contacts() == self._pads)

    def is_lifted(self) -> bool:
        return bool(self.cube_pos()[2] > LIFT_HEIGHT_M)

    def is_success(self) -> bool:
        """Grasped with the cube above 0.08 m for 10 consecutive control steps."""
        return self.lift_streak >= HOLD_STEPS

    # --- rendering ----------------------------------------------------------------------------

    def _renderer(self, kind: str) -> mujoco.Renderer:
        r = self._renderers.get(kind)
        if r is None:
            try:
                r = mujoco.Renderer(self.model, sim_scene.IMAGE_HEIGHT, sim_scene.IMAGE_WIDTH)
            except Exception as e:  # noqa: BLE001 - GL setup errors come in several types
                raise RuntimeError(f"cannot create a MuJoCo renderer (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}); "
                                   f"on a headless machine set MUJOCO_GL=osmesa (libosmesa6): {e}") from e
            if kind == "seg":
                r.enable_segmentation_rendering()
            elif kind == "depth":
                r.enable_depth_rendering()
            self._renderers[kind] = r
        r.update_scene(self.data, camera=sim_scene.CAMERA_NAME)
        return r

    def render_rgb_bgr(self) -> np.ndarray:
        """The wrist camera, (480, 640, 3) uint8 BGR (the camera node's format)."""
        rgb = self._renderer("rgb").render()
        return np.ascontiguousarray(rgb[:, :, ::-1])

    def render_seg(self) -> np.ndarray:
        """(480, 640) int32 geom id per pixel, -1 where no geom is seen (sky, sites)."""
        seg = self._renderer("seg").render()
        ids = seg[:, :, 0].astype(np.int32)
        ids[seg[:, :, 1] != mujoco.mjtObj.mjOBJ_GEOM] = -1
        return ids

    def render_depth_m(self) -> np.ndarray:
        """(480, 640) float32 metric depth along the camera axis (mujoco 3.4 Renderer linearises it)."""
        return np.asarray(self._renderer("depth").render(), dtype=np.float32)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
