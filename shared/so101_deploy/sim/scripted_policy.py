"""A privileged scripted lift policy: it knows where the cube is and emits the same Cartesian
actions ``[dx, dy, dz, gripper]`` in [-1, 1] the learned policy emits, so the controller, the IK
and the safety layer can be shown to close the loop in simulation.

Phases: approach (above the grasp point, jaws open) -> descend -> close -> lift -> hold.
Positions are the ``gripperframe`` site and the cube centre in the world frame (m).  In this
MJCF the site sits at the fixed jaw's pad, so the grasp point is beside the cube on the fixed
jaw's side (-y), and the moving jaw closes toward +y, pressing the cube against the fixed jaw.
"""

from __future__ import annotations

import numpy as np

ACTION_SCALE_M = 0.02  # controller: one unit of action moves the EE target by 0.02 m

# gripperframe relative to the cube centre when the jaws hold it (m, world frame)
GRASP_OFFSET_M = np.array([0.0, -0.024, 0.003])
APPROACH_HEIGHT_M = 0.04  # above the grasp point before descending
LIFT_TARGET_Z_M = 0.14  # gripperframe height to lift to (cube well above 0.08 m)
GRIPPER_OPEN = 0.3  # the reset's gripper action: open enough for the 3 cm cube
GRIPPER_CLOSE = -1.0
POS_TOLERANCE_M = 0.006
CLOSE_STEPS = 15  # at least 0.3 s at 50 Hz for the jaw to close on the cube
# the jaw holds the 3 cm cube at ~0.20 rad; below this for SETTLE_STEPS = closed on it.  A servo
# layer with a per-step bound (the real servo node: 0.05 rad / 20 ms) closes the jaw more slowly
# than the sim's actuator, so the lift waits for the jaw, not for a fixed time.
GRIPPER_HELD_BELOW_RAD = 0.25
SETTLE_STEPS = 5
MAX_CLOSE_STEPS = 75
GAIN = 0.5  # fraction of the remaining error commanded per step


