"""``so101-deploy evaluate`` end to end: real ``dora run`` of the sim flows, the sim arm counting
episodes, the report, the videos and the sweep plot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def evaluate(tmp_path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / "eval"
    res = subprocess.run([sys.executable, "-m", "so101_deploy.tools.cli", "evaluate", "--out", str(out), *args],
                         capture_output=True, text=True, timeout=timeout)
    report = out / "report.json"
    return res, (json.loads(report.read_text()) if report.exists() else None)


@pytest.mark.integration
def test_scripted_policy_through_the_graph_lifts_nine_of_ten(tmp_path):
    """The issue's bar: the scripted policy through sim -> controller (IK, safety) -> sim, training's
    reset, 200-step limit and success rule, >= 9/10 at zero latency."""
    res, report = evaluate(tmp_path, "--policy", "scripted", "--episodes", "10", "--no-video")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (config,) = report["configs"]
    s = config["summary"]
    assert config["complete"] and s["episodes"] == 10 and s["successes"] >= 9, s
    assert [e["seed"] for e in config["episodes"]] == list(range(10)), "one seed per episode, in order"
    won = [e for e in config["episodes"] if e["success"]]
    assert all(e["lift_height_m"] > 0.065 and e["time_to_grasp_s"] is not None for e in won)
    assert s["ci95"][0] > 0.5 and s["ci95"][1] == 1.0
    md = (tmp_path / "eval" / "summary.md").read_text()
    assert f"| latency=0,action_every=1 | {s['successes']}/10 |" in md


@pytest.mark.integration
def test_latency_sweep_shows_the_scripted_policy_degrade(tmp_path):
    res, report = evaluate(tmp_path, "--policy", "scripted", "--episodes", "3", "--no-video",
                           "--sweep", "latency=0,8")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rates = {c["knobs"]["latency"]: c["summary"]["successes"] for c in report["configs"]}
    assert rates[0] == 3 and rates[8] < rates[0], rates
    png = tmp_path / "eval" / "sweep.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "| latency=8,action_every=1 |" in res.stdout and "sweep.png" in res.stdout
    # each episode records its seed and re-sends (a rerun from the seed is the same episode on an idle
    # machine; under load dora's delivery order can differ, so that is not asserted here)
    assert all("seed" in e and "resends" in e for c in report["configs"] for e in c["episodes"])


@pytest.mark.integration
def test_fixture_checkpoint_runs_the_harness_with_oracle_perception(tmp_path):
    """The project's random-weight snapshot through observation -> policy -> controller -> sim with the
    oracle mask and disparity, noise and a scene variation on: it finishes its (short) episodes and
    leaves a video per episode."""
    res, report = evaluate(tmp_path, "--policy", "fixture", "--episodes", "2", "--episode-steps", "15",
                           "--noise", "0.05", "--vary", "camera_pos_m=0.003,cube_size_frac=0.1")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert report["policy_sha256"] and len(report["policy_sha256"]) == 64
    (config,) = report["configs"]
    assert config["complete"] and config["knobs"]["noise"] == 0.05
    for e in config["episodes"]:
        assert e["steps"] == 15 and e["policy_steps"] >= 15
        assert e["variation"]["cube_half_m"] != 0.015
        video = tmp_path / "eval" / "run" / "videos" / f"episode_{e['episode']:03d}_seed_{e['seed']}.mp4"
        assert e["video"] == str(video) and video.stat().st_size > 1000
    assert "not training's" in res.stdout, "a shortened episode is flagged as a harness check"


@pytest.mark.integration
def test_fixture_checkpoint_runs_the_harness_with_learned_perception(tmp_path):
    res, report = evaluate(tmp_path, "--policy", "fixture", "--perception", "learned", "--episodes", "1",
                           "--episode-steps", "4", "--no-video")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (config,) = report["configs"]
    assert config["complete"] and report["perception"] == "learned"
    assert config["episodes"][0]["policy_steps"] >= 4


@pytest.mark.parametrize("args, msg", [
    (["--policy", "scripted", "--perception", "learned"], "reads the cube position"),
    (["--policy", "no/such.pt"], "no file"),
    (["--policy", "scripted", "--sweep", "latency=a"], "expected a number"),
    (["--policy", "scripted", "--vary", "cube_size=0.1"], "unknown name"),
    (["--policy", "scripted", "--episodes", "0"], "--episodes"),
])
def test_usage_errors_are_one_line_before_anything_runs(tmp_path, args, msg):
    res, report = evaluate(tmp_path, *args, timeout=60)
    assert res.returncode == 2 and report is None
    (line,) = res.stdout.strip().splitlines()
    assert line.startswith("evaluate: error:") and msg in line, line
