"""Every dataflow the project ships is valid for dora 1.1 and only uses settings some node reads."""

import importlib.util
import subprocess
from pathlib import Path

import pytest
import yaml

from so101_deploy.core.dataflow import dora_executable

REPO_ROOT = Path(__file__).resolve().parent.parent

FLOWS = sorted(REPO_ROOT.glob("dataflow*.yml"))


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
    res = subprocess.run([dora_executable(), "validate", str(flow)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "wiring OK" in res.stdout + res.stderr


@pytest.mark.parametrize("flow", FLOWS, ids=lambda p: p.name)
def test_nodes_exist_and_settings_are_declared(flow: Path):
    """Every SO101_ key a flow sets is one that node declares (its NodeSpec), so none is silently unused."""
    df = yaml.safe_load(flow.read_text())
    for node in df["nodes"]:
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
