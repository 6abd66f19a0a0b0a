"""LeRobot calibration JSON -> steps <-> rad (mid-range = 0 rad; gripper anchored at its closed end)."""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from so101_deploy.arm.calibration import GRIPPER_CLOSED_RAD, Calibration, CalibrationError
from so101_deploy.core.messages import JOINT_NAMES


@pytest.fixture
def example_dict():
    return Calibration.example().to_dict()


def test_example_loads_in_joint_order_with_ids_1_to_6():
    cal = Calibration.example()
    assert [m.name for m in cal.motors] == list(JOINT_NAMES)
    assert cal.ids.tolist() == [1, 2, 3, 4, 5, 6]


def test_mid_range_is_zero_rad_and_gripper_min_is_closed():
    cal = Calibration.example()
    mid = (cal.range_min + cal.range_max) / 2
    rad = cal.steps_to_rad(mid)
    assert np.allclose(rad[:5], 0.0)
    assert cal.steps_to_rad(cal.range_min)[5] == pytest.approx(GRIPPER_CLOSED_RAD)


def test_arm_formula_equals_the_pick101_real_robot_conversion():
    # hil-serl-so101 src/deploy/robot.py: rad = (enc - (min+max)/2) / (4096 / 2pi)
    cal = Calibration.example()
    steps = np.array([1000, 3000, 2500, 1200, 100, 2600])
    rad = cal.steps_to_rad(steps)
    for k in range(5):
        m = cal.motors[k]
        assert rad[k] == pytest.approx((steps[k] - (m.range_min + m.range_max) / 2) / (4096 / (2 * math.pi)))
    g = cal.motors[5]
    assert rad[5] == pytest.approx(-0.17453 + (steps[5] - g.range_min) * 2 * math.pi / 4096)


@given(st.lists(st.floats(0, 1), min_size=6, max_size=6))
def test_integer_steps_round_trip_exactly(fractions):
    cal = Calibration.example()
    steps = np.rint(cal.range_min + np.array(fractions) * (cal.range_max - cal.range_min)).astype(np.int64)
    assert cal.rad_to_steps(cal.steps_to_rad(steps)).tolist() == steps.tolist()


def test_drive_mode_1_flips_the_direction(example_dict):
    example_dict["elbow_flex"]["drive_mode"] = 1
    cal = Calibration.from_dict(example_dict)
    m = cal.motor("elbow_flex")
    rad = cal.steps_to_rad(np.array([2000, 2000, m.range_max, 2000, 2000, 2500]))
    assert rad[2] == pytest.approx(-(m.range_max - m.mid_steps) * 2 * math.pi / 4096)
    assert cal.rad_to_steps(rad)[2] == m.range_max


def test_inverse_clips_to_the_calibrated_range_and_rejects_nan():
    cal = Calibration.example()
    steps = cal.rad_to_steps(np.full(6, 10.0))
    assert steps.tolist() == cal.range_max.astype(int).tolist()
    with pytest.raises(ValueError, match="finite"):
        cal.rad_to_steps(np.array([0, 0, np.nan, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        cal.steps_to_rad(np.zeros(5))


def test_limits_rad_are_the_range_ends():
    cal = Calibration.example()
    lo, hi = cal.limits_rad()
    assert np.all(lo < hi)
    assert np.allclose(lo, cal.steps_to_rad(cal.range_min))


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("wrist_flex"), r"missing motor\(s\) \['wrist_flex'\]"),
    (lambda d: d["gripper"].pop("range_max"), "motor 'gripper' lacks field 'range_max'"),
    (lambda d: d["elbow_flex"].update(id=7), "elbow_flex.id must be 3"),
    (lambda d: d["shoulder_lift"].update(range_min=3300), "shoulder_lift: range_min .* must be < range_max"),
    (lambda d: d["wrist_roll"].update(range_max=4096), r"wrist_roll.range_max must be in 0..4095"),
    (lambda d: d["shoulder_pan"].update(homing_offset=-3000), "shoulder_pan.homing_offset must be in"),
    (lambda d: d["shoulder_pan"].update(drive_mode=2), "shoulder_pan.drive_mode must be 0 or 1"),
    (lambda d: d["shoulder_pan"].update(range_min="758"), "shoulder_pan.range_min must be an integer"),
    (lambda d: d.update(elbow={}), r"unknown motor\(s\) \['elbow'\]"),
])
def test_bad_calibrations_name_the_motor_and_field(example_dict, edit, match):
    edit(example_dict)
    with pytest.raises(CalibrationError, match=match):
        Calibration.from_dict(example_dict)


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        Calibration.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"shoulder_pan": {')
    with pytest.raises(CalibrationError, match="not readable JSON"):
        Calibration.load(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(Calibration.example().to_dict()))
    assert Calibration.load(good).to_dict() == Calibration.example().to_dict()
