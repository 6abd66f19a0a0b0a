"""The simulated SO-101 on pick-101's lift-cube scene: reset, joint goals in, joint state and wrist
camera frames out, and the task's success test.

One control step is 10 ``mj_step`` of 2 ms (20 ms, 50 Hz), as ``LiftCubeCartesianEnv.step``.
The reset is curriculum stage 3 (facts section 4): cube at (0.25 +- 0.02, 0 +- 0.02, 0.015),
wrist_flex = wrist_roll = pi/2, 50 settle steps, then 100 IK iterations (one ``mj_step`` each,
gain 0.5) toward cube + (0, -0.015, 0.035) with the gripper at action 0.3.

Renderers are created on first use (``MUJOCO_GL=osmesa`` renders headless on a CPU machine), so
a simulation that never renders (tests, the bus variant without a camera) needs no GL at all.  On
Linux with neither ``MUJOCO_GL`` nor a ``DISPLAY`` set, rendering falls back to OSMesa instead of
failing on GLFW.

The bus variant's coupling (the sim behind the software servo bus, served from a child process)
is in :mod:`so101_deploy.sim.sim_bus`.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

from so101_deploy.sim import scene as sim_scene
from so101_deploy.arm.kinematics import Kinematics, gripper_action_to_rad
from so101_deploy.core.messages import JOINT_NAMES, N_JOINTS, encode, now_ns
from so101_deploy.core.settings import Setting, SettingError
from so101_deploy.sim.evaluation import CONTROL_DT_S, VARIATION_STREAM, ActionSchedule, EpisodeRecord, PerceptionNoise, append_jsonl
from so101_deploy.sim.episode_video import EpisodeVideo
from so101_deploy.sim.oracle import OracleSeg, disparity_from_depth
from so101_deploy.sim.render import WristRenderer, video_renderer
from so101_deploy.sim.variation import SceneVariation, SceneVariator, parse_variation
from so101_deploy.sim.sim_bus import BusProcess, SimBusBridge

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
GRIPPER_CLOSED_BELOW_RAD = 0.25  # pick-101 "closed": gripper qpos < 0.25 (the jaw holds the cube at ~0.20)
# "tick": a dora timer paces the physics (real time when the renders keep up); "goal": lockstep as
# in training, one control step per goal, so every frame is seen by the policy before the next step
STEP_ON = ("tick", "goal")


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
        self._cube_body = m.body(sim_scene.CUBE_BODY).id
        self._cube_geom = m.geom(sim_scene.CUBE_GEOM).id
        self._pads = {m.geom(n).id for n in sim_scene.PAD_GEOMS}
        self._site = m.site("gripperframe").id
        self._renderers: dict[str, WristRenderer] = {}
        # one per model: it remembers the nominal scene, which a second one made after a variation would not
        self.variator = SceneVariator(self.model)
        self._gain_on = m.actuator_gainprm[self._act].copy()
        self._bias_on = m.actuator_biasprm[self._act].copy()
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
        # resting on the floor: z = the cube's half size (training's 0.015 m unless a variation scaled it)
        d.qpos[self._cube_qadr:self._cube_qadr + 3] = [cube_xy[0], cube_xy[1], self.cube_half_m()]
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

    def set_torque(self, enabled: np.ndarray | bool) -> None:
        """Torque per joint (6 bools, or one for all): a joint without torque is limp (its position
        actuator's gain and bias are zeroed), as an STS3215 with Torque_Enable 0."""
        on = np.broadcast_to(np.asarray(enabled, dtype=bool), (N_JOINTS,))
        m = self.model
        m.actuator_gainprm[self._act] = np.where(on[:, None], self._gain_on, 0.0)
        m.actuator_biasprm[self._act] = np.where(on[:, None], self._bias_on, 0.0)

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

    def cube_half_m(self) -> float:
        """Half the cube's edge (m): sim_scene.CUBE_HALF_M unless a scene variation scaled it."""
        return float(self.model.geom_size[self._cube_geom][2])

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

    def _renderer(self, kind: str = "wrist") -> WristRenderer:
        """The wrist camera's renderer, created on first use: "wrist" (640x480: geom ids and depth in
        one pass, colour) or "video" (VIDEO_WIDTH x VIDEO_HEIGHT colour, cheap lite look)."""
        r = self._renderers.get(kind)
        if r is None:
            r = video_renderer(self.model) if kind == "video" else WristRenderer(self.model)
            self._renderers[kind] = r
        return r

    def render_rgb_bgr(self) -> np.ndarray:
        """The wrist camera, (480, 640, 3) uint8 BGR (the camera node's format)."""
        rgb = self._renderer().rgb(self.data)
        return np.ascontiguousarray(rgb[:, :, ::-1])

    def render_video_bgr(self) -> np.ndarray:
        """A small wrist frame for an episode video, (VIDEO_HEIGHT, VIDEO_WIDTH, 3) uint8 BGR, without
        shadows or floor reflection (cheap; not the look the policy sees)."""
        rgb = self._renderer("video").rgb(self.data)
        return np.ascontiguousarray(rgb[:, :, ::-1])

    def render_seg(self) -> np.ndarray:
        """(480, 640) int32 geom id per pixel, -1 where no geom is seen (sky, sites)."""
        return self._renderer().geom_ids(self.data)

    def render_depth_m(self) -> np.ndarray:
        """(480, 640) float32 metric depth along the camera axis (linearised as mujoco 3.4's Renderer)."""
        return self._renderer().depth_m(self.data)

    def render_seg_and_depth(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`render_seg` and :meth:`render_depth_m` of the same instant from ONE render pass."""
        return self._renderer().ids_and_depth(self.data)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


class SimRunner:
    """The sim arm node's logic, free of dora: goals in, encoded messages out, episodes managed.

    Each :meth:`tick` is one control step (10 x 2 ms) and returns ``[(output_id, arrow_array,
    metadata)]`` ready for ``node.send_output``: ``joint_state`` every step (with the privileged
    cube position as metadata ``cube_x_m/cube_y_m/cube_z_m`` and the episode bookkeeping), and
    every ``render_every`` steps the wrist ``image`` (when ``camera``) plus, when ``oracle``, the
    oracle ``mask`` (seg_mask, classes "sim5") and ``disparity`` of the same frame (same frame_id
    and stamp_ns).  An episode ends on success or after ``episode_steps``; the next tick resets
    with seed ``seed + episode index`` and reports ``episode`` + 1, ``episode_step`` 0, and also
    sends that first state on ``episode_start`` (before anything else of the tick).
    """

    def __init__(self, sim: SimArm, seed: int = 0, render_every: int = 1, episode_steps: int = EPISODE_STEPS,
                 camera: bool = True, oracle: bool = False, bus_bridge: SimBusBridge | None = None,
                 schedule: ActionSchedule | None = None, noise: PerceptionNoise | None = None,
                 variation: SceneVariation | None = None, episodes: int = 0, report_path: str | None = None,
                 video: EpisodeVideo | None = None):
        if render_every < 1 or episode_steps < 0 or episodes < 0:
            raise ValueError("SimRunner: render_every must be >= 1, episode_steps >= 0 (0: never reset) and "
                             "episodes >= 0 (0: no limit)")
        self.sim = sim
        self.seed = int(seed)
        self.render_every = int(render_every)
        self.episode_steps = int(episode_steps)
        self.camera = bool(camera)
        self.oracle_seg = OracleSeg(sim.model) if oracle else None
        self.schedule = schedule if schedule is not None else ActionSchedule()
        self.noise = noise if noise is not None else PerceptionNoise()
        self.variation = variation if variation is not None and not variation.is_nominal else None
        self.episodes = int(episodes)
        self.report_path = report_path
        self.video = video
        self.state_id = 0
        self.frame_id = 0
        self.results: list[dict] = []  # one per finished episode
        self.all_done = False  # `episodes` episodes finished: the sim stops stepping
        self.ignored = {"watchdog": 0, "stale": 0}  # lockstep goals not stepped on (see :meth:`lockstep_goal`)
        self.total_steps = 0  # control steps over all episodes: the simulated clock (sim_time_s)
        self._episode_index = 0
        self._start_episode(self.seed)
        self.bus_bridge = bus_bridge
        self.step_on = "tick"
        self.resend_s = 1.0
        if bus_bridge is not None:
            bus_bridge.report()

    def _start_episode(self, seed: int) -> None:
        """Training's reset with ``seed``; knobs drawn from streams of the same seed (reproducible alone)."""
        drawn = {}
        if self.variation is not None:  # before the reset: a resized cube spawns resting on the floor
            drawn = self.sim.variator.apply(self.variation, np.random.default_rng([seed, VARIATION_STREAM]))
        self.sim.reset(seed)
        self.schedule.reset()
        self.noise.reset(seed)
        self.record = EpisodeRecord(self.sim.episode, seed, float(self.sim.cube_pos()[2]), variation=drawn)
        if self.video is not None:
            self.video.start(self.sim.episode, seed)

    def on_goal(self, goal_rad: np.ndarray) -> None:
        """A goal computed from the present frame: applied ``schedule.latency_steps`` steps from now."""
        goal = np.asarray(goal_rad, dtype=np.float64)
        if goal.shape != (N_JOINTS,) or not np.all(np.isfinite(goal)):
            self.sim.apply_goal(goal)  # raises SimError, the one message for a bad goal
        self.schedule.push(goal, self.sim.step_count)
        self.record.on_policy_step()

    def lockstep_goal(self, goal_rad: np.ndarray, frame_id: int, source: str | None) -> bool:
        """A goal in lockstep (``step_on`` "goal"): True when it answers the frame sent last and the sim
        should :meth:`tick` (its ``frame_id`` is that of the last publish).  A watchdog's hold goal is ignored (the sim waits for the loop: a slow step is
        not a stalled arm), and so is a goal computed from an older frame (after a re-send)."""
        if source == "watchdog":
            self.ignored["watchdog"] += 1
            return False
        # the goal carries the id of what it was computed from: the camera frame (policy) or the joint state
        # (scripted policy); both are the last publish's in lockstep.  Ids, not stamps: a replayed goal matches
        answered = {self.state_id - 1, self.frame_id - 1}
        if self.state_id > 0 and frame_id not in answered:
            self.ignored["stale"] += 1
            return False
        self.on_goal(goal_rad)
        return True

    def episode_over(self) -> bool:
        if self.episode_steps == 0:  # one endless episode (the bus variant: a real arm never teleports)
            return False
        return self.sim.is_success() or self.sim.step_count >= self.episode_steps

    def _finish_episode(self) -> dict:
        self.record.update(self.sim.step_count, self.sim.cube_pos()[2], self.sim.is_grasped(), self.sim.is_success())
        result = self.record.as_dict()
        if self.video is not None:
            result["video"] = self.video.finish()
        self.results.append(result)
        if self.report_path:
            append_jsonl(self.report_path, result)
        self._episode_index += 1
        if self.episodes and self._episode_index >= self.episodes:
            self.all_done = True
            return result
        self._start_episode(self.seed + self._episode_index)
        if self.bus_bridge is not None:
            self.bus_bridge.report()
        return result

    def _control_step(self) -> None:
        goal = self.schedule.due(self.sim.step_count)
        if goal is not None:
            self.sim.apply_goal(goal)
        self.sim.step()
        self.total_steps += 1
        self.record.update(self.sim.step_count, self.sim.cube_pos()[2], self.sim.is_grasped(), self.sim.is_success())
        if self.video is not None and self.sim.step_count % self.video.every == 0:
            self.video.add(self.sim)

    def tick(self) -> list[tuple[str, object, dict]]:
        """One control step (or the reset that ends an episode), then :meth:`publish`; in lockstep
        (``step_on`` "goal") ``schedule.action_every`` control steps, the present goal held between.
        Nothing at all once ``episodes`` episodes finished."""
        if self.all_done:
            return []
        finished = None
        if self.episode_over():
            finished = self._finish_episode()
            if self.all_done:
                return []
        elif self.bus_bridge is not None:
            self.bus_bridge.apply()
            self.sim.step()
            self.total_steps += 1
            self.bus_bridge.report()
        else:
            for _ in range(self.schedule.action_every if self.step_on == "goal" else 1):
                self._control_step()
                if self.episode_over():
                    break
        return self.publish(finished)

    def publish(self, finished: dict | None = None, force_frame: bool = False) -> list[tuple[str, object, dict]]:
        """The present state as messages, without stepping (the first frame of a lockstep run, or a
        resend when the loop stalled): joint_state, plus a frame when one is due or forced."""
        stamp = now_ns()
        cube = self.sim.cube_pos()
        meta = {"episode": self.sim.episode, "episode_step": self.sim.step_count,
                "cube_x_m": float(cube[0]), "cube_y_m": float(cube[1]), "cube_z_m": float(cube[2]),
                "grasped": int(self.sim.is_grasped()), "success": int(self.sim.is_success()),
                # the simulated clock (a controller with SO101_CLOCK=sim runs its safety filter on it)
                "sim_time_s": round(self.total_steps * CONTROL_DT_S, 6)}
        if finished is not None:
            meta["previous_episode_success"] = int(finished["success"])
        state = encode("joint_state", self.sim.joint_state(), frame_id=self.state_id, stamp_ns=stamp, **meta)
        out = [("joint_state", *state)]
        if finished is not None:
            # sent first: wired to the observation's `reset` input, the frame stack restarts with
            # the new episode's first frame, as training's FrameStack does at env.reset()
            out.insert(0, ("episode_start", *state))
        self.state_id += 1
        due = force_frame or self.sim.step_count % self.render_every == 0
        if (self.camera or self.oracle_seg is not None) and due:
            out.extend(self.render_frame(stamp))
        return out

    def render_frame(self, stamp_ns: int) -> list[tuple[str, object, dict]]:
        frame = {"frame_id": self.frame_id, "stamp_ns": stamp_ns, "episode": self.sim.episode}
        out = []
        if self.camera:
            out.append(("image", *encode("image", self.sim.render_rgb_bgr(), **frame)))
        if self.oracle_seg is not None:
            geom_ids, depth_m = self.sim.render_seg_and_depth()  # one render pass for both
            mask = self.noise.mask(self.oracle_seg.classes(geom_ids))
            disparity = self.noise.disparity(disparity_from_depth(depth_m))
            out.append(("mask", *encode("seg_mask", mask, classes="sim5", **frame)))
            out.append(("disparity", *encode("disparity", disparity, **frame)))
            if self.video is not None:
                self.video.note_oracle(mask, disparity)
        self.frame_id += 1
        return out

    def close(self) -> None:
        if self.video is not None:
            self.video.close()
        self.sim.close()


SETTINGS = (
    Setting("SO101_SIM_SEED", "int", 0, "seed of the first episode's reset", min=0),
    Setting("SO101_SIM_STEP_ON", "choice", "tick", "tick: one control step per timer tick; goal: lockstep, one "
            "control step per goal (as training)", choices=STEP_ON),
    Setting("SO101_SIM_RENDER_EVERY", "int", 1, "render the wrist camera every N control steps", min=1),
    Setting("SO101_SIM_CAMERA", "bool", True, "render and send the wrist camera image"),
    Setting("SO101_SIM_ORACLE", "bool", False, "also send the simulator's own mask and disparity"),
    Setting("SO101_SIM_BUS_LINK", "str", None, "serve the software servo bus at this path: the real servo node "
            "then drives the sim"),
    Setting("SO101_SIM_EPISODE_STEPS", "int", None, f"control steps per episode (0: never reset; default "
            f"{EPISODE_STEPS}, or 0 in the bus variant)", min=0),
    Setting("SO101_SIM_RESEND_S", "float", 1.0, "lockstep: re-send the present frame when no goal answered it for "
            "max(this, 4 x the median cycle)",
            min=0.05, max=60.0),
    Setting("SO101_CALIBRATION", "str", None, "bus variant: the LeRobot calibration JSON the servo node uses "
            "(default: the shipped example)"),
    # evaluation knobs (so101_deploy.sim.evaluation); the defaults are training's conditions
    Setting("SO101_SIM_LATENCY_STEPS", "int", 0, "apply each goal this many 20 ms control steps after its frame "
            "(deployment latency)", min=0, max=200),
    Setting("SO101_SIM_ACTION_EVERY", "int", 1, "lockstep: a new action every N control steps, the last goal held "
            "between (deployment control rate: 50/N Hz)", min=1, max=200),
    Setting("SO101_SIM_PERCEPTION_NOISE", "float", 0.0, "oracle noise: fraction of mask pixels set to a random "
            "class, and the disparity's relative per-pixel noise", min=0.0, max=1.0),
    Setting("SO101_SIM_VARIATION", "str", None, "per-episode scene variation, e.g. camera_pos_m=0.005,light_frac=0.3 "
            "(so101_deploy.sim.variation)"),
    Setting("SO101_SIM_EPISODES", "int", 0, "stop stepping after this many finished episodes (0: no limit)", min=0),
    Setting("SO101_SIM_REPORT", "str", None, "append one JSON line per finished episode to this file"),
    Setting("SO101_SIM_VIDEO_DIR", "str", None, "write a short video per episode (wrist camera, and the oracle's "
            "mask and disparity) to this folder"),
)


def runner_from_settings(settings) -> tuple[SimRunner, object | None]:
    """Build the sim arm node's logic from its settings (:data:`SETTINGS`); returns
    (runner, the started :class:`BusProcess` or None).  The caller stops the bus."""
    seed = settings["SO101_SIM_SEED"]
    step_on = settings["SO101_SIM_STEP_ON"]
    render_every = settings["SO101_SIM_RENDER_EVERY"]
    camera = settings["SO101_SIM_CAMERA"]
    oracle = settings["SO101_SIM_ORACLE"]
    link = settings["SO101_SIM_BUS_LINK"]
    # a real arm never teleports, so the bus variant runs one endless episode unless asked
    episode_steps = settings["SO101_SIM_EPISODE_STEPS"]
    if episode_steps is None:
        episode_steps = 0 if link else EPISODE_STEPS
    if link and step_on == "goal":
        raise SettingError(f"{settings.node}: SO101_SIM_STEP_ON=goal needs goal messages; the bus variant "
                           f"(SO101_SIM_BUS_LINK) reads the servo bus instead: use SO101_SIM_STEP_ON=tick")
    latency, every = settings["SO101_SIM_LATENCY_STEPS"], settings["SO101_SIM_ACTION_EVERY"]
    if link and (latency or every != 1):
        raise SettingError(f"{settings.node}: SO101_SIM_LATENCY_STEPS / SO101_SIM_ACTION_EVERY delay the goals of "
                           f"the lockstep sim; the bus variant gets its goals from the servo node in real time")
    if every != 1 and step_on != "goal":
        raise SettingError(f"{settings.node}: SO101_SIM_ACTION_EVERY={every} holds each goal for {every} control "
                           f"steps of a lockstep run: set SO101_SIM_STEP_ON=goal")
    try:
        variation = parse_variation(settings["SO101_SIM_VARIATION"] or "")
    except ValueError as e:
        raise SettingError(f"{settings.node}: SO101_SIM_VARIATION: {e}") from None
    video_dir = settings["SO101_SIM_VIDEO_DIR"]
    sim = SimArm()
    runner = SimRunner(sim, seed=seed, render_every=render_every, episode_steps=episode_steps, camera=camera,
                       oracle=oracle, schedule=ActionSchedule(latency, every),
                       noise=PerceptionNoise(settings["SO101_SIM_PERCEPTION_NOISE"]), variation=variation,
                       episodes=settings["SO101_SIM_EPISODES"], report_path=settings["SO101_SIM_REPORT"],
                       video=EpisodeVideo(video_dir, oracle=oracle) if video_dir else None)
    bus = None
    if link:
        from so101_deploy.arm.calibration import Calibration

        cal_path = settings["SO101_CALIBRATION"]
        try:
            calibration = Calibration.load(cal_path) if cal_path else Calibration.example()
        except (ValueError, OSError) as e:
            raise SettingError(f"{settings.node}: SO101_CALIBRATION: {e}") from e
        ids = [calibration.motor(name).id for name in JOINT_NAMES]
        # the bus starts at the reset pose, so a servo node enabling torque holds it there
        start_steps = dict(zip(ids, calibration.rad_to_steps(sim.joint_state()[0]).tolist()))
        bus = BusProcess(link, cal_path, start_steps).start()
        try:
            runner.bus_bridge = SimBusBridge(sim, bus, calibration)
        except Exception:
            bus.stop()
            raise
    runner.step_on = step_on
    runner.resend_s = settings["SO101_SIM_RESEND_S"]
    return runner, bus
