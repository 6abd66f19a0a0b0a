"""Model nodes on the onnx backend run without torch once their checkpoint was exported: the export is
found by the sha256 of the checkpoint file (so101_deploy.perception.onnx_backend manifests), and the
outputs are the same bits as from the run that exported it.  torch costs a node ~480 MB and seconds of
start-up (the bench reports both)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from so101_deploy.core.settings import Settings
from so101_deploy.perception.depth import SETTINGS as DEPTH_SETTINGS
from so101_deploy.perception.depth import depth_model_from_settings
from so101_deploy.perception.seg import SETTINGS as SEG_SETTINGS
from so101_deploy.perception.seg import seg_model_from_settings
from so101_deploy.policy.runtime import SETTINGS as POLICY_SETTINGS
from so101_deploy.policy.runtime import policy_runner_from_settings

BUILD = """
import json, sys
import numpy as np
from so101_deploy.core.settings import Settings
from so101_deploy.perception.depth import SETTINGS as D, depth_model_from_settings
from so101_deploy.perception.seg import SETTINGS as S, seg_model_from_settings
from so101_deploy.policy.runtime import SETTINGS as P, policy_runner_from_settings
env, out = json.loads(sys.argv[1]), sys.argv[2]
frame = np.load(out + ".in.npz")
seg = seg_model_from_settings(Settings("seg", S, env["seg"]))
depth = depth_model_from_settings(Settings("depth", D, env["depth"]))
policy = policy_runner_from_settings(Settings("policy", P, env["policy"]))
np.savez(out, mask=seg.predict(frame["image"]), disparity=depth.predict(frame["image"]),
         action=policy.act(frame["rgb"], frame["low"])[0])
print(json.dumps({"torch": "torch" in sys.modules, "timm": "timm" in sys.modules,
                  "transformers": "transformers" in sys.modules, "policy": policy.loaded.format}))
"""


def _env(fixture_weights, cache):
    return {"seg": {"SO101_SEG_CHECKPOINT": str(fixture_weights["seg_checkpoint"]), "SO101_SEG_BACKEND": "onnx",
                    "SO101_ONNX_CACHE": str(cache)},
            "depth": {"SO101_DEPTH_MODEL": str(fixture_weights["depth_hf_dir"]), "SO101_DEPTH_BACKEND": "onnx",
                      "SO101_DEPTH_INPUT_SIZE": "266", "SO101_ONNX_CACHE": str(cache)},
            "policy": {"SO101_POLICY_CHECKPOINT": str(fixture_weights["policy_snapshot"]),
                       "SO101_POLICY_BACKEND": "onnx", "SO101_ONNX_CACHE": str(cache)}}


def test_model_nodes_start_from_their_exports_without_torch(tmp_path, fixture_weights):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    rgb = rng.integers(0, 255, (3, 2, 84, 84)).astype(np.float32)
    low = rng.normal(size=(3, 18)).astype(np.float32)
    env = _env(fixture_weights, tmp_path / "onnx")
    # first start: loaded with torch, exported, manifests written
    seg = seg_model_from_settings(Settings("seg", SEG_SETTINGS, env["seg"]))
    depth = depth_model_from_settings(Settings("depth", DEPTH_SETTINGS, env["depth"]))
    policy = policy_runner_from_settings(Settings("policy", POLICY_SETTINGS, env["policy"]))
    assert seg.module is not None and depth.module is not None and policy.backend == "onnx"
    want = {"mask": seg.predict(image), "disparity": depth.predict(image), "action": policy.act(rgb, low)[0]}
    assert len(list((tmp_path / "onnx").glob("*-file-*.json"))) == 3

    # the next start, in a fresh process: no torch, no timm, no transformers, the same outputs
    out = tmp_path / "second"
    np.savez(str(out) + ".in.npz", image=image, rgb=rgb, low=low)
    proc = subprocess.run([sys.executable, "-c", BUILD, json.dumps(env), str(out)], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert modules == {"torch": False, "timm": False, "transformers": False,
                       "policy": "snapshot, from its ONNX export"}, modules
    got = np.load(str(out) + ".npz")
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_a_changed_checkpoint_is_not_served_an_old_export(tmp_path, fixture_weights):
    """The manifest is named by the file's bytes: other weights at the same path load with torch again."""
    import shutil

    from so101_deploy.tools.fixtures import write_fixture_snapshots

    path = tmp_path / "policy.pt"
    shutil.copy(fixture_weights["policy_snapshot"], path)
    env = {"SO101_POLICY_CHECKPOINT": str(path), "SO101_POLICY_BACKEND": "onnx",
           "SO101_ONNX_CACHE": str(tmp_path / "onnx")}
    first = policy_runner_from_settings(Settings("policy", POLICY_SETTINGS, env))
    again = policy_runner_from_settings(Settings("policy", POLICY_SETTINGS, env))
    assert type(first).__name__ == "PolicyRunner" and type(again).__name__ == "OnnxPolicyRunner"
    shutil.copy(write_fixture_snapshots(tmp_path / "other", seed=7)["policy_snapshot"], path)  # new weights, same name
    changed = policy_runner_from_settings(Settings("policy", POLICY_SETTINGS, env))
    assert type(changed).__name__ == "PolicyRunner"
    obs = np.full((3, 2, 84, 84), 100, np.float32), np.zeros((3, 18), np.float32)
    assert not np.array_equal(changed.act(*obs)[0], again.act(*obs)[0])


