"""Wiring checks: a misspelt input, output or setting is an error naming the nearest valid one, at node
start (from dora's own config of the node) and in `so101-deploy check-flow`, never a silent gap."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from so101_deploy.core.wiring import NodeWiring, from_dora_environment, problems
from so101_deploy.tools.check_flow import check_flow, node_spec

REPO = Path(__file__).resolve().parent.parent
SPECS = {n: node_spec(REPO / "nodes" / n / "main.py") for n in ("controller", "servo", "recorder", "camera")}
CONTROLLER_INPUTS = {"action": "policy/action", "joint_state": "servo/joint_state", "estop": "estop/estop",
                     "tick": "dora/timer/millis/20"}

# what dora 1.1 puts in DORA_NODE_CONFIG (captured from a real node, with dora's own !Tcp tag)
DORA_CONFIG = """dataflow_id: 01a2370e-fed4-789a-89dc-4290b5de608e
node_id: controller
run_config:
  inputs:
    actoin: policy/action
    tick: dora/timer/millis/100
  outputs:
  - goal
daemon_communication: !Tcp
  socket_addr: 127.0.0.1:34023
dataflow_descriptor:
  nodes:
  - id: other
    env:
      SO101_WHATEVER: 1
  - id: controller
    path: nodes/controller/main.py
    env:
      SO101_IK_GAIN: 0.5
      SO101_WATCHDOG: 1
dynamic: false
"""


def test_the_nodes_own_config_is_read_from_dora():
    w = from_dora_environment({"DORA_NODE_CONFIG": DORA_CONFIG})
    assert w.node_id == "controller" and set(w.inputs) == {"actoin", "tick"} and w.outputs == ["goal"]
    assert w.env == {"SO101_IK_GAIN": 0.5, "SO101_WATCHDOG": 1}  # its own env, not another node's
    assert from_dora_environment({}) is None


def test_misspelt_inputs_outputs_and_settings_name_the_nearest():
    w = from_dora_environment({"DORA_NODE_CONFIG": DORA_CONFIG})
    found = problems(SPECS["controller"], w)
    text = "\n".join(found)
    assert "input 'actoin' is not an input of this node; did you mean 'action'?" in text
    assert "input 'action' is not wired" in text and "input 'joint_state' is not wired" in text
    assert "setting SO101_WATCHDOG is not one this node reads; did you mean 'SO101_WATCHDOG_S'?" in text
    assert "input 'estop' is not wired (add it under inputs, or set SO101_ESTOP: \"none\"" in text
    w = NodeWiring("servo", {"goal": "c/goal", "estpo": "estop/estop", "tick": "t"}, ["joint_state", "jointstate"])
    text = "\n".join(problems(SPECS["servo"], w))
    assert "input 'estpo' is not an input of this node; did you mean 'estop'?" in text
    assert "output 'jointstate' is not an output of this node; did you mean 'joint_state'?" in text


def test_the_estop_input_is_required_unless_the_flow_says_none():
    ok = NodeWiring("controller", dict(CONTROLLER_INPUTS), ["goal"])
    assert problems(SPECS["controller"], ok) == []
    no_estop = {k: v for k, v in CONTROLLER_INPUTS.items() if k != "estop"}
    assert problems(SPECS["controller"], NodeWiring("controller", no_estop, ["goal"])) != []
    assert problems(SPECS["controller"], NodeWiring("controller", no_estop, ["goal"], {"SO101_ESTOP": "none"})) == []


def test_optional_and_dynamic_inputs():
    # the camera's `arm` input is optional; the recorder takes whatever the YAML wires
    assert problems(SPECS["camera"], NodeWiring("camera", {"tick": "t"}, ["image"], {"SO101_CAMERA": "0"})) == []
    assert problems(SPECS["recorder"], NodeWiring("recorder", {"anything": "a/b"}, [],
                                                  {"SO101_RECORD_DIR": "x"})) == []


def test_check_flow_passes_the_shipped_flows_and_refuses_a_typo(tmp_path):
    for flow in sorted(REPO.glob("dataflow*.yml")):
        found, _ = check_flow(flow)
        assert found == [], (flow.name, found)
    df = yaml.safe_load((REPO / "dataflow.yml").read_text())
    for node in df["nodes"]:
        node["path"] = str(REPO / node["path"])
        if node["id"] == "controller":
            node["inputs"]["actoin"] = node["inputs"].pop("action")
        if node["id"] == "servo":
            node["env"]["SO101_MAX_STEP_RAD"] = "1e300"
            node["env"]["SO101_MAX_STPE_RAD"] = "0.05"
        if node["id"] == "observation":
            node["inputs"]["mask"] = "seg/mask_typo"
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(df))
    res = subprocess.run([sys.executable, "-m", "so101_deploy.tools.cli", "check-flow", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert "controller: input 'actoin' is not an input of this node; did you mean 'action'?" in out
    assert "servo: setting SO101_MAX_STPE_RAD is not one this node reads; did you mean 'SO101_MAX_STEP_RAD'?" in out
    assert "servo: SO101_MAX_STEP_RAD='1e300' must be in [0.001, 0.5]" in out
    assert "observation: input 'mask' reads 'seg/mask_typo', which no node outputs" in out


@pytest.mark.integration
def test_a_misspelt_input_stops_the_node_and_the_run(tmp_path, venv_bin):
    """Under dora: the controller with `actoin` refuses to start with one line and exit 2; the nodes fed by
    it stop as their inputs close, and `dora run` ends by itself, non-zero."""
    from so101_deploy.core.dataflow import run_dataflow

    src = tmp_path / "src.py"
    src.write_text("from dora import Node\nfor e in Node():\n    if e['type'] == 'STOP':\n        break\n")
    flow = {"nodes": [
        {"id": "src", "path": str(src), "inputs": {"tick": "dora/timer/millis/100", "goal": "controller/goal"},
         "outputs": ["action", "joint_state", "estop"]},
        {"id": "controller", "path": str(REPO / "nodes" / "controller" / "main.py"),
         "inputs": {"actoin": "src/action", "joint_state": "src/joint_state", "estop": "src/estop",
                    "tick": "dora/timer/millis/50"}, "outputs": ["goal"]},
    ]}
    path = tmp_path / "flow.yml"
    path.write_text(yaml.safe_dump(flow))
    res = run_dataflow(path, 120, grace_s=60)  # ends by itself long before 120 s
    assert res.returncode != 0
    lines = [ln for ln in res.log.splitlines() if "stdout controller: [controller] error:" in ln]  # (dora repeats it)
    assert len(lines) == 1 and "input 'actoin' is not an input of this node; did you mean 'action'?" in lines[0]
    assert res.wall_s < 100
