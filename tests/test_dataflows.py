"""Every dataflow the project ships is valid for dora 1.1 and only uses settings some node reads."""

import importlib.util
import subprocess
from pathlib import Path

import pytest
import yaml

from so101_deploy.core.dataflow import dora_executable

REPO_ROOT = Path(__file__).resolve().parent.parent

FLOWS = sorted(REPO_ROOT.glob("dataflow*.yml"))


def _hub_node(flow: Path, node: dict) -> bool:
    """A dora-hub node (an executable from its own venv, not a script of this project): only the
    dataflow.hub-*.yml flows use them, and the project's checks do not apply to them."""
    external = not str(node["path"]).endswith(".py")
    assert not external or flow.name.startswith("dataflow.hub-"), (flow.name, node["id"], node["path"])
    return external


def _node_spec(script: Path):
    """The NodeSpec a node script declares (importing it runs nothing: main() is behind __main__)."""
    spec = importlib.util.spec_from_file_location(f"node_{script.parent.name}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SPEC


def test_the_expected_flows_exist():
    names = {p.name for p in FLOWS}
    assert {"dataflow.yml", "dataflow.sim.yml", "dataflow.sim-oracle.yml", "dataflow.sim-scripted.yml",
            "dataflow.sim-bus.yml", "dataflow.replay.yml"} <= names


@pytest.mark.parametrize("flow", FLOWS, ids=lambda p: p.name)
def test_dora_validate(flow: Path):
    res = subprocess.run([dora_executable(), "validate", "--strict-types", str(flow)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "wiring OK" in res.stdout + res.stderr and "All type annotations OK" in res.stdout + res.stderr


@pytest.mark.parametrize("flow", FLOWS, ids=lambda p: p.name)
def test_every_message_input_carries_its_dora_type(flow: Path):
    """Each input a project node decodes is annotated with its message's type (messages.DORA_TYPES), so
    `dora validate --strict-types` checks every message link, not only the ones someone remembered."""
    from so101_deploy.core.messages import DORA_TYPES
    from so101_deploy.core.node import RAW

    df = yaml.safe_load(flow.read_text())
    for node in df["nodes"]:
        if _hub_node(flow, node):
            continue
        spec = _node_spec(flow.parent / node["path"])
        for iid, src in (node.get("inputs") or {}).items():
            source = src["source"] if isinstance(src, dict) else src
            schema = spec.inputs.get(iid)
            if source.startswith("dora/") or schema is RAW or schema is None:
                continue
            assert (node.get("input_types") or {}).get(iid) == DORA_TYPES[schema], (flow.name, node["id"], iid)


def test_strict_validation_catches_a_type_mismatch(tmp_path):
    """A disparity wired into the observation's mask input: dora's own type check refuses it."""
    df = yaml.safe_load((REPO_ROOT / "dataflow.yml").read_text())
    for node in df["nodes"]:
        node["path"] = str(REPO_ROOT / node["path"])
        if node["id"] == "observation":
            node["inputs"]["mask"] = "depth/disparity"
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(df))
    res = subprocess.run([dora_executable(), "validate", "--strict-types", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0
    assert 'type mismatch on input "mask"' in res.stdout + res.stderr


@pytest.mark.parametrize("flow", FLOWS, ids=lambda p: p.name)
def test_nodes_exist_and_settings_are_declared(flow: Path):
    """Every SO101_ key a flow sets is one that node declares (its NodeSpec), so none is silently unused."""
    df = yaml.safe_load(flow.read_text())
    for node in df["nodes"]:
        if _hub_node(flow, node):
            continue
        script = flow.parent / node["path"]
        assert script.is_file(), f"{flow.name}: node {node['id']} path {node['path']}"
        declared = {s.key for s in _node_spec(script).settings}
        for key in (node.get("env") or {}):
            if key.startswith("SO101_"):
                assert key in declared, f"{flow.name}: node {node['id']} sets {key}, which it does not declare"


def test_every_node_declares_what_it_reads():
    """A node reads settings only through its declaration: no node script names a SO101_ key it does not
    declare, and every node script has a spec named after its folder."""
    for script in sorted((REPO_ROOT / "nodes").glob("*/main.py")):
        spec = _node_spec(script)
        assert spec.name == script.parent.name
        assert len({s.key for s in spec.settings}) == len(spec.settings), f"{spec.name}: a key declared twice"
