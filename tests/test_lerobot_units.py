"""The degrees/percent adapter for dora-hub arm drivers (nodes/lerobot_adapter, so101_deploy.arm.lerobot_units),
checked against LeRobot 0.6.1's normalisation formulas (written out here from its code, see
../shared/reference/servo-feetech-sts3215.md section 4) and, where LeRobot's own venv is there, LeRobot itself."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json

import numpy as np
import pyarrow as pa
import pytest

from so101_deploy.arm.calibration import GRIPPER_CLOSED_RAD, GRIPPER_OPEN_RAD, Calibration
from so101_deploy.arm.lerobot_units import LEROBOT_NAMES, LeRobotUnits, UnitsError
from so101_deploy.core.messages import encode
from so101_deploy.core.recording import ReplayNode
from conftest import LEROBOT_CAL, REPO_ROOT

CAL = LEROBOT_CAL
FLIPPED = {**CAL, "gripper": {**CAL["gripper"], "drive_mode": 1}}


# LeRobot 0.6.1, SerialMotorsBus._normalize / _unnormalize (DEGREES for joints 1-5, RANGE_0_100 for the gripper)
def lerobot_normalize(name: str, steps: float, cal: dict) -> float:
    c = cal[name]
    lo, hi = c["range_min"], c["range_max"]
    if name != "gripper":
        return (steps - (lo + hi) / 2) * 360 / 4095
    norm = (min(max(steps, lo), hi) - lo) / (hi - lo) * 100
    return 100 - norm if c["drive_mode"] else norm


def lerobot_unnormalize(name: str, value: float, cal: dict) -> int:
    c = cal[name]
    lo, hi = c["range_min"], c["range_max"]
    if name != "gripper":
        return int(value * 4095 / 360 + (lo + hi) / 2)
    value = 100 - value if c["drive_mode"] else value
    return int(min(max(value, 0), 100) / 100 * (hi - lo) + lo)


def _gripper_steps_in_model_range(cal: Calibration) -> list[int]:
    g = cal.motors[-1]
    return [s for s in range(g.range_min, g.range_max + 1, 37)
            if GRIPPER_CLOSED_RAD <= cal._steps_to_rad_unclipped(np.array([0, 0, 0, 0, 0, s], float))[5] <= GRIPPER_OPEN_RAD]


@pytest.mark.parametrize("cal_dict", [CAL, FLIPPED], ids=["drive_mode0", "gripper_drive_mode1"])
def test_readings_match_lerobot_s_degrees_and_percent(cal_dict):
    """What the servo node reads as rad, converted here, is what LeRobot's driver reports for the same steps."""
    cal = Calibration.from_dict(cal_dict)
    units = LeRobotUnits(cal)
    rng = np.random.default_rng(0)
    names = list(cal_dict)
    grip = _gripper_steps_in_model_range(cal)
    assert len(grip) > 20
    for _ in range(200):
        steps = np.array([rng.integers(cal_dict[n]["range_min"], cal_dict[n]["range_max"] + 1) for n in names[:5]]
                         + [rng.choice(grip)], float)
        ours = units.to_lerobot(cal.steps_to_rad(steps))
        theirs = [lerobot_normalize(n, s, cal_dict) for n, s in zip(names, steps)]
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
        # and back: LeRobot's reading becomes the servo node's rad
        np.testing.assert_allclose(units.from_lerobot(np.array(theirs)), cal.steps_to_rad(steps), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cal_dict", [CAL, FLIPPED], ids=["drive_mode0", "gripper_drive_mode1"])
def test_goals_land_on_the_steps_the_servo_node_would_write(cal_dict):
    """A goal in rad, sent in LeRobot units and written by LeRobot's int() unnormalise, reaches the same step
    as the project's servo node for joints 1-5, and the gripper's within one step (int vs nearest)."""
    cal = Calibration.from_dict(cal_dict)
    units = LeRobotUnits(cal)
    lo, hi = cal.limits_rad()
    rng = np.random.default_rng(1)
    for _ in range(200):
        q = rng.uniform(lo, hi)
        values = units.to_lerobot(q)
        theirs = np.array([lerobot_unnormalize(n, v, cal_dict) for n, v in zip(cal_dict, values)])
        ours = cal.rad_to_steps(q)
        np.testing.assert_array_equal(theirs[:5], ours[:5])
        assert abs(int(theirs[5]) - int(ours[5])) <= 1
        np.testing.assert_allclose(units.from_lerobot(values), q, rtol=0, atol=1e-12)


def test_the_issue_s_example_and_units_that_are_not_lerobot_s():
    """The issue: the project's 0.670 rad goal sent as is to a degrees driver became 0.97 deg; converted it
    is LeRobot's 38.4 deg.  Radians or steps where degrees are due are refused with one line."""
    units = LeRobotUnits(Calibration.from_dict(CAL))
    q = np.array([np.deg2rad(38.4), 0, 0, 0, 0, GRIPPER_CLOSED_RAD])
    out = units.to_lerobot(q)
    assert out[0] == pytest.approx(38.4) and out[5] == pytest.approx(0.0)
    with pytest.raises(UnitsError, match="must be LeRobot degrees"):
        units.from_lerobot(np.array([2048.0, 0, 0, 0, 0, 50]))  # raw steps
    with pytest.raises(UnitsError, match="percent 0-100"):
        units.from_lerobot(np.array([0, 0, 0, 0, 0, 140.0]))
    with pytest.raises(UnitsError, match="6 finite"):
        units.to_lerobot(np.array([np.nan] * 6))
    # a gripper goal beyond the calibrated range is LeRobot's clamp: 100 %
    assert units.to_lerobot(np.array([0, 0, 0, 0, 0, 5.0]))[5] == pytest.approx(100.0)


def _main():
    spec = importlib.util.spec_from_file_location("node_lerobot_adapter", REPO_ROOT / "nodes" / "lerobot_adapter" / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_the_adapter_node_converts_both_ways(tmp_path, caplog):
    cal_path = tmp_path / "cal.json"
    cal_path.write_text(json.dumps(CAL))
    units = LeRobotUnits(Calibration.from_dict(CAL))
    q = np.array([0.5, -0.3, 0.8, 0.1, -1.2, 0.4])
    goal = encode("joint_goal", q, frame_id=7, stamp_ns=1000)
    t0 = dt.datetime(2026, 12, 2, 16, 0, tzinfo=dt.timezone.utc)
    hub = [(pa.array(units.to_lerobot(q + 0.01 * i).astype(np.float32)), {"timestamp": t0 + dt.timedelta(seconds=0.1 * i)})
           for i in range(3)]
    bad = [(pa.array(np.full(6, 1000.0, np.float32)), {}), (pa.array(["a"] * 6), {})]
    node = ReplayNode([("goal", [goal]), ("hub_joint_state", hub + bad)], order="file",
                      outputs={"goal": None, "joint_state": "joint_state"})
    assert _main()(node=node, env={"SO101_CALIBRATION": str(cal_path)}) == 0
    (gid, gval, gmeta), = [s for s in node.sent if s[0] == "goal"]
    np.testing.assert_allclose(gval.to_numpy(), units.to_lerobot(q), rtol=1e-6, atol=1e-4)  # float32
    assert gval.type == pa.float32() and gmeta["names"] == ",".join(LEROBOT_NAMES)
    assert (gmeta["frame_id"], gmeta["stamp_ns"], gmeta["units"]) == (7, 1000, "deg,deg,deg,deg,deg,percent")
    states = node.messages("joint_state")
    assert [m.frame_id for m in states] == [0, 1, 2]
    np.testing.assert_allclose(states[1].data[0], q + 0.01, atol=1e-5)
    np.testing.assert_allclose(states[1].data[1], np.full(6, 0.1), atol=1e-3)  # 0.01 rad in 0.1 s
    assert "must be LeRobot degrees" in caplog.text and "expected a numeric Arrow array" in caplog.text
    assert "2 message(s) rejected" in caplog.text


def test_the_adapter_refuses_a_missing_calibration(tmp_path, caplog):
    assert _main()(node=ReplayNode([]), env={"SO101_CALIBRATION": str(tmp_path / "none.json")}) == 2
    assert "not found" in caplog.text


@pytest.mark.integration
def test_lerobot_itself_reads_and_writes_what_the_adapter_says(tmp_path):
    """LeRobot 0.6.1's own FeetechMotorsBus._normalize/_unnormalize (its venv, as tests/test_lerobot.py)."""
    lerobot = pytest.importorskip("test_lerobot")
    python = lerobot.VENV / "bin" / "python"
    if not lerobot._venv_ok(python):
        pytest.skip(f"LeRobot {lerobot.LEROBOT_VERSION} venv not at {lerobot.VENV} (tests/test_lerobot.py makes it)")
    cal = Calibration.from_dict(CAL)
    units = LeRobotUnits(cal)
    grip = _gripper_steps_in_model_range(cal)
    ticks = {n: [c["range_min"], (c["range_min"] + c["range_max"]) // 2, c["range_max"]] for n, c in CAL.items()}
    ticks["gripper"] = grip[::5]
    lo, hi = cal.limits_rad()
    qs = np.random.default_rng(2).uniform(lo, hi, size=(5, 6))
    values = {n: [float(units.to_lerobot(q)[i]) for q in qs] for i, n in enumerate(CAL)}
    out = lerobot.run_lerobot(python, "normalize", {"calibration": CAL, "ticks": ticks, "values": values,
                                                    "dir": str(tmp_path)}, tmp_path)
    for i, name in enumerate(CAL):
        for t, got in zip(ticks[name], out["read"][name]):
            steps = np.array([(CAL[n]["range_min"] + CAL[n]["range_max"]) // 2 for n in CAL], float)
            steps[i] = t
            assert units.to_lerobot(cal.steps_to_rad(steps))[i] == pytest.approx(got, abs=1e-4)
        for q, written in zip(qs, out["write"][name]):
            assert abs(int(written) - int(cal.rad_to_steps(q)[i])) <= 1
