"""The simulator evaluation's pieces without dora: latency and control-rate schedule, perception noise,
per-episode records, the Wilson interval, the sim runner's knobs and episode limit, and the evaluate
command's parsing, preset, summary and plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from so101_deploy.sim.evaluation import (ActionSchedule, EpisodeRecord, PerceptionNoise, append_jsonl, read_jsonl,
                                         wilson_interval)
from so101_deploy.sim.sim_arm import SimArm, SimRunner
from so101_deploy.sim.variation import parse_variation


# --- schedule -------------------------------------------------------------------------------------------------

def test_schedule_applies_a_goal_latency_steps_after_its_frame():
    s = ActionSchedule(latency_steps=3)
    g = np.arange(6, dtype=float)
    s.push(g, step=10)  # computed from the frame of step 10
    assert s.due(10) is None and s.due(12) is None
    np.testing.assert_array_equal(s.due(13), g)
    assert s.due(14) is None and s.pending == 0


def test_schedule_zero_latency_is_the_next_step_and_newer_goals_win():
    s = ActionSchedule()
    a, b = np.zeros(6), np.ones(6)
    s.push(a, 0)
    s.push(b, 1)
    np.testing.assert_array_equal(s.due(5), b)  # both due: the newest applies, the older is dropped
    assert s.pending == 0
    s.push(a, 7)
    s.reset()  # a new episode: nothing from the last one
    assert s.due(100) is None


@pytest.mark.parametrize("kw", [{"latency_steps": -1}, {"latency_steps": 1.5}, {"action_every": 0}])
def test_schedule_rejects_bad_knobs(kw):
    with pytest.raises(ValueError, match="control steps"):
        ActionSchedule(**kw)


def test_schedule_rejects_a_bad_goal():
    with pytest.raises(ValueError, match="6 finite"):
        ActionSchedule().push(np.array([0, 0, 0, 0, 0, np.nan]), 0)


# --- noise ----------------------------------------------------------------------------------------------------

def test_noise_zero_returns_the_oracle_unchanged():
    n = PerceptionNoise(0.0)
    n.reset(3)
    m = np.random.default_rng(0).integers(0, 5, (48, 64), dtype=np.uint8)
    d = np.random.default_rng(1).random((48, 64), dtype=np.float32) + 1
    assert n.mask(m) is m and n.disparity(d) is d


def test_noise_flips_about_p_of_the_mask_and_is_reproducible_from_the_seed():
    m = np.full((200, 200), 2, np.uint8)
    d = np.full((200, 200), 5.0, np.float32)
    a, b = PerceptionNoise(0.2), PerceptionNoise(0.2)
    a.reset(7)
    b.reset(7)
    ma, mb = a.mask(m), b.mask(m)
    np.testing.assert_array_equal(ma, mb)
    changed = (ma != m).mean()
    assert 0.2 * 0.8 * 0.9 < changed < 0.2 * 0.8 * 1.1  # a random class is the same one 1 time in 5
    assert ma.max() <= 4 and ma.dtype == np.uint8
    da = a.disparity(d)
    assert da.dtype == np.float32 and da.min() >= 0 and abs(da.std() / 5.0 - 0.2) < 0.02
    b.reset(8)
    assert not np.array_equal(b.mask(m), ma)


@pytest.mark.parametrize("p", [-0.1, 1.5, math.nan])
def test_noise_rejects_a_bad_fraction(p):
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\]"):
        PerceptionNoise(p)


# --- records and statistics -----------------------------------------------------------------------------------

def test_episode_record_lift_height_and_time_to_grasp(tmp_path):
    r = EpisodeRecord(episode=1, seed=4, cube_start_z_m=0.015)
    r.update(1, 0.015, False, False)
    r.update(2, 0.016, True, False)
    r.update(3, 0.12, True, False)
    r.update(4, 0.11, True, True)
    d = r.as_dict()
    assert d["success"] and d["steps"] == 4 and d["grasp_step"] == 2
    assert d["time_to_grasp_s"] == pytest.approx(0.04) and d["lift_height_m"] == pytest.approx(0.105)
    assert d["duration_s"] == pytest.approx(0.08) and "started_s" not in d
    assert d["wall_s"] == 0.0, "no policy step yet: no wall time (the first reset precedes the graph's start)"
    path = tmp_path / "e.jsonl"
    append_jsonl(path, d)
    append_jsonl(path, {**d, "seed": 5})
    assert [row["seed"] for row in read_jsonl(path)] == [4, 5]
    never = EpisodeRecord(2, 5, 0.015)
    never.update(200, 0.015, False, False)
    assert never.as_dict()["time_to_grasp_s"] is None and never.as_dict()["lift_height_m"] == 0.0


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(7, 10)  # the hand-off's 70 % of 10 episodes
    assert (round(lo, 3), round(hi, 3)) == (0.397, 0.892)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and round(lo, 3) == 0.722
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 3) == 0.278
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


# --- the sim runner with the knobs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim():
    return SimArm()


def test_runner_applies_goals_late_by_the_latency(sim):
    runner = SimRunner(sim, seed=0, camera=False, schedule=ActionSchedule(latency_steps=2))
    runner.step_on = "goal"
    held = sim.goal_rad()
    goal = held.copy()
    goal[0] += 0.3
    runner.on_goal(goal)
    runner.tick()  # step 1: the goal of step 0 is due at step 2
    np.testing.assert_allclose(sim.goal_rad(), held)
    runner.tick()
    np.testing.assert_allclose(sim.goal_rad(), held)
    runner.tick()  # step 2 -> applied before it
    np.testing.assert_allclose(sim.goal_rad(), goal)
    assert runner.record.policy_steps == 1


def test_runner_action_every_runs_that_many_steps_per_goal_in_lockstep(sim):
    runner = SimRunner(sim, seed=0, camera=False, schedule=ActionSchedule(action_every=5))
    runner.step_on = "goal"
    runner.on_goal(sim.goal_rad())
    out = runner.tick()
    assert sim.step_count == 5 and [o[0] for o in out] == ["joint_state"]


def test_runner_stops_after_its_episodes_and_reports_each(sim, tmp_path):
    report = tmp_path / "episodes.jsonl"
    runner = SimRunner(sim, seed=11, camera=False, episode_steps=3, episodes=2, report_path=str(report))
    for _ in range(20):
        runner.tick()
    assert runner.all_done and runner.tick() == []
    rows = read_jsonl(report)
    assert [r["seed"] for r in rows] == [11, 12] and all(r["steps"] == 3 for r in rows)
    assert all(r["lift_height_m"] < 0.01 and r["time_to_grasp_s"] is None for r in rows)


def test_runner_varies_the_scene_per_episode_from_its_seed(sim):
    cube0 = SimRunner(sim, seed=3, camera=False).sim.cube_pos()
    varied = SimRunner(sim, seed=3, camera=False, variation=parse_variation("cube_size_frac=0.3"))
    half = varied.record.variation["cube_half_m"]
    assert half != pytest.approx(0.015) and varied.sim.cube_half_m() == pytest.approx(half)
    assert varied.sim.cube_pos()[2] == pytest.approx(half, abs=2e-3)  # resting on the floor, not sunk
    np.testing.assert_allclose(varied.sim.cube_pos()[:2], cube0[:2], atol=1e-3)  # training's x/y draw kept
    again = SimRunner(sim, seed=3, camera=False, variation=parse_variation("cube_size_frac=0.3"))
    assert again.record.variation == varied.record.variation
    sim.variator.restore()
    assert sim.cube_half_m() == 0.015


def test_runner_writes_a_video_per_episode(sim, tmp_path):
    import cv2

    from so101_deploy.sim.episode_video import EpisodeVideo

    runner = SimRunner(sim, seed=0, camera=False, oracle=True, episode_steps=6, episodes=1,
                       video=EpisodeVideo(tmp_path / "v", oracle=True, every=2))
    runner.step_on = "goal"
    runner.publish(force_frame=True)
    for _ in range(8):
        runner.on_goal(sim.goal_rad())
        runner.tick()
    (row,) = runner.results
    cap = cv2.VideoCapture(row["video"])
    frames = []
    ok, f = cap.read()
    while ok:
        frames.append(f)
        ok, f = cap.read()
    assert len(frames) == 3 and frames[0].shape == (120, 480, 3)  # camera | mask | disparity
    assert frames[-1][:, 160:320].std() > 5, "the mask tile shows the oracle mask, not a blank"


# --- the evaluate command's pure parts -----------------------------------------------------------------------

def test_sweep_and_knob_parsing():
    from so101_deploy.tools.evaluate import parse_sweep

    assert parse_sweep("latency=0,1,2,4") == ("latency", [0, 1, 2, 4])
    assert parse_sweep("camera_pos_m=0,0.01") == ("camera_pos_m", [0.0, 0.01])
    for bad, msg in (("latency=0,1.5", "integer"), ("speed=1", "KNOB one of"), ("latency", "KNOB=V1"),
                     ("action_every=0", ">= 1"), ("noise=2", r"\[0, 1\]"), ("camera_pos_m=9", "camera_pos_m")):
        with pytest.raises(ValueError, match=msg):
            parse_sweep(bad)


def test_cpu_preset_from_the_committed_bench_report_and_from_bench_json(repo_root, tmp_path):
    from so101_deploy.tools.evaluate import cpu_preset

    knobs, note = cpu_preset(None, repo_root / "docs" / "bench-cpu.md")
    assert knobs.latency >= 1 and knobs.action_every >= 2, note  # a 2-core CPU graph is far from 50 Hz
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"graph": {"control_rate_hz": 10.0, "report": {"new_frame_latency_ms": {"p50": 101}}}}))
    knobs, note = cpu_preset(bench, None)
    assert (knobs.latency, knobs.action_every) == (5, 5) and str(bench) in note
    with pytest.raises(ValueError, match="run `so101-deploy bench`"):
        cpu_preset(tmp_path / "missing.json", tmp_path / "missing.md")


def test_summary_markdown_and_plot(tmp_path):
    from so101_deploy.tools.evaluate import Knobs, plot_sweep, render_markdown, summarise

    rows = [EpisodeRecord(i + 1, i, 0.015) for i in range(4)]
    for i, r in enumerate(rows):
        r.update(60, 0.13 if i < 3 else 0.02, i < 3, i < 3)
        r.grasp_step = 20 if i < 3 else None
        r.policy_steps, r.wall_s = 60, 2.0
    dicts = [r.as_dict() for r in rows]
    s = summarise(dicts, wall_s=9.0)
    assert (s["successes"], s["episodes"], s["success_rate"]) == (3, 4, 0.75)
    assert s["median_time_to_grasp_s"] == pytest.approx(0.4) and s["policy_steps_per_s"] == 30.0
    configs = []
    for k in (0, 4):
        knobs = Knobs().with_value("latency", k)
        configs.append({"knobs": {"latency": k, "action_every": 1, "noise": 0.0, "variation": {}},
                        "label": knobs.label(), "complete": True, "summary": s, "episodes": dicts})
    report = {"command": "so101-deploy evaluate --sweep latency=0,4", "policy": "scripted", "policy_sha256": None,
              "perception": "privileged", "flow": "dataflow.sim-scripted.yml", "episodes": 4, "episode_steps": 200,
              "seed": 0, "sweep_knob": "latency", "out": str(tmp_path), "configs": configs}
    png = plot_sweep(report, tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    report["plot"] = str(png)
    md = render_markdown(report)
    assert "| latency=4,action_every=1 | 3/4 | 0.30-0.95 |" in md and "![success against latency](sweep.png)" in md
    assert md.count("| 0 | yes | 60 |") == 2


def test_knobs_become_sim_settings_the_sim_accepts():
    from so101_deploy.core.settings import Settings
    from so101_deploy.sim.sim_arm import SETTINGS
    from so101_deploy.tools.evaluate import Knobs

    k = Knobs(latency=3, action_every=2, noise=0.1, variation={"light_frac": 0.3, "camera_pos_m": 0.004})
    env = k.sim_env()
    s = Settings("sim_arm", SETTINGS, env)
    assert (s["SO101_SIM_LATENCY_STEPS"], s["SO101_SIM_ACTION_EVERY"], s["SO101_SIM_PERCEPTION_NOISE"]) == (3, 2, 0.1)
    v = parse_variation(s["SO101_SIM_VARIATION"])
    assert (v.light_frac, v.camera_pos_m) == (0.3, 0.004)
    assert k.label() == "latency=3,action_every=2,noise=0.1,camera_pos_m=0.004,light_frac=0.3"


# --- the controller's clock ----------------------------------------------------------------------------------

def test_controller_sim_clock_follows_the_sim_time_and_never_goes_back():
    from so101_deploy.arm.controller import ControllerClock, ControllerError

    c = ControllerClock("sim")
    assert c.now() == 0.0
    c.on_joint_state({"sim_time_s": 0.4})
    c.on_joint_state({"sim_time_s": 0.2})  # a late state
    assert c.now() == 0.4
    for bad in ({}, {"sim_time_s": float("nan")}, {"sim_time_s": True}, {"sim_time_s": "1"}):
        with pytest.raises(ControllerError, match="sim_time_s") as e:
            c.on_joint_state(bad)
        assert "\n" not in str(e.value)
    wall = ControllerClock("wall")
    wall.on_joint_state({})  # a real arm's states carry no sim time
    a = wall.now()
    assert wall.now() >= a > 0
    with pytest.raises(ValueError, match="'wall' or 'sim'"):
        ControllerClock("gps")


def test_sim_runner_sends_the_simulated_time(sim):
    from so101_deploy.core.messages import decode

    runner = SimRunner(sim, seed=0, camera=False, episode_steps=2)
    times = []
    for _ in range(5):  # two steps, the reset, two steps: the clock runs on across episodes
        out = runner.tick()
        times.append(decode("joint_state", out[-1][1], out[-1][2]).meta["sim_time_s"])
    assert times == pytest.approx([0.02, 0.04, 0.04, 0.06, 0.08])


def test_video_frames_show_the_varied_scene(sim):
    """The video renderer's GL buffer is sized on a copy of the model, but each frame's scene comes from the
    live model: a scene variation shows in the episode's video."""
    import mujoco

    runner = SimRunner(sim, seed=0, camera=False)
    mujoco.mj_forward(sim.model, sim.data)  # after mj_step the body poses lag qpos by one step
    before = sim.render_video_bgr()
    drawn = sim.variator.apply(parse_variation("camera_pos_m=0.02,cube_rgb_frac=0.5"), np.random.default_rng(1))
    try:
        mujoco.mj_forward(sim.model, sim.data)
        after = sim.render_video_bgr()
    finally:
        sim.variator.restore()
        mujoco.mj_forward(sim.model, sim.data)
    assert drawn["camera_pos_offset_m"] and np.abs(after.astype(int) - before).mean() > 2
    np.testing.assert_array_equal(sim.render_video_bgr(), before)
    runner.close()


