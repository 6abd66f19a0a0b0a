"""Every dataflow the project ships is valid for dora 1.1 and only uses settings some node reads."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from so101_deploy.core.dataflow import dora_executable

REPO_ROOT = Path(__file__).resolve().parent.parent

FLOWS = sorted(REPO_ROOT.glob("dataflow*.yml"))
SETTING = re.compile(r"SO101_[A-Z0-9_]+")


def _settings_read_by_code() -> set[str]:
    names: set[str] = set()
    for folder in ("shared", "nodes"):
        for py in (REPO_ROOT / folder).rglob("*.py"):
            names |= set(SETTING.findall(py.read_text()))
    return names


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
def test_nodes_exist_and_settings_are_known(flow: Path):
    known = _settings_read_by_code()
    df = yaml.safe_load(flow.read_text())
    for node in df["nodes"]:
        assert (flow.parent / node["path"]).is_file(), f"{flow.name}: node {node['id']} path {node['path']}"
        for key in (node.get("env") or {}):
            if key.startswith("SO101_"):
                assert key in known, f"{flow.name}: node {node['id']} sets {key}, which no node reads (typo?)"
