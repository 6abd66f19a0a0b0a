"""LeRobot calibration JSON -> steps <-> rad.

Joints 1-5 must give LeRobot 0.6.1's degrees x pi/180; the expectations below are LeRobot's own
formulas (lerobot/motors/motors_bus.py, MotorNormMode.DEGREES, max_res = 4096 - 1) written out
with sample ticks, not the project's code:

    _normalize:    (val - mid) * 360 / max_res                 mid = (min_ + max_) / 2, drive_mode ignored
    _unnormalize:  int((val * max_res / 360) + mid)
"""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import logging

from so101_deploy.arm.calibration import GRIPPER_CLOSED_RAD, GRIPPER_OPEN_RAD, Calibration, CalibrationError
from so101_deploy.core.messages import JOINT_NAMES


@pytest.fixture
def example_dict():
    return Calibration.example().to_dict()


def test_example_loads_in_joint_order_with_ids_1_to_6():
    cal = Calibration.example()
    assert [m.name for m in cal.motors] == list(JOINT_NAMES)
    assert cal.ids.tolist() == [1, 2, 3, 4, 5, 6]


# A calibration as LeRobot 0.6.1's SO101Follower.calibrate() writes it (draccus, indent 4; drive_mode always 0).
LEROBOT_FILE = """{
    "shoulder_pan": {
        "id": 1,
        "drive_mode": 0,
        "homing_offset": -1032,
        "range_min": 713,
        "range_max": 3401
    },
    "shoulder_lift": {
        "id": 2,
        "drive_mode": 0,
        "homing_offset": 988,
        "range_min": 811,
        "range_max": 3200
    },
    "elbow_flex": {
        "id": 3,
        "drive_mode": 0,
        "homing_offset": 1402,
        "range_min": 1000,
        "range_max": 3144
    },
    "wrist_flex": {
        "id": 4,
        "drive_mode": 0,
        "homing_offset": -12,
        "range_min": 857,
        "range_max": 3187
    },
    "wrist_roll": {
        "id": 5,
        "drive_mode": 0,
        "homing_offset": -1560,
        "range_min": 0,
        "range_max": 4095
    },
    "gripper": {
        "id": 6,
        "drive_mode": 0,
        "homing_offset": 1270,
        "range_min": 2022,
        "range_max": 3358
    }
}"""


@pytest.fixture
def lerobot_cal(tmp_path):
    path = tmp_path / "robots" / "so_follower" / "my_arm.json"
    path.parent.mkdir(parents=True)
    path.write_text(LEROBOT_FILE)
    return Calibration.load(path)


def test_a_lerobot_written_calibration_loads_unchanged(lerobot_cal):
    assert lerobot_cal.to_dict() == json.loads(LEROBOT_FILE)


def test_joints_1_to_5_read_lerobot_degrees_times_pi_over_180(lerobot_cal):
    # LeRobot _normalize (DEGREES): (val - mid) * 360 / 4095; mid = (range_min + range_max) / 2
    ticks = np.array([3000, 811, 2572, 1500, 4095, 2500])
    expected_deg = [(3000 - (713 + 3401) / 2) * 360 / 4095,  # shoulder_pan  = 82.9010...
                    (811 - (811 + 3200) / 2) * 360 / 4095,  # shoulder_lift = -105.0109...
                    (2572 - (1000 + 3144) / 2) * 360 / 4095,  # elbow_flex  = 43.9560...
                    (1500 - (857 + 3187) / 2) * 360 / 4095,  # wrist_flex    = -45.8900...
                    (4095 - (0 + 4095) / 2) * 360 / 4095]  # wrist_roll      = 180.0
    assert expected_deg == pytest.approx([82.90110, -105.01099, 43.95604, -45.89011, 180.0], abs=1e-5)
    rad = lerobot_cal.steps_to_rad(ticks)
    assert rad[:5].tolist() == pytest.approx([d * math.pi / 180 for d in expected_deg], abs=1e-12)
    assert rad[4] == pytest.approx(math.pi, abs=1e-12)  # the 4095 scale: the full turn is +-pi exactly


