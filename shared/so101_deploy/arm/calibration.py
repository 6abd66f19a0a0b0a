"""LeRobot calibration JSON -> the conversion between servo steps and joint radians.

File format (what LeRobot 0.6.1's ``SO101Follower.calibrate()`` writes with draccus, by default to
``~/.cache/huggingface/lerobot/calibration/robots/so_follower/<id>.json`` -- ``robots/so_follower/``
since LeRobot 0.5; 0.4.x wrote ``robots/so101_follower/<id>.json``; ``$HF_LEROBOT_CALIBRATION`` or
``$HF_LEROBOT_HOME/calibration`` move the root)::

    {"shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -710, "range_min": 758, "range_max": 3300},
     ... one entry per motor: shoulder_pan, shoulder_lift, elbow_flex, wrist_flex, wrist_roll, gripper}

"steps" are Present_Position / Goal_Position register values (4096 per turn).  They are already
corrected by the servo with its Homing_Offset (present = encoder - offset mod 4096), so
``homing_offset`` is validated and kept but does not enter the conversion.

Joints 1-5 (shoulder_pan .. wrist_roll) follow LeRobot 0.6.1 exactly: ``SO101Follower`` drives them
in ``MotorNormMode.DEGREES`` and ``lerobot/motors/motors_bus.py`` converts with
``max_res = model_resolution - 1 = 4095``::

    read:   deg = (val - mid) * 360 / max_res              (mid = (range_min + range_max) / 2; no clamp)
    write:  val = int((deg * max_res / 360) + mid)         (int(): truncation toward zero)

and drive_mode is ignored in that mode (only RANGE_M100_100 / RANGE_0_100 apply it).  Here::

    rad   = deg2rad((steps - mid) * 360 / 4095)             drive_mode ignored (a warning at load)
    steps = clip(int(rad2deg(rad) * 4095 / 360 + mid), range_min, range_max)

so the radians are LeRobot's degrees x pi/180, the values LeRobot's kinematics feed its MJCF.  Two
deliberate details of the inverse: a value within ``SNAP_STEPS`` (1e-6 step) below an integer counts
as that integer (float noise of the rad<->deg round trip: a tick read and written back stays the
same tick, as it does in LeRobot's degree path), and the result is clipped to the calibrated range
(LeRobot sends it unclipped, and the servo clamps it to Min/Max_Position_Limit, which LeRobot wrote
as range_min/range_max -- the same position).

Gripper (id 6): LeRobot uses RANGE_0_100 (0 = closed at range_min, 100 = open at range_max;
drive_mode 1 flips it: ``100 - norm``, closed at range_max).  The policy was trained on joint
radians, so the project keeps its physical mapping, anchored at the closed end LeRobot's 0 is at::

    closed = range_max if drive_mode == 1 else range_min,   direction = -1 if drive_mode == 1 else +1
    rad    = -0.17453 + direction * (steps - closed) * 2*pi / 4096
    steps  = rint(closed + direction * (rad + 0.17453) * 4096 / (2*pi)), clipped to the calibrated range

-0.17453 rad (-10 deg) and 1.74533 rad (100 deg) are the MJCF gripper limits: readings and goals
outside them are clipped to them, each clip counted in :attr:`Calibration.events` and logged
(warning on the 1st, 10th, 100th ... of a kind).

``shared/so101_deploy/data/calibration_so101_example.json`` is an EXAMPLE for tests and the demo, not
a real arm's calibration: calibrate yours with LeRobot (``lerobot-calibrate
--robot.type=so101_follower --robot.port=... --robot.id=<id>``) and point ``SO101_CALIBRATION`` at the
file it writes.
"""

from __future__ import annotations

import collections
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from so101_deploy.core.messages import JOINT_NAMES, N_JOINTS
from so101_deploy.arm.sts3215 import MAX_STEP, STEPS_PER_TURN

log = logging.getLogger(__name__)

LEROBOT_MAX_RES = STEPS_PER_TURN - 1  # LeRobot: model_resolution_table["sts3215"] - 1 = 4095
ARM_RAD_PER_STEP = 2.0 * math.pi / LEROBOT_MAX_RES  # joints 1-5: LeRobot's degrees x pi/180
GRIPPER_RAD_PER_STEP = 2.0 * math.pi / STEPS_PER_TURN  # gripper: the physical 4096 steps per turn
RAD_PER_STEP = ARM_RAD_PER_STEP  # the arm joints' step (the bound used by step limits and tests)
GRIPPER_CLOSED_RAD = -0.17453  # the MJCF gripper lower limit (-10 deg)
GRIPPER_OPEN_RAD = 1.74533  # the MJCF gripper upper limit (100 deg)
SNAP_STEPS = 1e-6  # float noise below an integer step that still counts as that step (see module doc)
MOTOR_IDS = {name: i + 1 for i, name in enumerate(JOINT_NAMES)}  # SO-101: ids 1-6 in joint order
GRIPPER = N_JOINTS - 1
FIELDS = ("id", "drive_mode", "homing_offset", "range_min", "range_max")
EXAMPLE_PATH = Path(__file__).parent.parent / "data" / "calibration_so101_example.json"


