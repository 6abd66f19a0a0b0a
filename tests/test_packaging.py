"""`pip install .` without the repository: the wheel ships the flows, and the commands find them.

The integration tests build a wheel from this checkout's files (copied to a temporary folder first, so
no stale ``build/`` of an earlier build leaks into it), install it with ``pip install --target``, and
run the commands with ``PYTHONPATH`` at that folder and the current folder a fresh temporary one: the
flows must come from ``so101_deploy/flows`` inside the installed package, and nothing may be written
into it.  The other tests check the order in which ``flows_root`` looks, in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from so101_deploy.core import dataflow
from so101_deploy.core.dataflow import DataflowError, flow_file, flows_root

REPO_ROOT = Path(__file__).resolve().parent.parent
# what a source distribution holds (MANIFEST.in + pyproject); enough to build the wheel
SOURCE_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
SOURCE_DIRS = ("shared", "nodes")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCE_FILES:
        shutil.copy2(REPO_ROOT / name, src / name)
    for flow in REPO_ROOT.glob("dataflow*.yml"):
        shutil.copy2(flow, src / flow.name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCE_DIRS:
        shutil.copytree(REPO_ROOT / name, src / name, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    res = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "wheel"),
                          str(src)], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = (tmp / "wheel").glob("so101_deploy-*.whl")
    site = tmp / "site"
    res = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    env = {k: v for k, v in os.environ.items() if k not in (dataflow.FLOWS_ENV, "PYTHONPATH")}
    # this interpreter's venv has the dependencies and `dora`; PYTHONPATH puts the installed copy
    # ahead of the editable install of the checkout
    env.update(PYTHONPATH=str(site), MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa",
               PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    return {"wheel": wheel, "site": site, "flows": site / "so101_deploy" / "flows", "env": env, "cwd": cwd}


def run_installed(installed: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=installed["cwd"], env=installed["env"],
                          capture_output=True, text=True, timeout=timeout)


def cli(installed: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_installed(installed, "-m", "so101_deploy.tools.cli", *args, timeout=timeout)


@pytest.mark.integration
def test_the_wheel_ships_every_flow_and_node_script(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for flow in REPO_ROOT.glob("dataflow*.yml"):
        assert f"so101_deploy/flows/{flow.name}" in names
    for script in REPO_ROOT.glob("nodes/*/main.py"):
        assert f"so101_deploy/flows/{script.relative_to(REPO_ROOT)}" in names
    assert "so101_deploy/data/calibration_so101_example.json" in names
    assert not [n for n in names if n.startswith(("tests/", "artifacts/", "so101_deploy/flows/out/"))]


@pytest.mark.integration
def test_the_import_comes_from_the_installed_copy(installed):
    res = run_installed(installed, "-c", "import so101_deploy; print(so101_deploy.__file__)")
    assert res.returncode == 0, res.stderr
    print(res.stdout.strip())
    assert Path(res.stdout.strip()) == installed["site"] / "so101_deploy" / "__init__.py"


@pytest.mark.integration
def test_installed_replay_demo_runs_the_packaged_flow(installed):
    out = installed["cwd"] / "replay"
    res = cli(installed, "replay-demo", "--out", str(out), "--seconds", "4", "--frames", "20")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"running: dora run {installed['flows'] / 'dataflow.replay.yml'} " in res.stdout
    assert "frame_id continuity: ok" in res.stdout and "video order: ok" in res.stdout
    assert (out / "recording" / "image.arrow").exists()
    assert not (installed["flows"] / "out").exists()  # dora's logs went to --out, not into the package


@pytest.mark.integration
def test_installed_demo_resolves_the_packaged_sim_flows(installed):
    res = cli(installed, "demo", "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: so101-deploy demo") and "--flows DIR" in res.stdout
    # the demo's own resolution: every flow it offers, prepared as it prepares them
    script = """
import json, sys
from pathlib import Path
from so101_deploy.core.dataflow import flow_file, flows_root, load, node_script, prepare
from so101_deploy.tools.demo import FLOWS
out = {"root": str(flows_root()), "monitor": str(node_script("monitor")), "flows": {}}
for name, file in FLOWS.items():
    df = load(prepare(flow_file(file), Path(sys.argv[1]) / file))
    out["flows"][name] = {"file": str(flow_file(file)), "nodes": [n["path"] for n in df["nodes"]],
                          "env": {k: v for n in df["nodes"] for k, v in (n.get("env") or {}).items()}}
