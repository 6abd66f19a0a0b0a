"""The project's joint units <-> LeRobot's, for dora-hub arm drivers that speak LeRobot units.

LeRobot 0.6.1's SO-101 follower (``use_degrees=True``, the default since 0.4.4) reads and writes
``shoulder_pan.pos`` ... ``wrist_roll.pos`` in **degrees** (``(steps - (range_min+range_max)/2)·360/4095``)
and ``gripper.pos`` in **percent** (RANGE_0_100: ``(clamp(steps, min, max) - min)/(max - min)·100``,
``100 - x`` with drive_mode 1; 0 = closed).  This project's joint_state and goals are radians, the
gripper as its joint angle (:mod:`so101_deploy.arm.calibration`), where joints 1-5 are LeRobot's degrees
× π/180 exactly, so:

* joints 1-5: ``deg = rad · 180/π`` and back, no calibration needed;
* gripper: rad -> the step it stands for (the calibration's closed end and direction, 2π/4096 rad per
  step, not rounded) -> LeRobot's percent of the calibrated range; percent -> step with LeRobot's
  inverse (before its ``int()``) -> rad, clipped to the model's gripper range (a counted event).

The same calibration JSON as the servo node (the arm's LeRobot calibration) makes both sides agree on
the gripper.  A goal outside the calibrated gripper range gives 0 or 100 %, as LeRobot clamps.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from so101_deploy.arm.calibration import GRIPPER, GRIPPER_CLOSED_RAD, GRIPPER_RAD_PER_STEP, Calibration
from so101_deploy.core.messages import JOINT_NAMES, N_JOINTS, MessageError, dora_timestamp_ns, encode, now_ns
from so101_deploy.core.settings import Setting

LEROBOT_NAMES = tuple(f"{j}.pos" for j in JOINT_NAMES)
LEROBOT_UNITS = ("deg",) * (N_JOINTS - 1) + ("percent",)
LEROBOT_ENCODING = "lerobot_pos"
MAX_ABS_DEG = 360.0  # LeRobot's degrees of a 0..4095 range are within ±180: larger is another unit

SETTINGS = (
    Setting("SO101_CALIBRATION", "str", required=True,
            doc="the arm's LeRobot calibration JSON (the hub driver's): the gripper percent <-> rad needs it"),
)


class UnitsError(MessageError):
    """A value in the wrong unit or shape for LeRobot's degrees/percent."""


class LeRobotUnits:
    """rad (this project) <-> LeRobot degrees / gripper percent, for one arm's calibration."""

    def __init__(self, calibration: Calibration):
        self.calibration = calibration
        g = calibration.motors[GRIPPER]
        self._closed = float(g.closed_steps)
        self._dir = -1.0 if g.drive_mode == 1 else 1.0
        self._flip = g.drive_mode == 1
        self._min, self._max = float(g.range_min), float(g.range_max)

    def to_lerobot(self, rad: np.ndarray) -> np.ndarray:
        """Joint angles (6,) rad -> LeRobot (6,): degrees for joints 1-5, gripper percent 0-100."""
        rad = np.asarray(rad, np.float64)
        if rad.shape != (N_JOINTS,) or not np.all(np.isfinite(rad)):
            raise UnitsError(f"to_lerobot: expected {N_JOINTS} finite joint angles (rad), got {rad}")
        out = np.empty(N_JOINTS)
        out[:GRIPPER] = np.rad2deg(rad[:GRIPPER])
        steps = self._closed + self._dir * (rad[GRIPPER] - GRIPPER_CLOSED_RAD) / GRIPPER_RAD_PER_STEP
        pct = (min(max(steps, self._min), self._max) - self._min) / (self._max - self._min) * 100.0
        out[GRIPPER] = 100.0 - pct if self._flip else pct
        return out

    def from_lerobot(self, values: np.ndarray) -> np.ndarray:
        """LeRobot (6,) degrees + gripper percent -> joint angles (6,) rad (gripper clipped to the model)."""
        v = np.asarray(values, np.float64)
        if v.shape != (N_JOINTS,) or not np.all(np.isfinite(v)):
            raise UnitsError(f"from_lerobot: expected {N_JOINTS} finite values {list(LEROBOT_NAMES)}, got {v}")
        if np.any(np.abs(v[:GRIPPER]) > MAX_ABS_DEG):
            raise UnitsError(f"from_lerobot: joints 1-5 must be LeRobot degrees (within ±{MAX_ABS_DEG:g}), got "
                             f"{np.round(v[:GRIPPER], 3).tolist()}; is the driver in radians or steps?")
        if not -1e-6 <= v[GRIPPER] <= 100.0 + 1e-6:
            raise UnitsError(f"from_lerobot: gripper.pos must be LeRobot's percent 0-100, got {v[GRIPPER]}")
        rad = np.empty(N_JOINTS)
        rad[:GRIPPER] = np.deg2rad(v[:GRIPPER])
        pct = 100.0 - v[GRIPPER] if self._flip else v[GRIPPER]
        steps = pct / 100.0 * (self._max - self._min) + self._min
        rad[GRIPPER] = GRIPPER_CLOSED_RAD + self._dir * (steps - self._closed) * GRIPPER_RAD_PER_STEP
        self.calibration._clip_gripper(rad, "reading")
        return rad


class LeRobotAdapter:
    """The adapter node's logic: project goals -> LeRobot-unit goals for a hub driver; the driver's LeRobot
    readings -> the project's joint_state (rad, and rad/s from consecutive readings)."""

    def __init__(self, units: LeRobotUnits):
        self.units = units
        self._last: tuple[np.ndarray, int] | None = None
        self.readings = 0

    def goal(self, goal_rad: np.ndarray, frame_id: int, stamp_ns: int) -> tuple[pa.Array, dict[str, Any]]:
        values = self.units.to_lerobot(goal_rad).astype(np.float32)
        return pa.array(values), {"encoding": LEROBOT_ENCODING, "names": ",".join(LEROBOT_NAMES),
                                  "units": ",".join(LEROBOT_UNITS), "frame_id": int(frame_id),
                                  "stamp_ns": int(stamp_ns), "primitive": "jointstate"}

    def joint_state(self, value: Any, metadata: Mapping[str, Any]) -> tuple[pa.Array, dict[str, Any]]:
        """A hub driver's reading (a numeric Arrow array of 6, LeRobot units) -> an encoded joint_state."""
        if isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        if not isinstance(value, pa.Array) or not (pa.types.is_floating(value.type) or pa.types.is_integer(value.type)):
            raise UnitsError(f"hub joint state: expected a numeric Arrow array of {N_JOINTS} "
                             f"({', '.join(LEROBOT_NAMES)}), got {getattr(value, 'type', type(value).__name__)}")
        if value.null_count or len(value) != N_JOINTS:
            raise UnitsError(f"hub joint state: expected {N_JOINTS} values without nulls, got {len(value)} "
                             f"({value.null_count} null)")
        q = self.units.from_lerobot(value.to_numpy(zero_copy_only=False))
        stamp = metadata.get("stamp_ns")
        if isinstance(stamp, bool) or not isinstance(stamp, (int, np.integer)):
            stamp = dora_timestamp_ns(metadata) or now_ns()
        vel = np.zeros(N_JOINTS)
        if self._last is not None and stamp > self._last[1]:
            vel = (q - self._last[0]) / ((stamp - self._last[1]) / 1e9)
        self._last = (q, int(stamp))
        frame_id = self.readings
        self.readings += 1
        return encode("joint_state", np.stack([q, vel]), frame_id=frame_id, stamp_ns=int(stamp),
                      source="lerobot_adapter")
