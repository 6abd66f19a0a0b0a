"""Policy actions -> joint goals (rad), and the controller node's logic (:class:`ControlLoop`).

Two action spaces (``action.metadata.action_space``):

``cartesian`` (the real pick-101 checkpoint, 4-D ``[dx, dy, dz, gripper]``)
    exactly the training env (``LiftCubeCartesianEnv``): ``a = clip(a, -1, 1)``;
    ``target += a[:3] * 0.02 m`` (world frame: x forward, y left, z up), clamped to the workspace
    x [0.1, 0.5], y [-0.3, 0.3], z [0.01, 0.4] m; ONE damped-least-squares IK step on the
    ``gripperframe`` site from the present joints with gain 0.5; gripper
    ``(a3 + 1)/2 * (1.74533 + 0.17453) - 0.17453`` rad.  The target is an integrator initialised
    from the gripperframe position of the present pose at :meth:`CartesianController.reset`.

    *IK from measured joints*: the simulator ran the IK step from ``data.qpos`` (the measured state
    after physics), and pick-101's real script from the measured servo positions, so the step
    starts from the latest ``joint_state``, never from the last commanded goal.  With gain 0.5 this
    is a proportional servo on the target: if the arm lags, the next step still pulls toward the
    target rather than accumulating commands the arm never executed.

``joint_delta`` (the hand-off's 6-D form)
    ``goal = present + clip(a, -1, 1) * scale_rad`` for all six joints (gripper included).

:class:`ControlLoop` wires a controller to :class:`~so101_deploy.arm.safety.SafetyFilter`: nothing
is emitted before the first joint reading (the slow start needs the present pose); an action is
refused when the latest joint reading is older than the watchdog time (IK would steer from a stale
pose); every goal, including watchdog holds, goes through the filter.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from so101_deploy.arm.kinematics import N_ARM, Kinematics, gripper_action_to_rad
from so101_deploy.core.messages import ACTION_SPACES, JOINT_NAMES, N_JOINTS
from so101_deploy.core.settings import Setting, SettingError
from so101_deploy.arm.estop import WIRING_SETTING as ESTOP_WIRING_SETTING
from so101_deploy.arm.safety import JointLimits, SafetyFilter

WRIST_ROLL = JOINT_NAMES.index("wrist_roll")
MODES = ("auto", "cartesian", "joint_delta")
# Per-goal bound: 0.1 rad per 20 ms step is ~5 rad/s, about the STS3215's no-load speed, so it
# never slows a 50 Hz pipeline yet stops a wild goal; the gripper gets 0.35 so open<->close
# (1.92 rad) takes ~6 goals instead of 20.
DEFAULT_MAX_STEP_RAD = "0.1,0.1,0.1,0.1,0.1,0.35"
MAX_PER_STEP_RAD = 0.5  # no setting may allow more per step (25 rad/s at 50 Hz is already absurd)
# e-stop message values (schema "estop")
ESTOP_RELEASED, ESTOP_HOLD, ESTOP_RELEASE_TORQUE = 0, 1, 2


class ControllerError(ValueError):
    """An action or joint reading the controller cannot use (wrong shape, wrong action space)."""


def _present(q_present_rad: np.ndarray) -> np.ndarray:
    q = np.asarray(q_present_rad, dtype=np.float64)
    if q.shape != (N_JOINTS,):
        raise ControllerError(f"q_present_rad: expected {N_JOINTS} joint angles {JOINT_NAMES}, got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ControllerError(f"q_present_rad: expected finite joint angles, got {q.tolist()}")
    return q


def _action(action: np.ndarray, dim: int, space: str) -> np.ndarray:
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (dim,):
        raise ControllerError(f"{space} action: expected shape ({dim},), got {a.shape}")
    return a


@dataclass(frozen=True)
class Workspace:
    """Box the Cartesian target is clamped to (m, world frame), training's values."""

    lower_m: tuple[float, float, float] = (0.1, -0.3, 0.01)
    upper_m: tuple[float, float, float] = (0.5, 0.3, 0.4)

    def clamp(self, p_m: np.ndarray) -> np.ndarray:
        return np.clip(p_m, self.lower_m, self.upper_m)


