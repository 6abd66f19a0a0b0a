"""Scenarios: one per row of the safe-state table (RUN, HOLD, PARK, LIMP, SO101_ON_FAULT)."""

from __future__ import annotations

import time


from so101_deploy.tools.faults.runtime import Bus, DoraRun, HOLD_S, Outcome, PARK_AFTER_S, ScenarioError, StateLog, session_pids, wait_for
from so101_deploy.tools.faults.flows import Context, FAST, _touch, _wait_running, changes, check_goals_safe, check_park, check_slow_start, check_torque_released_last, exit_code_of, freeze_latency, light_flow, scenario

@scenario
def scenario_state_run(out: Outcome, ctx: Context) -> None:
    """Safe state RUN: actions flow (light flow, Cartesian actions at 10 Hz).

    Torque waits for the first goal from an action; goal := present steps, then torque on (slow start);
    goals follow the actions inside the limits, each write within SO101_MAX_STEP_RAD; Ctrl-C ends the run
    with exit 0 and torque off on all six."""
    f = ctx.folder(out.name)
    with Bus(f) as bus, DoraRun(light_flow(f, bus.link)) as run:
        states = StateLog(f / "joint_state.jsonl")
        t_on = _wait_running(out, run, bus.log, states, min_moves=20)
        out.time_to_safe_s, out.time_what = t_on - run.t_start, "dora run -> torque on"
        rc = run.interrupt()
    check_slow_start(out, bus.log)
    n = check_goals_safe(out, bus.log)
    check_torque_released_last(out, bus.log)
    out.check(rc == 0, f"dora run exit {rc} after Ctrl-C (expected 0)")
    run_states = {r["state"] for r in states.rows()}
    out.check("run" in run_states, f"the servo never reported RUN (states {run_states})")
    out.observed = (f"torque on {t_on - run.t_start:.1f} s after start (goal := present first), {n} goal writes "
                    f"inside the limits and the step bound, Ctrl-C -> exit {rc}, torque off on all six")


# row: HOLD by no fresh action
@scenario
def scenario_state_hold_no_action(out: Outcome, ctx: Context) -> None:
    """Safe state HOLD by no fresh action: the action source stops sending (SO101_HOLD_S 0.5).

    Within SO101_HOLD_S (+ a tick) the servo holds the present pose: no Goal_Position changes during the
    hold, torque stays on; Ctrl-C ends the run with exit 0 and torque off."""
    f = ctx.folder(out.name)
    with Bus(f) as bus, DoraRun(light_flow(f, bus.link, source={"SO101_ACTION_STOP_AFTER_S": 2.0})) as run:
        states = StateLog(f / "joint_state.jsonl")
        _wait_running(out, run, bus.log, states)
        hold = wait_for(lambda: states.hold_lasting(1.0) or run.exited(), 60, "a HOLD of 1 s after the actions stop")
        if run.exited():
            raise ScenarioError(f"dora run ended (exit {run.proc.returncode}) before a 1 s HOLD")
        t_hold = hold["t"]
        rc = run.interrupt()
    batches = bus.log.goal_batches()
    moved = changes(batches)
    last_change = max(moved) if moved else 0.0
    out.check(last_change <= t_hold + 0.05, f"a goal changed {last_change - t_hold:.3f} s after the HOLD")
    held = [b for b in batches if t_hold < b[0] <= t_hold + 1.0]
    out.check(len(held) >= 10, f"only {len(held)} hold writes in the first second of HOLD")
    after = [r for r in states.rows() if t_hold <= r["t"] <= t_hold + 1.0]
    out.check(after and {r["state"] for r in after} == {"hold"},
              f"states in the first second of HOLD: {sorted({r['state'] for r in after})}")
    out.check({r["torque"] for r in after} == {"on"}, "torque went off during the hold")
    gap = t_hold - last_change
    out.time_to_safe_s, out.time_what = gap, "last goal change -> HOLD reported"
    check_goals_safe(out, bus.log)
    check_torque_released_last(out, bus.log)
    out.check(rc == 0, f"dora run exit {rc} after Ctrl-C")
    out.observed = (f"HOLD reported {gap:.2f} s after the last goal change (SO101_HOLD_S {HOLD_S}); "
                    f"{len(held)} hold writes in its first second, none changed a goal; torque on; "
                    f"Ctrl-C -> exit {rc}, torque off")