def test_a_corrupt_export_is_made_again(tmp_path, fixture_weights):
    env = _env(fixture_weights, tmp_path / "onnx")["seg"]
    seg_model_from_settings(Settings("seg", SEG_SETTINGS, env))
    for onnx in (tmp_path / "onnx").glob("seg*.onnx"):
        onnx.write_bytes(b"not an onnx graph")
    again = seg_model_from_settings(Settings("seg", SEG_SETTINGS, env))
    assert again.module is not None  # loaded with torch and exported again
    assert seg_model_from_settings(Settings("seg", SEG_SETTINGS, env)).module is None


def test_the_torch_backend_never_uses_a_manifest(tmp_path, fixture_weights):
    env = _env(fixture_weights, tmp_path / "onnx")["seg"]
    seg_model_from_settings(Settings("seg", SEG_SETTINGS, env))
    torch_model = seg_model_from_settings(Settings("seg", SEG_SETTINGS, {**env, "SO101_SEG_BACKEND": "torch"}))
    assert torch_model.module is not None and torch_model.session is None


def test_ort_spin_setting_reaches_the_sessions(tmp_path, fixture_weights):
    from so101_deploy.perception import onnx_backend

    env = _env(fixture_weights, tmp_path / "onnx")["seg"]
    try:
        for spin, entry in (("false", "0"), ("true", None)):
            seg = seg_model_from_settings(Settings("seg", SEG_SETTINGS, {**env, "SO101_ORT_SPIN": spin}))
            options = seg.session.session.get_session_options()
            if entry is None:  # onnxruntime's own default (spinning): no entry set
                with pytest.raises(Exception):
                    options.get_session_config_entry("session.intra_op.allow_spinning")
            else:
                assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
    finally:
        onnx_backend.SESSION_DEFAULTS["spinning"] = False


LEAN_MUJOCO = """
import os, runpy, sys
runpy.run_path(sys.argv[1], run_name="node_main")  # the node's module body, not its main()
import mujoco
from so101_deploy.arm.safety import JointLimits
JointLimits.from_model()
maps = open("/proc/self/maps").read()
print("MUJOCO_GL" in os.environ, "OSMesa" in maps or "LLVM" in maps)
"""


@pytest.mark.parametrize("node", ["servo", "controller", "observation", "monitor"])
def test_nodes_that_only_need_kinematics_never_load_the_renderer(node):
    """Under dora (DORA_NODE_CONFIG set) with the project's MUJOCO_GL=osmesa in the environment, a node that
    uses MuJoCo only for kinematics or joint ranges drops it before mujoco loads OSMesa and LLVM (~45 MB)."""
    main = Path(__file__).resolve().parent.parent / "nodes" / node / "main.py"
    env = {**os.environ, "MUJOCO_GL": "osmesa", "DORA_NODE_CONFIG": "{}"}
    out = subprocess.run([sys.executable, "-c", LEAN_MUJOCO, str(main)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"], (out.stdout, out.stderr[-2000:])