def test_joints_1_to_5_write_lerobot_ticks_truncated(lerobot_cal):
    # LeRobot _unnormalize (DEGREES): int((deg * 4095 / 360) + mid), truncation toward zero
    deg = [10.0, -33.3, 43.97, 0.05, -179.99]
    expected = [int((10.0 * 4095 / 360) + (713 + 3401) / 2),  # 2170 (2170.75)
                int((-33.3 * 4095 / 360) + (811 + 3200) / 2),  # 1626 (1626.70)
                int((43.97 * 4095 / 360) + (1000 + 3144) / 2),  # 2572 (2572.16)
                int((0.05 * 4095 / 360) + (857 + 3187) / 2),  # 2022 (2022.57)
                int((-179.99 * 4095 / 360) + (0 + 4095) / 2)]  # 0 (0.11)
    assert expected == [2170, 1626, 2572, 2022, 0]
    rad = np.array([d * math.pi / 180 for d in deg] + [0.5])
    assert lerobot_cal.rad_to_steps(rad)[:5].tolist() == expected


def test_a_tick_read_and_written_back_is_the_same_tick(lerobot_cal):
    # LeRobot's own deg round trip returns the tick; so must rad (the int() sees float noise below it)
    for k, m in enumerate(lerobot_cal.motors[:5]):
        for tick in range(m.range_min, m.range_max + 1):
            steps = np.array([mm.mid_steps for mm in lerobot_cal.motors])
            steps[k] = tick
            assert lerobot_cal.rad_to_steps(lerobot_cal.steps_to_rad(steps))[k] == tick


def test_drive_mode_1_is_ignored_on_joints_1_to_5_like_lerobot_degrees_mode(caplog):
    data = json.loads(LEROBOT_FILE)
    data["elbow_flex"]["drive_mode"] = 1
    with caplog.at_level(logging.WARNING, logger="so101_deploy.arm.calibration"):
        cal = Calibration.from_dict(data)
    assert "drive_mode 1 on elbow_flex is ignored" in caplog.text
    # tick 2572 on elbow_flex: LeRobot reads 43.956 deg whatever drive_mode says (not -0.767 rad)
    rad = cal.steps_to_rad(np.array([2000, 2000, 2572, 2000, 2000, 2500]))
    assert rad[2] == pytest.approx((2572 - (1000 + 3144) / 2) * 360 / 4095 * math.pi / 180, abs=1e-12)
    assert rad[2] == pytest.approx(0.767178, abs=1e-6)
    assert cal.rad_to_steps(rad)[2] == 2572


def test_mid_range_is_zero_rad_and_gripper_closed_end_is_the_model_limit():
    cal = Calibration.example()
    mid = (cal.range_min + cal.range_max) / 2
    rad = cal.steps_to_rad(mid)
    assert np.allclose(rad[:5], 0.0)
    assert cal.steps_to_rad(cal.range_min)[5] == pytest.approx(GRIPPER_CLOSED_RAD)


def test_gripper_keeps_the_physical_radian_scale_from_its_closed_end(lerobot_cal):
    # LeRobot: RANGE_0_100, 0 = range_min (closed); the project: -0.17453 rad + 2 pi / 4096 per tick
    for tick in (2022, 2500, 3000):
        rad = lerobot_cal.steps_to_rad(np.array([2000, 2000, 2000, 2000, 2000, tick]))[5]
        assert rad == pytest.approx(-0.17453 + (tick - 2022) * 2 * math.pi / 4096, abs=1e-12)
    rad = np.array([0, 0, 0, 0, 0, -0.17453 + 478 * 2 * math.pi / 4096])
    assert lerobot_cal.rad_to_steps(rad)[5] == 2500