# --- lockstep --------------------------------------------------------------------------------------------------

def test_lockstep_steps_only_on_a_goal_for_the_frame_sent_last(sim):
    from so101_deploy.core.messages import decode

    runner = SimRunner(sim, seed=0, camera=False)
    runner.step_on = "goal"
    runner.publish(force_frame=True)
    first = runner.publish(force_frame=True)  # a re-send: the goal for state 0 is now stale
    fid = decode("joint_state", first[0][1], first[0][2]).frame_id
    goal = sim.goal_rad()
    assert not runner.lockstep_goal(goal, fid, "watchdog")  # a hold goal: the sim waits for the loop
    assert not runner.lockstep_goal(goal, fid - 1, "action")  # computed from the older publish
    assert runner.ignored == {"watchdog": 1, "stale": 1} and sim.step_count == 0
    assert runner.lockstep_goal(goal, fid, "action")
    runner.tick()
    assert sim.step_count == 1


def test_lockstep_pacer_resends_after_a_few_cycles_not_a_fixed_wait():
    from so101_deploy.sim.evaluation import LockstepPacer

    p = LockstepPacer(floor_s=0.25)
    assert p.stalled(0.0), "nothing sent yet: send the first frame"
    p.sent(10.0)
    assert not p.stalled(10.2) and p.stalled(10.3)
    for k in range(10):  # slow cycles of 0.5 s (learned perception on a CPU)
        p.sent(20.0 + k)
        p.goal(20.5 + k)
    assert p.timeout_s() == pytest.approx(2.0)
    p.sent(40.0)
    assert not p.stalled(41.5) and p.stalled(42.1)
    with pytest.raises(ValueError):
        LockstepPacer(0.0)