class CartesianController:
    """4-D Cartesian actions -> joint goals, as the pick-101 training env integrated them."""

    action_space = "cartesian"

    def __init__(self, kin: Kinematics, action_scale_m: float = 0.02, workspace: Workspace = Workspace(),
                 damping: float = 0.1, max_dq_rad: float = 0.5, gain: float = 0.5, lock_wrist: bool = False,
                 wrist_lock_rad: float = math.pi / 2):
        for name, v in (("action_scale_m", action_scale_m), ("damping", damping), ("max_dq_rad", max_dq_rad),
                        ("gain", gain), ("wrist_lock_rad", wrist_lock_rad)):
            if not math.isfinite(v):
                raise ControllerError(f"CartesianController: {name} must be finite, got {v}")
        if action_scale_m <= 0 or damping < 0 or max_dq_rad <= 0 or gain <= 0:
            raise ControllerError("CartesianController: action_scale_m, max_dq_rad and gain must be > 0, damping >= 0")
        self.kin = kin
        self.action_scale_m = float(action_scale_m)
        self.workspace = workspace
        self.damping = float(damping)
        self.max_dq_rad = float(max_dq_rad)
        self.gain = float(gain)
        self.lock_wrist = bool(lock_wrist)
        self.wrist_lock_rad = float(wrist_lock_rad)
        self.target_m: np.ndarray | None = None

    @property
    def ready(self) -> bool:
        return self.target_m is not None

    def reset(self, q_present_rad: np.ndarray) -> None:
        """Start the target integrator at the gripperframe position of the present pose."""
        self.target_m = self.kin.site_pose(_present(q_present_rad))[0]

    def step(self, action: np.ndarray, q_present_rad: np.ndarray) -> np.ndarray:
        """One policy action -> goal (6,) rad.  A non-finite action leaves the target untouched and
        returns an all-NaN goal, which the safety filter rejects (hold)."""
        a = _action(action, 4, "cartesian")
        q = _present(q_present_rad)
        if self.target_m is None:
            raise ControllerError("CartesianController: reset(q_present_rad) first (the target starts at the "
                                  "present gripperframe position)")
        if not np.all(np.isfinite(a)):
            return np.full(N_JOINTS, np.nan)
        a = np.clip(a, -1.0, 1.0)
        self.target_m = self.workspace.clamp(self.target_m + a[:3] * self.action_scale_m)
        q_ik = q.copy()
        locked: tuple[int, ...] = ()
        if self.lock_wrist:
            # training's step() locks only wrist_roll, at pi/2
            q_ik[WRIST_ROLL] = self.wrist_lock_rad
            locked = (WRIST_ROLL,)
        goal = np.empty(N_JOINTS)
        goal[:N_ARM] = self.kin.ik_step(q_ik, self.target_m, damping=self.damping, max_dq_rad=self.max_dq_rad,
                                        gain=self.gain, locked=locked)
        goal[N_ARM] = gripper_action_to_rad(a[3])
        return goal


class JointDeltaController:
    """6-D joint-delta actions: ``goal = present + clip(a, -1, 1) * scale_rad``."""

    action_space = "joint_delta"

    def __init__(self, scale_rad: np.ndarray | float):
        scale = np.broadcast_to(np.asarray(scale_rad, dtype=np.float64), (N_JOINTS,)).copy() \
            if np.ndim(scale_rad) == 0 else np.asarray(scale_rad, dtype=np.float64)
        if scale.shape != (N_JOINTS,) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ControllerError(f"JointDeltaController: scale_rad must be one positive number or {N_JOINTS} "
                                  f"of them, got {scale_rad!r}")
        self.scale_rad = scale
        self.ready = True

    def reset(self, q_present_rad: np.ndarray) -> None:
        _present(q_present_rad)  # stateless; kept for a uniform interface

    def step(self, action: np.ndarray, q_present_rad: np.ndarray) -> np.ndarray:
        a = _action(action, 6, "joint_delta")
        q = _present(q_present_rad)
        if not np.all(np.isfinite(a)):
            return np.full(N_JOINTS, np.nan)
        return q + np.clip(a, -1.0, 1.0) * self.scale_rad


@dataclass
class Output:
    """What the controller node sends: a goal (rad) and why."""

    goal_rad: np.ndarray
    events: list[str]
    mode: str
    source: str  # "action" or "watchdog"
    requested_rad: np.ndarray | None = None  # the goal before the safety filter (from an action)
    target_m: np.ndarray | None = None  # the Cartesian target the goal steers to (cartesian actions)