def test_gripper_drive_mode_1_puts_the_closed_end_at_range_max(caplog):
    # LeRobot RANGE_0_100 with drive_mode 1: 100 - norm, so 0 (closed) is range_max; the project anchors there
    data = json.loads(LEROBOT_FILE)
    data["gripper"]["drive_mode"] = 1
    with caplog.at_level(logging.WARNING, logger="so101_deploy.arm.calibration"):
        cal = Calibration.from_dict(data)
    assert "ignored" not in caplog.text  # the gripper applies it
    closed = cal.steps_to_rad(np.array([2000, 2000, 2000, 2000, 2000, 3358]))[5]
    part = cal.steps_to_rad(np.array([2000, 2000, 2000, 2000, 2000, 3000]))[5]
    assert closed == pytest.approx(-0.17453)
    assert part == pytest.approx(-0.17453 + (3358 - 3000) * 2 * math.pi / 4096, abs=1e-12)
    assert cal.rad_to_steps(np.array([0, 0, 0, 0, 0, part]))[5] == 3000
    lo, hi = cal.limits_rad()
    assert lo[5] == pytest.approx(GRIPPER_CLOSED_RAD) and hi[5] == pytest.approx(GRIPPER_OPEN_RAD)


def test_gripper_beyond_the_model_limit_is_clipped_with_a_logged_event(lerobot_cal, caplog):
    # range 2022..3358: the open end is -0.17453 + 1336 * 2 pi / 4096 = 1.8749 rad > 1.74533 (MJCF limit)
    with caplog.at_level(logging.WARNING, logger="so101_deploy.arm.calibration"):
        rad = lerobot_cal.steps_to_rad(np.array([2000, 2000, 2000, 2000, 2000, 3358]))
        assert rad[5] == GRIPPER_OPEN_RAD == 1.74533
        assert lerobot_cal.events["gripper_reading_above_limit"] == 1
        assert "gripper 1.8749 rad clipped to the model limit 1.74533 rad" in caplog.text
        steps = lerobot_cal.rad_to_steps(np.array([0, 0, 0, 0, 0, 2.5]))
        assert steps[5] == round(2022 + (1.74533 + 0.17453) * 4096 / (2 * math.pi)) == 3274
        assert lerobot_cal.events["gripper_goal_above_limit"] == 1
        lerobot_cal.steps_to_rad(np.array([2000, 2000, 2000, 2000, 2000, 1900]))  # below the closed end
        assert lerobot_cal.events["gripper_reading_below_limit"] == 1
        caplog.clear()
        for _ in range(8):
            lerobot_cal.steps_to_rad(np.array([2000, 2000, 2000, 2000, 2000, 3358]))
        assert caplog.text == ""  # logged on the 1st, 10th, 100th ...: counted always
        lerobot_cal.steps_to_rad(np.array([2000, 2000, 2000, 2000, 2000, 3358]))
        assert "10 so far" in caplog.text
    assert lerobot_cal.limits_rad()[1][5] == GRIPPER_OPEN_RAD


@given(st.lists(st.floats(0, 1), min_size=6, max_size=6))
def test_integer_steps_round_trip_exactly(fractions):
    cal = Calibration.example()
    steps = np.rint(cal.range_min + np.array(fractions) * (cal.range_max - cal.range_min)).astype(np.int64)
    steps[5] = min(steps[5], 3281)  # the gripper above 2030 + 1251 (1.74533 rad, the MJCF limit) is clipped
    assert cal.rad_to_steps(cal.steps_to_rad(steps)).tolist() == steps.tolist()


def test_inverse_clips_to_the_calibrated_range_and_rejects_nan():
    cal = Calibration.example()
    steps = cal.rad_to_steps(np.full(6, 10.0))
    assert steps[:5].tolist() == cal.range_max[:5].astype(int).tolist()
    assert steps[5] == 3282  # the gripper stops at the MJCF limit first: rint(2030 + 1.91986 * 4096 / 2 pi)
    assert cal.rad_to_steps(np.full(6, -10.0)).tolist() == cal.range_min.astype(int).tolist()
    with pytest.raises(ValueError, match="finite"):
        cal.rad_to_steps(np.array([0, 0, np.nan, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        cal.steps_to_rad(np.zeros(5))


def test_limits_rad_are_the_range_ends():
    cal = Calibration.example()
    lo, hi = cal.limits_rad()
    assert np.all(lo < hi)
    assert np.allclose(lo, cal.steps_to_rad(cal.range_min))
    assert np.allclose(hi[:5], cal.steps_to_rad(cal.range_max)[:5])
    assert hi[5] == GRIPPER_OPEN_RAD  # range_max (3300) is past the MJCF gripper limit


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
