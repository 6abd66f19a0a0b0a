"""The fault matrix as integration tests: one per fault of the issue and per row of the safe-state table.

Each test runs one scenario of ``shared/so101_deploy/tools/faults/`` (the functions ``so101-deploy
faults`` runs to write docs/faults.md): a real ``dora run`` against the software STS3215 bus, one fault
injected (kill -9 of a node or of ``dora run``, the e-stop file, a sagging arm, a bad setting), and the
checks made on what the arm was told -- the bus's log of every register write (Torque_Enable,
Goal_Position inside the limits, the step bound, no goal after the release, park moves bounded by
SO101_PARK_SPEED_RAD_S x time) -- and on the exit codes.  Every wait is for a condition with a deadline, so
the file also passes on a saturated machine: ``SO101_FAULTS_HOG=1`` runs it with two busy-looping
processes on the side.

A scenario that fails only for a known, reported reason (``faults.KNOWN_ISSUES``: an e-stop that does not
stop a park, tracebacks after a start failure) is xfail with that reason; any other failure fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from so101_deploy.tools import faults

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """Where the scenarios write (fixture weights, video and ONNX exports shared by the full-flow ones);
    with SO101_FAULTS_HOG=1, two busy-looping processes run for the whole module (stopped by pid)."""
    hog = faults.cpu_hog() if os.environ.get("SO101_FAULTS_HOG") == "1" else None
    if hog is not None:
        hog.__enter__()
    try:
        yield faults.Context(tmp_path_factory.mktemp("faults"))
    finally:
        if hog is not None:
            hog.__exit__(None, None, None)


def run(name: str, ctx: faults.Context) -> faults.Outcome:
    o = faults.SCENARIOS[name](ctx)
    o.folder = str(ctx.root / name)
    o.known_issue = faults.known_issue(o)
    print(o.summary())
    if o.known_issue:
        pytest.xfail(o.known_issue)
    assert o.passed, o.summary()
    return o


# --- one per row of the safe-state table -------------------------------------------------------------

@pytest.mark.timeout(120)
def test_run_torque_waits_for_an_action_then_follows_safe_goals(ctx):
    o = run("state_run", ctx)
    assert o.time_to_safe_s is not None


@pytest.mark.timeout(120)
def test_hold_when_actions_stop(ctx):
    o = run("state_hold_no_action", ctx)
    assert o.time_to_safe_s <= faults.HOLD_S + 0.5  # the hold follows SO101_HOLD_S, not a longer watchdog


@pytest.mark.timeout(120)
def test_hold_on_the_estop_file_and_resume_from_the_present_pose(ctx):
    o = run("state_hold_estop", ctx)
    assert o.time_to_safe_s <= faults.FREEZE_BOUND_S


@pytest.mark.timeout(120)
def test_park_after_the_hold_then_torque_off_and_exit_3(ctx):
    run("state_park_after", ctx)


@pytest.mark.timeout(120)
def test_limp_and_exit_when_the_action_source_dies(ctx):
    run("state_limp_exit", ctx)


@pytest.mark.timeout(120)
def test_on_fault_hold_keeps_holding(ctx):
    run("on_fault_hold", ctx)


@pytest.mark.timeout(120)
def test_on_fault_release_releases_without_parking(ctx):
    run("on_fault_release", ctx)


# --- one per fault of the issue -----------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_estop_node_killed_then_estop_file(ctx):
    run("estop_node_killed", ctx)


@pytest.mark.timeout(240)
def test_kill_policy_cascades_to_park_and_exit(ctx):
    o = run("kill_policy", ctx)
    assert o.time_to_safe_s is not None


@pytest.mark.timeout(240)
def test_kill_seg_cascades_to_park_and_exit(ctx):
    run("kill_seg", ctx)


@pytest.mark.timeout(240)
def test_kill_depth_cascades_to_park_and_exit(ctx):
    run("kill_depth", ctx)


@pytest.mark.timeout(240)
def test_camera_restarts_and_goals_resume(ctx):
    run("camera_restart", ctx)


@pytest.mark.timeout(240)
def test_missing_checkpoint_and_bad_setting_at_start(ctx):
    run("start_failures", ctx)


@pytest.mark.timeout(120)
def test_kill_dora_run_releases_torque_within_1s(ctx):
    run("kill_dora_run", ctx)


@pytest.mark.timeout(120)
def test_kill_servo_releases_torque_within_1s(ctx):
    run("kill_servo", ctx)


@pytest.mark.timeout(120)
def test_sagged_arm_restarts_from_the_present_pose(ctx):
    run("sag_after_release", ctx)


@pytest.mark.timeout(120)
def test_killed_recorder_recording_reads_back(ctx):
    run("kill_recorder", ctx)


@pytest.mark.timeout(120)
def test_untrusted_checkpoint_refused_even_with_the_old_trust_switch(ctx):
    run("untrusted_checkpoint", ctx)


def test_every_scenario_has_a_test():
    names = {n for n in faults.SCENARIOS}
    src = Path(__file__).read_text()
    assert all(f'run("{n}", ctx)' in src for n in names), sorted(n for n in names if f'run("{n}", ctx)' not in src)


# --- the helpers the matrix judges with (no dora) -------------------------------------------------------

def _rows(path: Path, writes: list[tuple[float, int, str, int]]) -> faults.BusLog:
    path.write_text("".join(json.dumps({"t": t, "id": i, "name": n, "value": v}) + "\n" for t, i, n, v in writes))
    return faults.BusLog(path)


def test_goal_batches_freeze_latency_and_torque_times(tmp_path):
    writes = [(0.0, i, "Goal_Position", 2000) for i in faults.IDS]
    writes += [(0.0, i, "Torque_Enable", 1) for i in faults.IDS]
    writes += [(0.1, i, "Goal_Position", 2010) for i in faults.IDS]
    writes += [(0.2, i, "Goal_Position", 2010 + (i == 3)) for i in faults.IDS]  # 1 step: a hold settling
    writes += [(0.3, i, "Goal_Position", 2010) for i in faults.IDS]
    writes += [(0.4, i, "Torque_Enable", 0) for i in faults.IDS]
    log = _rows(tmp_path / "w.jsonl", writes)
    batches = log.goal_batches()
    assert [t for t, _ in batches] == [0.0, 0.1, 0.2, 0.3]
    assert faults.changes(batches) == [0.1]
    assert faults.freeze_latency(log, 0.05) == pytest.approx(0.05)
    assert faults.freeze_latency(log, 0.15) == 0.0
    assert log.torque_on_at() == 0.0 and log.all_off_at() == 0.4
    out = faults.Outcome("x", "", "")
    faults.check_torque_released_last(out, log)
    assert out.passed, out.failures


def test_park_check_bounds_speed_and_direction():
    rest = faults.CAL.rad_to_steps(np.array(faults.REST_POSE_RAD)).astype(float)
    step = faults.PARK_SPEED_RAD_S * 0.02 / faults.RAD_PER_STEP  # one 20 ms tick at the park speed
    start = rest + np.array([60, -60, 0, 0, 0, 0])
    good = [(k * 0.02, start + np.clip(rest - start, -k * step, k * step)) for k in range(40)]
    out = faults.Outcome("x", "", "")
    faults.check_park(out, good)
    assert out.passed, out.failures
    too_fast = [(k * 0.02, start + np.clip(rest - start, -3 * k * step, 3 * k * step)) for k in range(20)]
    out = faults.Outcome("x", "", "")
    faults.check_park(out, too_fast)
    assert any("speed bound" in f for f in out.failures)
    away = [(0.0, start), (0.02, start + np.array([5, 0, 0, 0, 0, 0]))] + good
    out = faults.Outcome("x", "", "")
    faults.check_park(out, away)
    assert any("away from the rest pose" in f for f in out.failures)


def test_markdown_keeps_other_rows_and_what_follows_the_table(tmp_path):
    md = tmp_path / "faults.md"
    md.write_text("old\n\n" + faults.TABLE_HEADER + "| `kill_seg` | a | b | c | d | pass |\n\n## E-stop latency\n\nkept\n")
    o = faults.Outcome("kill_policy", "kill -9 policy", "park", observed="parked", time_to_safe_s=1.25,
                       time_what="kill -> torque off")
    faults.write_markdown(md, [o])
    text = md.read_text()
    assert "| `kill_policy` |" in text and "| `kill_seg` |" in text and "1.25 s (kill -> torque off)" in text
    assert text.index("`kill_policy`") < text.index("`kill_seg`")  # in the matrix's order
    assert text.rstrip().endswith("kept") and text.count("## E-stop latency") == 1