@dataclass
class ControlLoop:
    """The controller node's logic, free of dora: feed it joint states, actions, ticks, e-stops.

    ``mode``: "cartesian" / "joint_delta" accept only that action space (a mismatch raises
    :class:`ControllerError`); "auto" follows each action's ``action_space``.
    """

    safety: SafetyFilter
    cartesian: CartesianController | None = None
    joint_delta: JointDeltaController | None = None
    mode: str = "auto"
    joint_state_timeout_s: float | None = None  # None: the safety filter's watchdog_s
    present_rad: np.ndarray | None = field(default=None, init=False)
    present_s: float | None = field(default=None, init=False)
    _active: str | None = field(default=None, init=False)
    _needs_reset: bool = field(default=True, init=False)
    _restarted: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ControllerError(f"control mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.mode == "cartesian" and self.cartesian is None:
            raise ControllerError("mode 'cartesian' needs a CartesianController")
        if self.mode == "joint_delta" and self.joint_delta is None:
            raise ControllerError("mode 'joint_delta' needs a JointDeltaController")

    def on_joint_state(self, joint_state: np.ndarray, now_s: float) -> None:
        """A (2, 6) joint_state (row 0 rad) or a (6,) pose; the first one starts the safety filter."""
        js = np.asarray(joint_state, dtype=np.float64)
        if js.shape not in ((2, N_JOINTS), (N_JOINTS,)):
            raise ControllerError(f"joint_state: expected (2, {N_JOINTS}) [rad; rad/s] or ({N_JOINTS},) rad, "
                                  f"got shape {js.shape}")
        q = _present(js[0] if js.ndim == 2 else js)
        self.present_rad = q.copy()
        self.present_s = float(now_s)
        if not self.safety.started:
            self.safety.reset(q, now_s)

    def restart(self, joint_state: np.ndarray, now_s: float) -> None:
        """A new episode (the simulator reset the scene): start the safety filter and the Cartesian
        target again from this joint state, as the training env re-initialised its target at reset."""
        self.on_joint_state(joint_state, now_s)
        self.safety.reset(self.present_rad, now_s)
        self._needs_reset = True
        self._restarted = True  # the next goal says so: its step counts from the new pose

    def _output(self, goal: np.ndarray, events: list[str], mode: str, source: str) -> Output:
        if self._restarted:
            events = ["episode_restart", *events]
            self._restarted = False
        return Output(goal, events, mode, source)

    def on_estop(self, value: int, now_s: float | None = None) -> None:
        """E-stop message value: 0 released; 1 (hold) or 2 (servo releases torque) both hold the goal.
        Clearing it restarts the target and the safety filter from the present pose (the arm may have
        sagged while limp), with the slow start: never back toward the goal held before."""
        engaged = int(value) != ESTOP_RELEASED
        was = self.safety.estop_engaged
        self.safety.estop(engaged)
        if was and not engaged:
            self._needs_reset = True  # the Cartesian target restarts from where the arm is now
            if self.present_rad is not None and now_s is not None:
                self.safety.reset(self.present_rad, now_s)

    def on_action(self, action: np.ndarray, action_space: str, now_s: float) -> Output | None:
        """One policy action -> the safe goal to send, or None before the first joint reading."""
        if action_space not in ACTION_SPACES:
            raise ControllerError(f"action_space must be one of {list(ACTION_SPACES)}, got {action_space!r}")
        if self.mode != "auto" and action_space != self.mode:
            raise ControllerError(f"action_space {action_space!r} does not match the configured control mode "
                                  f"{self.mode!r} (SO101_CONTROL_MODE); set it to {action_space!r} or 'auto'")
        if self.present_rad is None:
            return None
        timeout_s = self.safety.watchdog_s if self.joint_state_timeout_s is None else self.joint_state_timeout_s
        if now_s - self.present_s > timeout_s:
            # IK from a stale pose would steer blind: drop the action, the watchdog holds
            raise ControllerError(f"no fresh joint_state for {now_s - self.present_s:.2f} s (> {timeout_s} s): "
                                  f"action not used; is the servo/sim node running?")
        ctrl = self._controller(action_space)
        if self.safety.watchdog_holding or self._active != action_space:
            self._needs_reset = True
        if self._needs_reset:
            ctrl.reset(self.present_rad)
            self._needs_reset = False
            self._active = action_space
        goal = ctrl.step(action, self.present_rad)
        safe, events = self.safety.filter(goal, now_s)
        out = self._output(safe, events, action_space, "action")
        out.requested_rad = np.array(goal, dtype=np.float64)
        target = getattr(ctrl, "target_m", None)
        out.target_m = None if target is None else np.array(target, dtype=np.float64)
        return out

    def on_tick(self, now_s: float) -> Output | None:
        """Watchdog tick: a hold goal when actions stopped, else None."""
        if self.present_rad is None:
            return None
        goal, events = self.safety.on_tick(self.present_rad, now_s)
        if goal is None:
            return None
        return self._output(goal, events, self._active or self.mode, "watchdog")

    def _controller(self, space: str):
        ctrl = self.cartesian if space == "cartesian" else self.joint_delta
        if ctrl is None:
            raise ControllerError(f"no controller configured for action_space {space!r}")
        return ctrl


@dataclass
class HopTimes:
    """Policy -> controller transit times (ms) from the action's ``sent_ns`` and the receipt time here: a
    one-way latency over a machine boundary only when both clocks agree (one machine, or chrony/PTP)."""

    ms: list = field(default_factory=list)

    def add(self, meta, now_ns: int) -> None:
        sent = meta.get("sent_ns")
        if isinstance(sent, (int, np.integer)) and not isinstance(sent, bool) and sent > 0:
            self.ms.append((now_ns - int(sent)) / 1e6)

    def summary(self) -> dict:
        if not self.ms:
            return {"n": 0}
        return {"n": len(self.ms), "p50": round(float(np.percentile(self.ms, 50)), 3),
                "p90": round(float(np.percentile(self.ms, 90)), 3)}


def explain_meta(out: Output) -> dict[str, str]:
    """The goal's ``requested_rad`` (before the safety filter) and ``target_m`` as comma-separated numbers
    (metadata values every dora node and the recorder keep as they are); a non-finite one is left out."""
    meta = {}
    for key, v in (("requested_rad", out.requested_rad), ("target_m", out.target_m)):
        if v is not None and np.all(np.isfinite(v)):
            meta[key] = ",".join(f"{float(x):.6f}" for x in v)
    return meta


def limits_with_calibration(kin: Kinematics, calibration_path: str | None) -> JointLimits:
    """The model's joint ranges, tightened by a LeRobot calibration's ranges when one is given."""
    limits = JointLimits.from_model(kin)
    if calibration_path:
        from so101_deploy.arm.calibration import Calibration

        lower, upper = Calibration.load(calibration_path).limits_rad()
        limits = limits.intersect(JointLimits(lower, upper))
    return limits


SETTINGS = (
    ESTOP_WIRING_SETTING,
    Setting("SO101_CONTROL_MODE", "choice", "auto", "auto (from the action's space), cartesian (4-D) or "
            "joint_delta (6-D)", choices=MODES),
    Setting("SO101_CALIBRATION", "str", None, "the arm's LeRobot calibration JSON: its ranges tighten the joint "
            "limits"),
    Setting("SO101_MAX_STEP_RAD", "str", DEFAULT_MAX_STEP_RAD, "largest change of a goal per step (rad): one "
            "number or one per joint, comma separated"),
    Setting("SO101_WATCHDOG_S", "float", 0.5, "no action for this long -> hold the present pose", min=0.02, max=10.0),
    Setting("SO101_SLOW_START_S", "float", 1.0, "ramp from the present pose at start and after a hold",
            min=0.0, max=30.0),
    Setting("SO101_ACTION_SCALE_M", "float", 0.02, "Cartesian target move per unit of action (m)", min=0.001,
            max=0.1),
    Setting("SO101_IK_GAIN", "float", 0.5, "fraction of the IK step applied per action (training: 0.5)",
            min=0.01, max=1.0),
    Setting("SO101_LOCK_WRIST", "bool", False, "hold wrist_roll at SO101_WRIST_LOCK_RAD"),
    Setting("SO101_WRIST_LOCK_RAD", "float", math.pi / 2, "wrist_roll angle when locked (within its joint range)"),
    Setting("SO101_JOINT_DELTA_SCALE_RAD", "str", "0.05", "joint-delta mode: rad per unit of action, one number "
            "or one per joint"),
    Setting("SO101_CLOCK", "choice", "wall", "the safety filter's time (slow start, watchdog): wall (a real arm) "
            "or sim (the simulated time in the sim arm's joint_state, so a lockstep run is reproducible)",
            choices=("wall", "sim")),
    Setting("SO101_MAX_ACTION_AGE_S", "float", 0.0, "drop an action computed from a camera frame captured longer "
            "ago than this (the camera on this machine: both times from its clock); 0: off", min=0.0, max=60.0),
)


class ControllerClock:
    """The time the safety filter runs on.  ``wall``: this machine's monotonic clock (a real arm).  ``sim``:
    the simulated time the sim arm sends with each joint_state (``sim_time_s``), so the slow-start ramp and
    the watchdog count control steps, not how fast this machine renders: a lockstep evaluation is then
    reproducible, and a loop that stalls stalls the simulated time too (no hold in lockstep)."""

    def __init__(self, source: str = "wall"):
        if source not in ("wall", "sim"):
            raise ValueError(f"clock: expected 'wall' or 'sim', got {source!r}")
        self.source = source
        self._sim_s = 0.0

    def on_joint_state(self, meta) -> None:
        if self.source != "sim":
            return
        t = meta.get("sim_time_s")
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not math.isfinite(t):
            raise ControllerError(f"SO101_CLOCK=sim: expected the joint_state's metadata sim_time_s (finite seconds, "
                                  f"sent by the sim arm), got {t!r}; a real arm runs with SO101_CLOCK=wall")
        self._sim_s = max(self._sim_s, float(t))  # never backwards (a late or repeated state)

    def now(self) -> float:
        return time.monotonic() if self.source == "wall" else self._sim_s


@dataclass
class ActionAgeGate:
    """Drops actions whose camera frame is too old when they arrive (``SO101_MAX_ACTION_AGE_S``).

    With perception and policy on another machine, a link that stalls and catches up delivers actions
    computed from frames seconds old; the receipt-time watchdog would call them fresh.  The age is the
    controller's clock now minus the frame's capture stamp: the camera runs on the robot computer, so both
    are readings of the same machine's clock, never the GPU host's.  A dropped action refreshes nothing,
    so the watchdog holds.  ``check`` returns (use it, a log line when dropping starts or stops)."""

    max_age_s: float = 0.0
    dropped: int = 0
    _dropping: bool = False

    def check(self, stamp_ns: int, now_ns: int, frame_id: int) -> tuple[bool, str | None]:
        if self.max_age_s <= 0:
            return True, None
        age_s = (now_ns - stamp_ns) / 1e9
        if age_s > self.max_age_s:
            self.dropped += 1
            line = None if self._dropping else (f"dropping actions: frame {frame_id} was captured {age_s:.2f} s ago "
                                                f"(> SO101_MAX_ACTION_AGE_S={self.max_age_s:g}); the watchdog holds")
            self._dropping = True
            return False, line
        line = f"actions fresh again after {self.dropped} dropped" if self._dropping else None
        self._dropping = False
        return True, line


def _float_list(settings, key: str) -> np.ndarray:
    """A setting that is one number (all joints) or one per joint, comma separated."""
    raw = settings[key]
    try:
        values = np.array([float(x) for x in raw.split(",")], dtype=np.float64)
    except ValueError:
        raise SettingError(f"{settings.node}: {key}={raw!r} must be a number or {N_JOINTS} comma-separated "
                           f"numbers ({', '.join(JOINT_NAMES)})") from None
    if values.shape not in ((1,), (N_JOINTS,)) or not np.all(np.isfinite(values)) or np.any(values <= 0) \
            or np.any(values > MAX_PER_STEP_RAD):
        raise SettingError(f"{settings.node}: {key}={raw!r} must be one number in (0, {MAX_PER_STEP_RAD}] or "
                           f"{N_JOINTS} of them ({', '.join(JOINT_NAMES)})")
    return np.broadcast_to(values, (N_JOINTS,)).copy()


def control_loop_from_settings(settings, kin: Kinematics | None = None) -> ControlLoop:
    """Build the controller node's logic from its settings (:data:`SETTINGS`)."""
    kin = kin if kin is not None else Kinematics()
    try:
        limits = limits_with_calibration(kin, settings["SO101_CALIBRATION"])
    except (ValueError, OSError) as e:
        raise SettingError(f"{settings.node}: SO101_CALIBRATION: {e}") from e
    wrist_lo, wrist_hi = float(kin.lower_rad[WRIST_ROLL]), float(kin.upper_rad[WRIST_ROLL])
    wrist_lock_rad = settings["SO101_WRIST_LOCK_RAD"]
    if not wrist_lo <= wrist_lock_rad <= wrist_hi:
        raise SettingError(f"{settings.node}: SO101_WRIST_LOCK_RAD={wrist_lock_rad!r} must be in "
                           f"[{wrist_lo}, {wrist_hi}]")
    safety = SafetyFilter(limits, _float_list(settings, "SO101_MAX_STEP_RAD"), settings["SO101_WATCHDOG_S"],
                          slow_start_s=settings["SO101_SLOW_START_S"])
    cartesian = CartesianController(kin, action_scale_m=settings["SO101_ACTION_SCALE_M"],
                                    gain=settings["SO101_IK_GAIN"], lock_wrist=settings["SO101_LOCK_WRIST"],
                                    wrist_lock_rad=wrist_lock_rad)
    joint_delta = JointDeltaController(_float_list(settings, "SO101_JOINT_DELTA_SCALE_RAD"))
    return ControlLoop(safety, cartesian, joint_delta, mode=settings["SO101_CONTROL_MODE"])