class ScriptedLiftPolicy:
    """Call :meth:`reset` at every episode start, then :meth:`act` once per control step."""

    def __init__(self, grasp_offset_m: np.ndarray = GRASP_OFFSET_M):
        self.grasp_offset_m = np.asarray(grasp_offset_m, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        self.phase = "approach"
        self._phase_steps = 0
        self._grasp_point: np.ndarray | None = None
        self._closed_steps = 0

    def _go(self, phase: str) -> None:
        self.phase = phase
        self._phase_steps = 0

    @staticmethod
    def _move(target_m: np.ndarray, gripper_pos_m: np.ndarray) -> np.ndarray:
        return np.clip(GAIN * (target_m - gripper_pos_m) / ACTION_SCALE_M, -1.0, 1.0)

    def act(self, cube_pos_m: np.ndarray, gripper_pos_m: np.ndarray, gripper_rad: float | None = None) -> np.ndarray:
        """The next action (4,) float32 for the present cube and gripperframe positions (m) and, when
        known, the gripper joint angle (rad; without it the jaw gets CLOSE_STEPS to close)."""
        cube = np.asarray(cube_pos_m, dtype=np.float64)
        ee = np.asarray(gripper_pos_m, dtype=np.float64)
        for name, v in (("cube_pos_m", cube), ("gripper_pos_m", ee)):
            if v.shape != (3,) or not np.all(np.isfinite(v)):
                raise ValueError(f"ScriptedLiftPolicy.act: {name} must be 3 finite metres, got {v!r}")
        self._phase_steps += 1
        grasp = cube + self.grasp_offset_m
        if self.phase == "approach":
            target = grasp + [0.0, 0.0, APPROACH_HEIGHT_M]
            if np.linalg.norm(target - ee) < POS_TOLERANCE_M:
                self._go("descend")
            return self._action(self._move(target, ee), GRIPPER_OPEN)
        if self.phase == "descend":
            if np.linalg.norm(grasp - ee) < POS_TOLERANCE_M * 0.5 or self._phase_steps > 60:
                self._grasp_point = grasp
                self._go("close")
            return self._action(self._move(grasp, ee), GRIPPER_OPEN)
        if self.phase == "close":
            held = gripper_rad is None or float(gripper_rad) < GRIPPER_HELD_BELOW_RAD
            self._closed_steps = self._closed_steps + 1 if held else 0
            if (self._phase_steps >= CLOSE_STEPS and self._closed_steps >= SETTLE_STEPS) or \
                    self._phase_steps >= MAX_CLOSE_STEPS:
                self._go("lift")
            return self._action(self._move(self._grasp_point, ee), GRIPPER_CLOSE)
        target = self._grasp_point.copy()
        target[2] = LIFT_TARGET_Z_M
        if self.phase == "lift" and abs(target[2] - ee[2]) < POS_TOLERANCE_M:
            self._go("hold")
        return self._action(self._move(target, ee), GRIPPER_CLOSE)

    @staticmethod
    def _action(dxyz: np.ndarray, gripper: float) -> np.ndarray:
        return np.append(dxyz, gripper).astype(np.float32)


CUBE_META = ("cube_x_m", "cube_y_m", "cube_z_m")


class ScriptedPolicyRunner:
    """The scripted policy node's logic: a ``joint_state`` Message carrying the privileged cube
    position (metadata ``cube_x_m/cube_y_m/cube_z_m``, sent by the sim arm) -> an encoded
    ``action`` (action_space "cartesian").  The gripperframe position comes from the joints through
    the project's kinematics; the phases restart whenever the metadata ``episode`` changes."""

    def __init__(self, kinematics=None, policy: ScriptedLiftPolicy | None = None):
        from so101_deploy.arm.kinematics import Kinematics

        self.kin = kinematics if kinematics is not None else Kinematics()
        self.policy = policy if policy is not None else ScriptedLiftPolicy()
        self.episode = None

    def on_joint_state(self, msg) -> tuple[object, dict]:
        from so101_deploy.core.messages import MessageError, encode

        missing = [k for k in CUBE_META if k not in msg.meta]
        if missing:
            raise MessageError(f"joint_state.metadata: missing {missing}; the scripted policy needs the "
                               f"privileged cube position the sim arm sends (wire sim_arm/joint_state)")
        cube = np.array([float(msg.meta[k]) for k in CUBE_META])
        episode = msg.meta.get("episode")
        if episode != self.episode:
            self.policy.reset()
            self.episode = episode
        q = np.asarray(msg.data[0], dtype=np.float64)
        ee = self.kin.site_pose(q)[0]
        action = self.policy.act(cube, ee, gripper_rad=q[5])
        return encode("action", action, action_space="cartesian", frame_id=msg.frame_id, stamp_ns=msg.stamp_ns,
                      phase=self.policy.phase)


# --- in-process closed loop (the test and the `sim-lift` command) -----------------------------

def run_scripted_episodes(episodes: int, seed: int = 0, controller_env: dict | None = None,
                          gripper_override: float | None = None, on_goal=None) -> list[dict]:
    """The dataflow ``dataflow.sim-scripted.yml`` in one process, lockstep, no rendering: sim arm ->
    scripted policy -> the controller node's logic (IK + SafetyFilter, built from
    ``controller_env`` settings as the node builds it) -> sim arm, every message encoded and decoded.

    Returns one dict per episode: episode, seed, success, steps, max_cube_z_m.  ``on_goal(prev,
    goal, safety)`` sees every goal sent (for checks); ``gripper_override`` replaces the gripper
    action (a negative control).  Each episode restarts the controller from the new reset pose.
    """
    from so101_deploy.arm.controller import SETTINGS, control_loop_from_settings
    from so101_deploy.core.messages import decode, encode
    from so101_deploy.core.settings import Settings
    from so101_deploy.sim.sim_arm import SimArm, SimRunner

    sim = SimArm()
    runner = SimRunner(sim, seed=seed, camera=False, oracle=False)
    policy = ScriptedPolicyRunner(sim.kin)
    loop = prev = episode = None
    max_z: dict[int, float] = {}
    dt_s = 0.02
    try:
        while len(runner.results) < episodes:
            js = next(decode("joint_state", value, meta) for oid, value, meta in runner.tick() if oid == "joint_state")
            if js.meta["episode"] != episode:
                episode = js.meta["episode"]
                loop = control_loop_from_settings(Settings("controller", SETTINGS, dict(controller_env or {})), sim.kin)
                prev = None
            now_s = js.meta["episode_step"] * dt_s
            max_z[episode] = max(max_z.get(episode, 0.0), js.meta["cube_z_m"])
            loop.on_joint_state(js.data, now_s)
            action = decode("action", *policy.on_joint_state(js))
            a = action.data.copy()
            if gripper_override is not None:
                a[3] = gripper_override
            out = loop.on_action(a, action.meta["action_space"], now_s)
            goal = decode("joint_goal", *encode("joint_goal", out.goal_rad, frame_id=js.frame_id,
                                                stamp_ns=js.stamp_ns))
            if on_goal is not None:
                on_goal(js.data[0] if prev is None else prev, goal.data.copy(), loop.safety)
            prev = goal.data.copy()
            runner.on_goal(goal.data)
    finally:
        sim.close()
    return [{**r, "max_cube_z_m": max_z[r["episode"]]} for r in runner.results]


def measure_sim(frames: int = 10, steps: int = 200) -> dict[str, float]:
    """Milliseconds per wrist render (rgb, seg, depth at 640x480) and per control step (physics)."""
    import time

    from so101_deploy.sim.sim_arm import SimArm

    sim = SimArm()
    try:
        sim.reset(0)
        out = {}
        for name, fn in (("rgb", sim.render_rgb_bgr), ("seg", sim.render_seg), ("depth", sim.render_depth_m)):
            fn()  # first call creates the GL context
            t0 = time.perf_counter()
            for _ in range(frames):
                fn()
            out[f"render_{name}_ms"] = (time.perf_counter() - t0) / frames * 1e3
        t0 = time.perf_counter()
        for _ in range(steps):
            sim.step()
        out["physics_step_ms"] = (time.perf_counter() - t0) / steps * 1e3
        return out
    finally:
        sim.close()