class CalibrationError(ValueError):
    """A calibration file that is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class MotorCalibration:
    name: str
    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int

    @property
    def mid_steps(self) -> float:
        return (self.range_min + self.range_max) / 2.0

    @property
    def closed_steps(self) -> int:
        """The gripper's closed end (LeRobot's 0 %): range_min, or range_max with drive_mode 1."""
        return self.range_max if self.drive_mode == 1 else self.range_min


def _int_field(source: str, motor: str, entry: Mapping[str, Any], key: str) -> int:
    if key not in entry:
        raise CalibrationError(f"{source}: motor {motor!r} lacks field {key!r} (needs {list(FIELDS)})")
    v = entry[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise CalibrationError(f"{source}: {motor}.{key} must be an integer, got {v!r}")
    return int(v)


class Calibration:
    """The six motors' calibration, in JOINT_NAMES order, with vectorised steps <-> rad.

    ``events`` counts the gripper values clipped to the MJCF limits (``gripper_reading_above_limit``,
    ``gripper_reading_below_limit``, ``gripper_goal_above_limit``, ``gripper_goal_below_limit``)."""

    def __init__(self, motors: list[MotorCalibration], source: str = "<dict>"):
        self.motors = tuple(motors)
        self.source = source
        self.ids = np.array([m.id for m in self.motors], dtype=np.int64)
        self.range_min = np.array([m.range_min for m in self.motors], dtype=np.float64)
        self.range_max = np.array([m.range_max for m in self.motors], dtype=np.float64)
        self.mid = (self.range_min + self.range_max) / 2.0
        g = self.motors[GRIPPER]
        self._g_closed = float(g.closed_steps)
        self._g_dir = -1.0 if g.drive_mode == 1 else 1.0
        self.events: collections.Counter[str] = collections.Counter()
        ignored = [m.name for m in self.motors[:GRIPPER] if m.drive_mode == 1]
        if ignored:
            log.warning("%s: drive_mode 1 on %s is ignored, as LeRobot 0.6.1 ignores it for joints in degrees "
                        "mode (SO101Follower use_degrees=True)", source, ", ".join(ignored))

    def _event(self, kind: str, value: float) -> None:
        self.events[kind] += 1
        n = self.events[kind]
        if n >= 1 and math.log10(n).is_integer():  # 1st, 10th, 100th, ...
            limit = GRIPPER_OPEN_RAD if "above" in kind else GRIPPER_CLOSED_RAD
            log.warning("%s: gripper %.4f rad clipped to the model limit %.5f rad (%s, %d so far)",
                        self.source, value, limit, kind, n)

    # --- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> "Calibration":
        if not isinstance(data, Mapping):
            raise CalibrationError(f"{source}: expected a JSON object {{motor: {{...}}}}, got {type(data).__name__}")
        missing = [n for n in JOINT_NAMES if n not in data]
        if missing:
            raise CalibrationError(f"{source}: missing motor(s) {missing}; an SO-101 calibration needs "
                                   f"{list(JOINT_NAMES)}")
        unknown = sorted(set(data) - set(JOINT_NAMES))
        if unknown:
            raise CalibrationError(f"{source}: unknown motor(s) {unknown}; expected {list(JOINT_NAMES)}")
        motors = []
        for name in JOINT_NAMES:
            entry = data[name]
            if not isinstance(entry, Mapping):
                raise CalibrationError(f"{source}: motor {name!r} must be an object with {list(FIELDS)}")
            vals = {k: _int_field(source, name, entry, k) for k in FIELDS}
            if vals["id"] != MOTOR_IDS[name]:
                raise CalibrationError(f"{source}: {name}.id must be {MOTOR_IDS[name]} (SO-101 ids 1-6 in "
                                       f"joint order), got {vals['id']}")
            if vals["drive_mode"] not in (0, 1):
                raise CalibrationError(f"{source}: {name}.drive_mode must be 0 or 1, got {vals['drive_mode']}")
            if not -2047 <= vals["homing_offset"] <= 2047:
                raise CalibrationError(f"{source}: {name}.homing_offset must be in -2047..2047 (11-bit "
                                       f"sign-magnitude), got {vals['homing_offset']}")
            for k in ("range_min", "range_max"):
                if not 0 <= vals[k] <= MAX_STEP:
                    raise CalibrationError(f"{source}: {name}.{k} must be in 0..{MAX_STEP} steps, got {vals[k]}")
            if vals["range_min"] >= vals["range_max"]:
                raise CalibrationError(f"{source}: {name}: range_min ({vals['range_min']}) must be < range_max "
                                       f"({vals['range_max']})")
            motors.append(MotorCalibration(name=name, **vals))
        return cls(motors, source)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"calibration file {path} not found (expected a LeRobot calibration JSON "
                                   f"{{motor: {{id, drive_mode, homing_offset, range_min, range_max}}}})")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CalibrationError(f"calibration file {path} is not readable JSON: {e}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def example(cls) -> "Calibration":
        """The example calibration shipped for tests and the demo (not a real arm's)."""
        return cls.load(EXAMPLE_PATH)

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {m.name: {k: v for k, v in asdict(m).items() if k != "name"} for m in self.motors}

    def motor(self, name_or_id: str | int) -> MotorCalibration:
        for m in self.motors:
            if m.name == name_or_id or m.id == name_or_id:
                return m
        raise KeyError(f"no motor {name_or_id!r} in calibration {self.source}")

    # --- conversion ------------------------------------------------------------------------------
    def _steps_to_rad_unclipped(self, steps: np.ndarray) -> np.ndarray:
        rad = np.empty(N_JOINTS, dtype=np.float64)
        # joints 1-5: LeRobot's DEGREES normalisation, (val - mid) * 360 / max_res, then x pi/180
        rad[:GRIPPER] = np.deg2rad((steps[:GRIPPER] - self.mid[:GRIPPER]) * 360.0 / LEROBOT_MAX_RES)
        rad[GRIPPER] = GRIPPER_CLOSED_RAD + self._g_dir * (steps[GRIPPER] - self._g_closed) * GRIPPER_RAD_PER_STEP
        return rad

    def steps_to_rad(self, steps: np.ndarray) -> np.ndarray:
        """Present/Goal_Position steps (6,) in JOINT_NAMES order -> joint angles (6,) rad.  A gripper
        reading outside the MJCF range is clipped to it (counted in ``events``, logged)."""
        steps = np.asarray(steps, dtype=np.float64)
        if steps.shape != (N_JOINTS,):
            raise ValueError(f"steps_to_rad: expected shape ({N_JOINTS},), got {steps.shape}")
        rad = self._steps_to_rad_unclipped(steps)
        self._clip_gripper(rad, "reading")
        return rad

    def _clip_gripper(self, rad: np.ndarray, what: str) -> None:
        """Clip the gripper angle (in place) to the MJCF range; each clip is an event
        (``gripper_{what}_above_limit`` / ``_below_limit``)."""
        g = rad[GRIPPER]
        if g > GRIPPER_OPEN_RAD:
            self._event(f"gripper_{what}_above_limit", g)
            rad[GRIPPER] = GRIPPER_OPEN_RAD
        elif g < GRIPPER_CLOSED_RAD:
            self._event(f"gripper_{what}_below_limit", g)
            rad[GRIPPER] = GRIPPER_CLOSED_RAD

    def rad_to_steps(self, rad: np.ndarray) -> np.ndarray:
        """Joint angles (6,) rad -> integer steps (6,) inside the calibrated range: LeRobot's int()
        for joints 1-5, the nearest step for the gripper (first clipped to the MJCF range, an event)."""
        rad = np.array(rad, dtype=np.float64)
        if rad.shape != (N_JOINTS,):
            raise ValueError(f"rad_to_steps: expected shape ({N_JOINTS},), got {rad.shape}")
        if not np.isfinite(rad).all():
            raise ValueError(f"rad_to_steps: expected finite angles, got {rad}")
        self._clip_gripper(rad, "goal")
        steps = np.empty(N_JOINTS, dtype=np.float64)
        # joints 1-5: LeRobot's int((deg * max_res / 360) + mid), deg = rad x 180/pi
        x = (np.rad2deg(rad[:GRIPPER]) * LEROBOT_MAX_RES / 360.0) + self.mid[:GRIPPER]
        steps[:GRIPPER] = np.trunc(x + SNAP_STEPS)
        steps[GRIPPER] = np.rint(self._g_closed + self._g_dir * (rad[GRIPPER] - GRIPPER_CLOSED_RAD)
                                 / GRIPPER_RAD_PER_STEP)
        return np.clip(steps, self.range_min, self.range_max).astype(np.int64)

    def limits_rad(self) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated range of each joint in rad: (lower (6,), upper (6,)); the gripper's inside the
        MJCF range (its closed end is -0.17453 rad by construction)."""
        a = self._steps_to_rad_unclipped(self.range_min)
        b = self._steps_to_rad_unclipped(self.range_max)
        lower, upper = np.minimum(a, b), np.maximum(a, b)
        lower[GRIPPER] = max(lower[GRIPPER], GRIPPER_CLOSED_RAD)
        upper[GRIPPER] = min(upper[GRIPPER], GRIPPER_OPEN_RAD)
        return lower, upper
