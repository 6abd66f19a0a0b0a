"""dataflow.yml itself -- the graph users run on the real arm -- under `dora run`, with only the camera
source (the generated video) and the serial port (the software STS3215 bus, through the real
scservo_sdk) swapped, and the project's fixture weights.  Checks what reached the (emulated) arm."""

import json

import numpy as np
import pytest

from so101_deploy.tools.bench import bench_graph, render_markdown
from so101_deploy.arm.calibration import EXAMPLE_PATH, Calibration
from so101_deploy.tools.fixtures import write_fixtures

SERVO_MAX_STEP_RAD = 0.05  # dataflow.yml's SO101_MAX_STEP_RAD for the servo node


@pytest.mark.integration
def test_real_robot_graph_on_video_and_software_bus(tmp_path):
    fx = write_fixtures(tmp_path / "fixtures")
    models = {"seg": fx["seg_checkpoint"], "depth": fx["depth_hf_dir"], "policy": fx["policy_snapshot"]}
    log = tmp_path / "bus_writes.jsonl"
    # runs until 15 s after the first action reached the arm (torque on), however long the start took
    res = bench_graph(models, "cpu", 300, tmp_path / "graph", seg_backend="onnx", depth_backend="onnx",
                      depth_size=266, bus_log=log, until_torque_s=15)
    dora_log = (tmp_path / "graph" / "dora.log").read_text()
    assert res["returncode"] == 0, dora_log[-3000:]
    rep = res["report"]
    # perception -> observation -> policy -> controller: new camera frames became goals, in order
    assert rep["messages"].get("action", 0) >= 3, dora_log[-3000:]
    assert rep["distinct_goal_frame_ids"] >= 3 and rep["goal_frame_ids_nondecreasing"]
    assert rep["goals_outside_limits"] == 0
    assert "gate_timed_out': 0" in dora_log  # seg and depth answered every frame the gate passed
    assert "unmatched=0" in dora_log  # so the observation paired every mask with its disparity

    # the bench's figures are complete: a timeline from capture to the servo write, memory per node
    line = res["timeline_ms"]
    for stamp in ("camera_out", "frame_gate_in", "frame_gate_out", "seg_in", "seg_out", "depth_in", "depth_out",
                  "observation_out", "policy_in", "policy_out", "controller_in", "controller_out", "servo_write"):
        assert stamp in line and line[stamp]["n"] >= 1, (stamp, sorted(line))
    assert line["camera_out"]["p50"] <= line["seg_out"]["p50"] <= line["observation_out"]["p50"] \
        <= line["controller_out"]["p50"] <= line["servo_write"]["p50"]
    assert res["startup_s"] is not None and res["startup_s"] > 0
    assert set(res["peak_rss_mb"]) == {"camera", "frame_gate", "seg", "depth", "observation", "policy", "controller",
                                       "servo", "estop", "monitor"}, res["peak_rss_mb"]
    assert set(res["peak_pss_mb"]) == set(res["peak_rss_mb"])
    # the CPU census covers every node, dora itself and the bench's software bus, each a share of one core
    assert set(res["cpu_percent"]) == set(res["peak_rss_mb"]) | {"dora", "software bus"}, res["cpu_percent"]
    assert all(0 <= v <= 100 * 2 + 5 for v in res["cpu_percent"].values()) and res["cpu_percent"]["depth"] > 0
    assert 0 < res["peak_pss_mb_total"] < res["peak_rss_mb_total"]  # the shared libraries counted once
    # a guard, not a speed figure: nodes that run no model import no torch and load no meshes (~300 MB each)
    assert res["peak_rss_mb_max_lean"] < 300, res["peak_rss_mb"]
    md = render_markdown({"machine": {"device": "cpu", "cpu_count": 2, "torch": "x"}, "command": "so101-deploy bench",
                          "graph_settings": {"seg_backend": "onnx", "depth_backend": "onnx", "depth_size": 266},
                          "handoff": {"p50_ms": 1500.0, "rate_hz": 0.66}, "graph": res,
                          "speedup_vs_handoff": round(res["control_rate_hz"] / 0.66, 2),
                          "int8_quantization": {"accepted": False, "reason": "int8 depth rejected: correlates 0.5"},
                          "int8_quantization_same_size": {"accepted": True, "correlation_min": 0.999, "check_frames": 4,
                                                          "int8_ms": 700.0, "fp32_ms": 1100.0},
                          "graph_int8_same_size": res, "speedup_int8_same_size_vs_handoff": 2.5})
    for part in ("### Graph run, depth at 266", "start-up, `dora run` -> first goal", "| servo | ", "MB PSS",
                 "CPU once goals flow", "| software bus | - | - |", "| servo_write | ", "| depth_out | ",
                 "speed-up over the hand-off pipeline",
                 "static int8 depth: int8 depth rejected", "correlates 0.999 (worst of 4", "**2.5x** the hand-off",
                 "### Graph run, depth at 266, int8 (the hand-off's size)"):
        assert part in md, (part, md)

    # what the servo node wrote on the bus: torque on, goals inside the calibrated range, bounded steps
    cal = Calibration.load(EXAMPLE_PATH)
    writes = [json.loads(line) for line in log.read_text().splitlines()]
    goals = [w for w in writes if w["name"] == "Goal_Position"]
    assert goals, "no goal was written"
    by_id: dict[int, list[int]] = {}
    for w in goals:
        by_id.setdefault(w["id"], []).append(w["value"])
    step_limit = SERVO_MAX_STEP_RAD / (2 * np.pi / 4096) + 1.5  # rad -> steps, plus rounding
    for sid, values in by_id.items():
        i = int(np.flatnonzero(cal.ids == sid)[0])
        assert min(values) >= cal.range_min[i] and max(values) <= cal.range_max[i], (sid, min(values), max(values))
        assert np.max(np.abs(np.diff(values)), initial=0) <= step_limit, sid
    # and on stop every servo's torque was released
    last_torque = {w["id"]: w["value"] for w in writes if w["name"] == "Torque_Enable"}
    assert last_torque == {i: 0 for i in range(1, 7)}, last_torque