def _hold_then(out: Outcome, ctx: Context, on_fault: str) -> tuple[Bus, DoraRun, StateLog, float, int | None]:
    """Actions stop after 2 s; returns once the run ended by itself (park/release) or, for on_fault=hold,
    after the hold lasted SO101_PARK_AFTER_S + 1 s (then Ctrl-C)."""
    f = ctx.folder(out.name)
    bus = Bus(f)
    with bus, DoraRun(light_flow(f, bus.link, servo={"SO101_ON_FAULT": on_fault},
                                 source={"SO101_ACTION_STOP_AFTER_S": 2.0})) as run:
        states = StateLog(f / "joint_state.jsonl")
        _wait_running(out, run, bus.log, states)
        if on_fault == "hold":
            wait_for(lambda: states.hold_lasting(PARK_AFTER_S + 1.0) or run.exited(), 90,
                     "a hold lasting past SO101_PARK_AFTER_S")
            rc = run.interrupt()
        else:
            rc = run.wait(90, "the servo to end the run")
    hold = states.final_hold()
    if hold is None:
        raise ScenarioError(f"no HOLD after the actions stopped (dora run exit {rc})")
    return bus, run, states, hold["t"], rc


def _servo_exit_checks(out: Outcome, run: DoraRun, rc: int | None, line: str) -> None:
    text = run.text()
    out.check(rc not in (0, None), f"dora run exit {rc} (expected non-zero: the servo ended it)")
    out.check(exit_code_of(text, "servo") == 3, f"servo exit code {exit_code_of(text, 'servo')} (expected 3)")
    out.check(line in text, f"no servo line {line!r} in the run's output")


# row: PARK after SO101_PARK_AFTER_S
@scenario
def scenario_state_park_after(out: Outcome, ctx: Context) -> None:
    """Safe state PARK after SO101_PARK_AFTER_S (2 s) of HOLD: the action source stops.

    HOLD for SO101_PARK_AFTER_S, then a joint-space move to SO101_REST_POSE_RAD at no more than
    SO101_PARK_SPEED_RAD_S (0.3 rad/s), then torque off on all six, the servo exits 3, `dora run` exits
    non-zero."""
    bus, run, states, t_hold, rc = _hold_then(out, ctx, "park")
    park = states.first(lambda r: r["state"] == "park")
    if not out.check(park, "the servo never reported PARK"):
        return
    held_s = park["t"] - t_hold
    out.check(held_s >= PARK_AFTER_S - 0.05, f"PARK after only {held_s:.2f} s of HOLD")
    out.check(held_s <= PARK_AFTER_S + 1.0, f"PARK only after {held_s:.2f} s of HOLD")
    check_park(out, bus.log.goal_batches(t_hold))
    park_s = (bus.log.all_off_at(t_hold) or park["t"]) - park["t"]
    t_off = bus.log.all_off_at(t_hold)
    out.check(t_off, "torque not off on all six after the park")
    check_torque_released_last(out, bus.log)
    check_goals_safe(out, bus.log)
    _servo_exit_checks(out, run, rc, "parked, torque off")
    out.time_to_safe_s, out.time_what = (t_off - t_hold if t_off else None), "HOLD -> torque off"
    out.observed = (f"HOLD {held_s:.2f} s, then PARK {park_s:.2f} s to the rest pose within the speed bound, "
                    f"torque off on all six; servo exit {exit_code_of(run.text(), 'servo')}, dora run exit {rc}")


