"""LeRobot calibration JSON -> the conversion between servo steps and joint radians.

File format (what LeRobot's ``SO101Follower`` writes, e.g.
``~/.cache/huggingface/lerobot/calibration/robots/so_follower/<id>.json``)::

    {"shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -710, "range_min": 758, "range_max": 3300},
     ... one entry per motor: shoulder_pan, shoulder_lift, elbow_flex, wrist_flex, wrist_roll, gripper}

Convention (the one the training kinematics and the pick-101 real-robot code assume):

* "steps" are Present_Position / Goal_Position register values, 0..4095, 4096 per turn.  They are
  already corrected by the servo with its Homing_Offset (present = encoder - offset mod 4096), so
  ``homing_offset`` is validated and kept but does not enter the conversion.
* Arm joints (ids 1-5): the middle of the calibrated range is 0 rad::

      rad = sign * (steps - (range_min + range_max) / 2) * 2*pi / 4096,   sign = -1 if drive_mode == 1 else +1

* Gripper (id 6): the closed end of the range (``range_min``) is the model's closed limit
  -0.17453 rad (-10 deg); physical scale from there::

      rad = -0.17453 + sign * (steps - range_min) * 2*pi / 4096

The inverse rounds to the nearest step and clips to the calibrated range (a goal outside the range
the servo was calibrated for is never produced).  ``shared/so101_deploy/data/calibration_so101_example.json`` is
an EXAMPLE for tests and the demo, not a real arm's calibration: calibrate yours with LeRobot
(``lerobot-calibrate --robot.type=so101_follower ...``) and point ``SO101_CALIBRATION`` at the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from so101_deploy.core.messages import JOINT_NAMES, N_JOINTS
from so101_deploy.arm.sts3215 import MAX_STEP, STEPS_PER_TURN

RAD_PER_STEP = 2.0 * math.pi / STEPS_PER_TURN
GRIPPER_CLOSED_RAD = -0.17453  # the MJCF gripper lower limit (-10 deg)
MOTOR_IDS = {name: i + 1 for i, name in enumerate(JOINT_NAMES)}  # SO-101: ids 1-6 in joint order
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
    def sign(self) -> int:
        return -1 if self.drive_mode == 1 else 1

    @property
    def mid_steps(self) -> float:
        return (self.range_min + self.range_max) / 2.0


def _int_field(source: str, motor: str, entry: Mapping[str, Any], key: str) -> int:
    if key not in entry:
        raise CalibrationError(f"{source}: motor {motor!r} lacks field {key!r} (needs {list(FIELDS)})")
    v = entry[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise CalibrationError(f"{source}: {motor}.{key} must be an integer, got {v!r}")
    return int(v)


class Calibration:
    """The six motors' calibration, in JOINT_NAMES order, with vectorised steps <-> rad."""

    def __init__(self, motors: list[MotorCalibration], source: str = "<dict>"):
        self.motors = tuple(motors)
        self.source = source
        self.ids = np.array([m.id for m in self.motors], dtype=np.int64)
        self.range_min = np.array([m.range_min for m in self.motors], dtype=np.float64)
        self.range_max = np.array([m.range_max for m in self.motors], dtype=np.float64)
        self.sign = np.array([m.sign for m in self.motors], dtype=np.float64)
        self._is_gripper = np.array([m.name == "gripper" for m in self.motors])
        # steps at which rad == 0 for arm joints; the anchor (range_min) for the gripper
        self._anchor_steps = np.where(self._is_gripper, self.range_min, (self.range_min + self.range_max) / 2.0)
        self._anchor_rad = np.where(self._is_gripper, GRIPPER_CLOSED_RAD, 0.0)

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
    def steps_to_rad(self, steps: np.ndarray) -> np.ndarray:
        """Present/Goal_Position steps (6,) in JOINT_NAMES order -> joint angles (6,) rad."""
        steps = np.asarray(steps, dtype=np.float64)
        if steps.shape != (N_JOINTS,):
            raise ValueError(f"steps_to_rad: expected shape ({N_JOINTS},), got {steps.shape}")
        return self._anchor_rad + self.sign * (steps - self._anchor_steps) * RAD_PER_STEP

    def rad_to_steps(self, rad: np.ndarray) -> np.ndarray:
        """Joint angles (6,) rad -> integer steps (6,), rounded and clipped to the calibrated range."""
        rad = np.asarray(rad, dtype=np.float64)
        if rad.shape != (N_JOINTS,):
            raise ValueError(f"rad_to_steps: expected shape ({N_JOINTS},), got {rad.shape}")
        if not np.isfinite(rad).all():
            raise ValueError(f"rad_to_steps: expected finite angles, got {rad}")
        steps = self._anchor_steps + self.sign * (rad - self._anchor_rad) / RAD_PER_STEP
        return np.clip(np.rint(steps), self.range_min, self.range_max).astype(np.int64)

    def limits_rad(self) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated range of each joint in rad: (lower (6,), upper (6,))."""
        a = self.steps_to_rad(self.range_min)
        b = self.steps_to_rad(self.range_max)
        return np.minimum(a, b), np.maximum(a, b)