print(json.dumps(out))
"""
    res = run_installed(installed, "-c", script, str(installed["cwd"] / "prepared"))
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    flows = installed["flows"]
    assert Path(got["root"]) == flows and Path(got["monitor"]) == flows / "nodes" / "monitor" / "main.py"
    assert Path(got["flows"]["sim"]["file"]) == flows / "dataflow.sim.yml"
    for name, flow in got["flows"].items():
        for path in flow["nodes"]:
            assert Path(path).is_file() and Path(path).is_relative_to(flows / "nodes"), (name, path)
    # the example calibration the bus flow names as shared/so101_deploy/data/... is the installed one
    assert Path(got["flows"]["bus"]["env"]["SO101_CALIBRATION"]) == \
        installed["site"] / "so101_deploy" / "data" / "calibration_so101_example.json"


@pytest.mark.integration
def test_installed_demo_runs_from_another_folder(installed):
    # 30 s, not the 15 a user might try: --stop-after counts from dora's start, and on two busy cores
    # importing torch in five nodes alone has taken over 20 s (nodes stopped before they connect
    # leave no report)
    res = cli(installed, "demo", "--seconds", "30", timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"[demo] flow {installed['flows'] / 'dataflow.sim.yml'}" in res.stdout
    out = installed["cwd"] / "artifacts" / "demo"  # the default --out, relative to the current folder
    assert (out / "report.md").exists() and (out / "report.json").exists()
    # the fixtures went to ./artifacts/fixtures and the packaged flow's artifacts/fixtures/... found them
    fixtures = installed["cwd"] / "artifacts" / "fixtures"
    prepared = yaml.safe_load((out / "dataflow.sim.demo.yml").read_text())
    settings = {k: v for n in prepared["nodes"] for k, v in (n.get("env") or {}).items()}
    assert settings["SO101_SEG_CHECKPOINT"] == str(fixtures / "seg" / "best.ckpt")
    assert settings["SO101_POLICY_CHECKPOINT"] == str(fixtures / "policy_snapshot.pt")
    assert all(Path(n["path"]).is_relative_to(installed["flows"] / "nodes") for n in prepared["nodes"])
    assert not (installed["flows"] / "artifacts").exists() and not (installed["flows"] / "out").exists()


@pytest.mark.integration
@pytest.mark.parametrize("command", ["replay-demo", "demo", "bench"])
def test_a_bad_flows_dir_is_a_one_line_error(installed, command):
    missing = installed["cwd"] / "no-such-flows"
    res = cli(installed, command, "--flows", str(missing), "--out", str(installed["cwd"] / f"bad-{command}"))
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout.splitlines() == [f"{command}: error: --flows {missing}: no dataflow*.yml in {missing}"]
    assert not (installed["cwd"] / f"bad-{command}").exists()


# --- flows_root's order, in this process -------------------------------------------------------------

def make_flows(folder: Path) -> Path:
    (folder / "nodes" / "monitor").mkdir(parents=True)
    (folder / "nodes" / "monitor" / "main.py").write_text("")
    (folder / "dataflow.yml").write_text("nodes: []\n")
    return folder


def test_flows_root_prefers_the_argument_then_the_environment_then_the_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(dataflow.FLOWS_ENV, raising=False)
    assert flows_root() == REPO_ROOT  # the tests run from a checkout
    env_dir, arg_dir = make_flows(tmp_path / "env"), make_flows(tmp_path / "arg")
    monkeypatch.setenv(dataflow.FLOWS_ENV, str(env_dir))
    assert flows_root() == env_dir
    assert flows_root(str(arg_dir)) == arg_dir
    monkeypatch.setenv(dataflow.FLOWS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataflowError, match=r"^\$SO101_FLOWS .*nowhere: no dataflow\*\.yml in "):
        flows_root()
    with pytest.raises(DataflowError, match=r"^dataflow.sim.yml not found in .*arg"):
        flow_file("dataflow.sim.yml", arg_dir)


def test_flows_root_falls_back_to_the_packaged_copy_then_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(dataflow.FLOWS_ENV, raising=False)
    site = tmp_path / "site"  # an installed layout: no checkout around the package
    monkeypatch.setattr(dataflow, "LIBRARY_ROOT", site)
    monkeypatch.setattr(dataflow, "PACKAGED_FLOWS", site / "so101_deploy" / "flows")
    assert dataflow.source_checkout() is None
    with pytest.raises(DataflowError) as err:
        flows_root()
    assert "\n" not in str(err.value) and "--flows DIR" in str(err.value) and str(site) in str(err.value)
    make_flows(site / "so101_deploy" / "flows")
    assert flows_root() == site / "so101_deploy" / "flows"