# row: LIMP + exit
@scenario
def scenario_state_limp_exit(out: Outcome, ctx: Context) -> None:
    """Safe state LIMP + exit, reached by a dead input: kill -9 the action source (the policy's place).

    The controller stops (its action input closed), so the servo's goal input closes: PARK at once (a cause
    that cannot clear), torque off on all six, the servo exits 3 with one line, the rest of the graph
    stops (the estop node through its `arm` input) and `dora run` exits non-zero by itself."""
    f = ctx.folder(out.name)
    with Bus(f) as bus, DoraRun(light_flow(f, bus.link)) as run:
        states = StateLog(f / "joint_state.jsonl")
        _wait_running(out, run, bus.log, states)
        _, t_kill = run.kill_node("tests/nodes/action_source.py")
        rc = run.wait(60, "dora run to end after the action source died")
        left = [cmd for _, cmd in session_pids(run.pid)]
    t_off = bus.log.all_off_at(t_kill)
    out.check(t_off, "torque not off on all six")
    out.check(not left, f"processes left after dora run exited: {left}")
    check_park(out, bus.log.goal_batches(t_kill + 0.0))
    check_torque_released_last(out, bus.log)
    check_goals_safe(out, bus.log)
    _servo_exit_checks(out, run, rc, "servo: input 'goal' closed (its node is gone): parked, torque off")
    text = run.text()
    lines = _stderr_block(text, "servo")
    out.check(len([ln for ln in lines if "error: servo:" in ln]) == 1, f"servo's exit line(s): {lines}")
    out.time_to_safe_s, out.time_what = (t_off - t_kill if t_off else None), "kill -> torque off"
    out.observed = (f"servo parked and released torque {out.time_to_safe_s or float('nan'):.2f} s after the kill, "
                    f"exit {exit_code_of(text, 'servo')} with \"{next((ln for ln in lines if 'error: servo:' in ln), '?')}\"; "
                    f"dora run exit {rc} {run.t_end - t_kill:.1f} s after the kill")


def _stderr_block(text: str, node: str) -> list[str]:
    """The lines dora quotes from a failed node's stderr (between the dashed rules after its name)."""
    i = text.rfind(f"Node `{node}` failed")
    if i < 0:
        return []
    lines = text[i:].splitlines()
    rules = [k for k, ln in enumerate(lines) if ln.startswith("-----")]
    return [ln for ln in lines[rules[0] + 1:rules[1]] if ln.strip()] if len(rules) >= 2 else lines[:1]


# row: SO101_ON_FAULT=hold
@scenario
def scenario_on_fault_hold(out: Outcome, ctx: Context) -> None:
    """SO101_ON_FAULT=hold: the action source stops; the hold lasts.

    HOLD past SO101_PARK_AFTER_S (no park, no release: a human decides), torque on, goals frozen;
    Ctrl-C ends the run with exit 0 and torque off."""
    bus, run, states, t_hold, rc = _hold_then(out, ctx, "hold")
    after = [r for r in states.rows() if r["t"] >= t_hold]
    out.check({r["state"] for r in after} == {"hold"}, f"states after HOLD: {sorted({r['state'] for r in after})}")
    out.check({r["torque"] for r in after} == {"on"}, "torque went off before Ctrl-C")
    span = after[-1]["t"] - t_hold if after else 0.0
    out.check(span >= PARK_AFTER_S + 0.9, f"held only {span:.1f} s")
    moved = [t for t in changes(bus.log.goal_batches()) if t > t_hold + 0.05]
    out.check(not moved, f"{len(moved)} goal change(s) during the hold")
    check_torque_released_last(out, bus.log)
    check_goals_safe(out, bus.log)
    out.check(rc == 0, f"dora run exit {rc} after Ctrl-C")
    out.observed = (f"HOLD kept {span:.1f} s (> SO101_PARK_AFTER_S {PARK_AFTER_S}), torque on, no goal change; "
                    f"Ctrl-C -> exit {rc}, torque off")


# row: SO101_ON_FAULT=release
@scenario
def scenario_on_fault_release(out: Outcome, ctx: Context) -> None:
    """SO101_ON_FAULT=release: the action source stops.

    HOLD for SO101_PARK_AFTER_S, then torque off at once on all six (no park move), the servo exits 3,
    `dora run` exits non-zero."""
    bus, run, states, t_hold, rc = _hold_then(out, ctx, "release")
    t_off = bus.log.all_off_at(t_hold)
    out.check(t_off, "torque not off on all six")
    held_s = (t_off - t_hold) if t_off else 0.0
    out.check(PARK_AFTER_S - 0.05 <= held_s <= PARK_AFTER_S + 1.0, f"torque off after {held_s:.2f} s of HOLD")
    moved = [t for t in changes(bus.log.goal_batches()) if t > t_hold + 0.05]
    out.check(not moved, f"{len(moved)} goal change(s) after the HOLD (no park expected)")
    out.check(not states.first(lambda r: r["state"] == "park"), "the servo parked")
    check_torque_released_last(out, bus.log)
    check_goals_safe(out, bus.log)
    _servo_exit_checks(out, run, rc, "torque released (SO101_ON_FAULT=release)")
    out.time_to_safe_s, out.time_what = (held_s or None), "HOLD -> torque off"
    out.observed = (f"HOLD {held_s:.2f} s, then torque off on all six without a move; servo exit "
                    f"{exit_code_of(run.text(), 'servo')}, dora run exit {rc}")


# row: HOLD by e-stop
@scenario
def scenario_state_hold_estop(out: Outcome, ctx: Context) -> None:
    """Safe state HOLD by e-stop: `touch` the e-stop file while the arm runs (actions at 50 Hz), `rm` it
    after 1 s of hold.

    Goals frozen within a few ticks (the servo reads the file itself every 20 ms), torque on; after `rm`
    the arm follows goals again from the present pose (slow start, within the step bound)."""
    f = ctx.folder(out.name)
    estop = f / "so101.estop"
    with Bus(f) as bus, DoraRun(light_flow(f, bus.link, action_rate_ms=20, source=FAST)) as run:
        states = StateLog(f / "joint_state.jsonl")
        _wait_running(out, run, bus.log, states, min_moves=10)
        t_touch = _touch(estop)
        wait_for(lambda: states.first(lambda r: r["estop"] == 1 and r["state"] == "hold", after_t=t_touch), 30,
                 "HOLD by the e-stop")
        wait_for(lambda: states.first(lambda r: True, after_t=t_touch + 1.0) or run.exited(), 30, "1 s of hold")
        t_clear = time.time()
        estop.unlink()
        wait_for(lambda: len(changes(bus.log.goal_batches(t_clear))) >= 5 or run.exited(), 30,
                 "goals moving again after the e-stop is cleared")
        rc = run.interrupt()
    lat = freeze_latency(bus.log, t_touch, until_t=t_clear)
    seen = states.first(lambda r: r["estop"] == 1, after_t=t_touch)["t"] - t_touch
    out.check(lat <= 0.5, f"goals changed until {lat:.3f} s after the touch")
    during = [r for r in states.rows() if t_touch + lat + 0.05 <= r["t"] <= t_clear]
    out.check(during and {r["torque"] for r in during} == {"on"}, "torque went off during the e-stop hold")
    resumed = states.first(lambda r: r["state"] == "run", after_t=t_clear)
    out.check(resumed, "no RUN after the e-stop was cleared")
    check_goals_safe(out, bus.log)  # includes: the first goals after the clear are within the step bound
    check_torque_released_last(out, bus.log)
    out.check(rc == 0, f"dora run exit {rc} after Ctrl-C")
    out.time_to_safe_s, out.time_what = max(lat, seen), "touch -> goals frozen"
    out.observed = (f"the servo held {seen * 1000:.0f} ms after the touch, the last goal change {lat * 1000:.0f} ms "
                    f"after it; torque on during the hold; RUN again "
                    f"{(resumed['t'] - t_clear) if resumed else float('nan'):.2f} s after rm, within the step "
                    f"bound; Ctrl-C -> exit {rc}")
