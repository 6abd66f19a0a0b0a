"""The rebuilt DrQ-v2 actor against a reference written with torch.nn.functional from the raw
state-dict tensors, both checkpoint formats, and key/shape errors that name the key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from so101_deploy.core.messages import decode, encode, join_observation
from so101_deploy.core.settings import SettingError, Settings
from so101_deploy.policy.drqv2 import (CheckpointError, DrQV2Actor, DrQV2Spec, PolicyNode, PolicyRunner, load_policy,
                                       policy_runner_from_settings)
from so101_deploy.policy.drqv2 import SETTINGS as POLICY_SETTINGS
from so101_deploy.tools.fixtures import fixture_agent_state_dict, write_fixture_snapshots

A = "actor.actor_model."

# The encoder + actor keys of a real robobase DrQ-v2 snapshot's ``agent`` state dict, with their shapes
# for pick-101's seg+depth run, written out here rather than taken from the code under test.  Sources:
# upstream-pick101-facts.md section 3 (devlog hil-serl-so101/018 counts the keys), and robobase's module
# attributes: EncoderCNNMultiViewDownsampleWithStrides.convs_per_cam (Conv2d, norm, activation per
# layer), Actor.actor_model, MLPWithBottleneckFeatures.input_preprocess_modules / main_mlp / out_mlp.
SNAPSHOT_ENCODER_ACTOR = {
    "encoder.convs_per_cam.0.0.weight": (32, 6, 3, 3),
    "encoder.convs_per_cam.0.0.bias": (32,),
    "encoder.convs_per_cam.0.3.weight": (32, 32, 3, 3),
    "encoder.convs_per_cam.0.3.bias": (32,),
    "encoder.convs_per_cam.0.6.weight": (32, 32, 3, 3),
    "encoder.convs_per_cam.0.6.bias": (32,),
    "encoder.convs_per_cam.0.9.weight": (32, 32, 3, 3),
    "encoder.convs_per_cam.0.9.bias": (32,),
    "actor.actor_model.input_preprocess_modules.fused_view_feats.0.weight": (50, 39200),
    "actor.actor_model.input_preprocess_modules.fused_view_feats.0.bias": (50,),
    "actor.actor_model.input_preprocess_modules.fused_view_feats.1.weight": (50,),
    "actor.actor_model.input_preprocess_modules.fused_view_feats.1.bias": (50,),
    "actor.actor_model.input_preprocess_modules.low_dim_obs.0.weight": (50, 54),
    "actor.actor_model.input_preprocess_modules.low_dim_obs.0.bias": (50,),
    "actor.actor_model.input_preprocess_modules.low_dim_obs.1.weight": (50,),
    "actor.actor_model.input_preprocess_modules.low_dim_obs.1.bias": (50,),
    "actor.actor_model.main_mlp.0.weight": (256, 100),
    "actor.actor_model.main_mlp.0.bias": (256,),
    "actor.actor_model.main_mlp.3.weight": (256, 256),
    "actor.actor_model.main_mlp.3.bias": (256,),
    "actor.actor_model.out_mlp.0.weight": (4, 256),
    "actor.actor_model.out_mlp.0.bias": (4,),
}
# every MLPWithBottleneckFeatures head (the actor, each critic Q) has these, plus its unused GRU buffer
HEAD_KEYS = [f"input_preprocess_modules.{b}.{i}.{p}" for b in ("fused_view_feats", "low_dim_obs")
             for i in (0, 1) for p in ("weight", "bias")] + \
            [f"{layer}.{p}" for layer in ("main_mlp.0", "main_mlp.3", "out_mlp.0") for p in ("weight", "bias")] + \
            ["hidden_state"]
# the agent: encoder, actor, the duplicate DrQV2.actor_model, two critic Qs and the target critic: 98 tensors
SNAPSHOT_AGENT_KEYS = {k for k in SNAPSHOT_ENCODER_ACTOR if k.startswith("encoder.")} | {
    prefix + k for prefix in ("actor.actor_model.", "actor_model.", "critic.qs.0.", "critic.qs.1.",
                              "critic_target.qs.0.", "critic_target.qs.1.") for k in HEAD_KEYS}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return write_fixture_snapshots(tmp_path_factory.mktemp("policy"), seed=0)


@pytest.fixture(scope="module")
def runner(fixtures):
    return PolicyRunner.load(fixtures["policy_snapshot"])


def observation(seed):
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, 5, (3, 84, 84))
    disp = rng.integers(0, 256, (3, 84, 84))
    rgb = np.stack([seg, disp], axis=1).astype(np.float32)  # (3, 2, 84, 84) raw 0-255
    low = np.concatenate([rng.uniform(-1.5, 1.5, (3, 6)), rng.normal(0, 0.3, (3, 6)),
                          rng.uniform(0, 0.4, (3, 3)), rng.uniform(-3, 3, (3, 3))], axis=1).astype(np.float32)
    return rgb, low


def reference_action(agent, rgb, low):
    """DrQ-v2 eval action from the snapshot's tensors, spelled out with torch.nn.functional."""
    enc = "encoder.convs_per_cam.0."
    x = torch.from_numpy(rgb).reshape(1, 6, 84, 84) / 255.0 - 0.5
    for i, stride in zip((0, 3, 6, 9), (2, 1, 1, 1)):
        x = F.relu(F.conv2d(x, agent[f"{enc}{i}.weight"], agent[f"{enc}{i}.bias"], stride=stride))
    img = x.reshape(1, -1)
    assert img.shape[1] == 39200

    def bottleneck(name, v):
        p = f"{A}input_preprocess_modules.{name}."
        h = F.linear(v, agent[p + "0.weight"], agent[p + "0.bias"])
        return torch.tanh(F.layer_norm(h, (h.shape[1],), agent[p + "1.weight"], agent[p + "1.bias"], eps=1e-5))

    h = torch.cat([bottleneck("fused_view_feats", img),
                   bottleneck("low_dim_obs", torch.from_numpy(low).reshape(1, 54))], dim=1)
    h = F.relu(F.linear(h, agent[f"{A}main_mlp.0.weight"], agent[f"{A}main_mlp.0.bias"]))
    h = F.relu(F.linear(h, agent[f"{A}main_mlp.3.weight"], agent[f"{A}main_mlp.3.bias"]))
    return torch.tanh(F.linear(h, agent[f"{A}out_mlp.0.weight"], agent[f"{A}out_mlp.0.bias"]))[0].numpy()


def test_snapshot_fixture_has_the_training_layout(fixtures):
    snap = torch.load(fixtures["policy_snapshot"], weights_only=False)
    assert set(snap) == {"_pretrain_step", "_main_loop_iterations", "_global_env_episode", "agent", "cfg"}
    agent = snap["agent"]
    assert len(SNAPSHOT_AGENT_KEYS) == 98 and set(agent) == SNAPSHOT_AGENT_KEYS
    assert {k: tuple(agent[k].shape) for k in SNAPSHOT_ENCODER_ACTOR} == SNAPSHOT_ENCODER_ACTOR
    assert agent[A + "hidden_state"].shape == (1, 9, 128)  # (rnn layers, 8 train envs + 1 eval, rnn hidden size)
    assert agent["critic.qs.0.main_mlp.0.weight"].shape == (256, 104)  # 50 + 50 + the 4-D action
    cfg = snap["cfg"]
    assert isinstance(cfg, DictConfig)
    assert cfg.method._target_.endswith("DrQV2") and cfg.frame_stack == 3 and cfg.action_repeat == 2
    hand = torch.load(fixtures["policy_handoff"], weights_only=True)
    assert set(hand) == {"encoder", "actor"}
    assert "convs_per_cam.0.0.weight" in hand["encoder"] and "actor_model.out_mlp.0.weight" in hand["actor"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_action_equals_functional_reference(fixtures, runner, seed):
    agent = torch.load(fixtures["policy_snapshot"], weights_only=False)["agent"]
    rgb, low = observation(seed)
    action, space = runner.act(rgb, low)
    assert space == "cartesian" and action.dtype == np.float32 and action.shape == (4,)
    np.testing.assert_allclose(action, reference_action(agent, rgb, low), rtol=0, atol=1e-6)
    # not saturated, and it depends on the observation
    assert np.abs(action).max() < 0.95
    other, _ = runner.act(*observation(seed + 10))
    assert np.abs(other - action).max() > 1e-3


def test_both_formats_and_bare_agent_give_the_same_action(fixtures, runner, tmp_path):
    rgb, low = observation(5)
    want, _ = runner.act(rgb, low)
    hand = PolicyRunner.load(fixtures["policy_handoff"])
    assert hand.loaded.format == "handoff" and runner.loaded.format == "snapshot"
    np.testing.assert_array_equal(hand.act(rgb, low)[0], want)
    assert isinstance(runner.loaded.cfg, DictConfig)
    # hand-off actor keys without the actor_model. prefix, and the bare agent state dict
    h = torch.load(fixtures["policy_handoff"], weights_only=True)
    h["actor"] = {k.removeprefix("actor_model."): v for k, v in h["actor"].items()}
    torch.save(h, tmp_path / "bare_actor.pt")
    np.testing.assert_array_equal(PolicyRunner.load(tmp_path / "bare_actor.pt").act(rgb, low)[0], want)
    agent = torch.load(fixtures["policy_snapshot"], weights_only=False)["agent"]
    torch.save(agent, tmp_path / "agent.pt")
    loaded = load_policy(tmp_path / "agent.pt")
    assert loaded.format == "agent_state_dict"
    np.testing.assert_array_equal(PolicyRunner(loaded.model).act(rgb, low)[0], want)


def test_the_raw_0_255_image_goes_in_not_divided(runner, fixtures):
    # feeding rgb/255 (the hand-off's double normalisation) gives another action
    rgb, low = observation(3)
    a, _ = runner.act(rgb, low)
    b, _ = runner.act(rgb / 255.0, low)
    assert np.abs(a - b).max() > 1e-3


def test_action_dimension_comes_from_the_weights(tmp_path):
    agent6 = fixture_agent_state_dict(seed=1, action_dim=6)
    torch.save({"agent": agent6, "cfg": None}, tmp_path / "joint.pt")
    r = PolicyRunner.load(tmp_path / "joint.pt")
    rgb, low = observation(0)
    a, space = r.act(rgb, low)
    assert space == "joint_delta" and a.shape == (6,)
    np.testing.assert_allclose(a, reference_action(agent6, rgb, low), atol=1e-6)
    agent5 = fixture_agent_state_dict(seed=1, action_dim=5)
    torch.save({"agent": agent5}, tmp_path / "five.pt")
    with pytest.raises(CheckpointError, match="action dimension 5"):
        load_policy(tmp_path / "five.pt")


def _broken(fixtures, tmp_path, edit):
    snap = torch.load(fixtures["policy_snapshot"], weights_only=False)
    edit(snap["agent"])
    path = tmp_path / "broken.pt"
    torch.save(snap, path)
    return path


@pytest.mark.parametrize("key", [
    A + "main_mlp.3.weight",
    A + "input_preprocess_modules.low_dim_obs.1.bias",
    "encoder.convs_per_cam.0.6.bias",
    A + "out_mlp.0.weight",
])
def test_missing_key_is_named(fixtures, tmp_path, key):
    def drop(agent):
        del agent[key]
        agent.pop(key.replace("actor.", "", 1), None)  # the duplicate would otherwise not be missed

    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_policy(_broken(fixtures, tmp_path, drop))


def test_misshaped_and_unexpected_keys_are_named(fixtures, tmp_path):
    def reshape(agent):
        agent[A + "main_mlp.3.bias"] = torch.zeros(255)

    with pytest.raises(CheckpointError, match=r"main_mlp\.3\.bias.*\(255,\).*\(256,\)"):
        load_policy(_broken(fixtures, tmp_path, reshape))

    def conv(agent):
        agent["encoder.convs_per_cam.0.3.weight"] = torch.zeros(32, 32, 5, 5)

    with pytest.raises(CheckpointError, match=r"encoder\.convs_per_cam\.0\.3\.weight"):
        load_policy(_broken(fixtures, tmp_path, conv))

    def layer_norm_in_mlp(agent):  # the main_mlp LayerNorm mismatch hil-serl once had
        agent[A + "main_mlp.1.weight"] = torch.ones(256)

    with pytest.raises(CheckpointError, match=r"main_mlp\.1\.weight"):
        load_policy(_broken(fixtures, tmp_path, layer_norm_in_mlp))

    def nan(agent):
        agent[A + "out_mlp.0.bias"] = torch.full((4,), float("nan"))

    with pytest.raises(CheckpointError, match=r"out_mlp\.0\.bias.*NaN"):
        load_policy(_broken(fixtures, tmp_path, nan))


def test_not_a_policy_checkpoint(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "seg.ckpt")
    with pytest.raises(CheckpointError, match="not a DrQ-v2 checkpoint"):
        load_policy(tmp_path / "seg.ckpt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_policy(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_policy(tmp_path / "missing.pt")


def test_act_checks_its_inputs(runner):
    rgb, low = observation(0)
    with pytest.raises(ValueError, match=r"\(3, 2, 84, 84\)"):
        runner.act(rgb.reshape(6, 84, 84), low)
    with pytest.raises(ValueError, match=r"\(3, 18\)"):
        runner.act(rgb, low.reshape(54))
    bad = low.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        runner.act(rgb, bad)
    with pytest.raises(ValueError, match="0, 255"):
        runner.act(rgb * 2 + 300, low)


def test_onnx_backend_matches_torch(fixtures, runner):
    onnx = PolicyRunner.load(fixtures["policy_handoff"], backend="onnx")
    rgb, low = observation(7)
    np.testing.assert_allclose(onnx.act(rgb, low)[0], runner.act(rgb, low)[0], atol=1e-5)


def test_policy_node_sends_the_action_of_the_observation(runner):
    rgb, low = observation(4)
    value, meta = encode("observation", join_observation(rgb.astype(np.uint8), low), frame_id=42,
                         stamp_ns=123456789)
    out_value, out_meta = PolicyNode(runner).handle(decode("observation", value, meta))
    action = decode("action", out_value, out_meta)
    assert action.frame_id == 42 and action.stamp_ns == 123456789 and out_meta["action_space"] == "cartesian"
    np.testing.assert_array_equal(action.data, runner.act(rgb, low)[0])


def test_settings(fixtures):
    with pytest.raises(SettingError, match="SO101_POLICY_CHECKPOINT"):
        policy_runner_from_settings(Settings("policy", POLICY_SETTINGS, {}))
    with pytest.raises(SettingError, match="SO101_POLICY_CHECKPOINT=.*nope.pt.*not found"):
        policy_runner_from_settings(Settings("policy", POLICY_SETTINGS, {"SO101_POLICY_CHECKPOINT": "nope.pt"}))
    with pytest.raises(SettingError, match="SO101_POLICY_BACKEND"):
        policy_runner_from_settings(Settings("policy", POLICY_SETTINGS, {"SO101_POLICY_CHECKPOINT": str(fixtures["policy_snapshot"]),
                                                        "SO101_POLICY_BACKEND": "tensorrt"}))
    r = policy_runner_from_settings(Settings("policy", POLICY_SETTINGS, {"SO101_POLICY_CHECKPOINT": str(fixtures["policy_handoff"])}))
    assert r.action_space == "cartesian" and r.backend == "torch" and r.device == "cpu"


def test_module_keys_are_the_snapshot_keys():
    model = DrQV2Actor(DrQV2Spec())
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == SNAPSHOT_ENCODER_ACTOR


def test_snapshot_counters_are_passed_on_as_metadata(fixtures, tmp_path):
    snap = torch.load(fixtures["policy_snapshot"], weights_only=False)
    snap.update({"_pretrain_step": 7, "_main_loop_iterations": 123_457, "_global_env_episode": 31,
                 "best_eval_reward": 359.08})  # best_snapshot.pt also stores its reward
    torch.save(snap, tmp_path / "counters.pt")
    loaded = load_policy(tmp_path / "counters.pt")
    assert loaded.format == "snapshot"
    assert loaded.meta == {"_pretrain_step": 7, "_main_loop_iterations": 123_457, "_global_env_episode": 31}
    assert load_policy(fixtures["policy_handoff"]).meta == {}  # the hand-off form has no counters


@pytest.mark.integration
def test_observation_and_policy_nodes_in_dora(fixtures, tmp_path):
    """The real nodes in `dora run`: recorded sim oracle mask/disparity/joint states -> observation ->
    policy -> recorder; what they sent equals the in-process logic's result, frame by frame."""
    import os
    import sys
    from pathlib import Path

    import yaml

    from so101_deploy.core.dataflow import run_dataflow
    from so101_deploy.policy.observation import ObservationBuilder, ObservationOptions
    from so101_deploy.core.recording import read_recording

    repo = Path(__file__).resolve().parent.parent
    source = repo / "tests" / "data" / "recordings" / "obs_sim_oracle"
    record = tmp_path / "rec"
    flow = {"nodes": [
        {"id": "source", "path": str(repo / "tests" / "nodes" / "recording_source.py"),
         "env": {"SO101_SOURCE_DIR": str(source), "SO101_SOURCE_ORDER": "joint_state,mask,disparity"},
         "inputs": {"tick": "dora/timer/millis/20"}, "outputs": ["joint_state", "mask", "disparity"]},
        {"id": "observation", "path": str(repo / "nodes" / "observation" / "main.py"),
         "inputs": {"mask": {"source": "source/mask", "queue_size": 100},
                    "disparity": {"source": "source/disparity", "queue_size": 100},
                    "joint_state": {"source": "source/joint_state", "queue_size": 100}},
         "outputs": ["observation"]},
        {"id": "policy", "path": str(repo / "nodes" / "policy" / "main.py"),
         "env": {"SO101_POLICY_CHECKPOINT": str(fixtures["policy_snapshot"])},
         "inputs": {"observation": {"source": "observation/observation", "queue_size": 100}},
         "outputs": ["action"]},
        {"id": "recorder", "path": str(repo / "nodes" / "recorder" / "main.py"),
         "env": {"SO101_RECORD_DIR": str(record), "SO101_RECORD_TYPES": "observation=observation,action=action"},
         "inputs": {"observation": {"source": "observation/observation", "queue_size": 100},
                    "action": {"source": "policy/action", "queue_size": 100}}},
    ]}
    path = tmp_path / "flow.yml"
    path.write_text(yaml.safe_dump(flow, sort_keys=False))
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = run_dataflow(path, 180, extra_env=env, grace_s=60)  # a deadline: it ends when the source is done
    assert result.returncode == 0, result.log[-3000:]
    got = read_recording(record)

    rec = read_recording(source)
    builder = ObservationBuilder(ObservationOptions())
    events = sorted([(m.stamp_ns, 0, m) for m in rec["joint_state"]] + [(m.stamp_ns, 1, m) for m in rec["mask"]] +
                    [(m.stamp_ns, 2, m) for m in rec["disparity"]], key=lambda e: e[:2])
    want = []
    for _, kind, m in events:
        if kind == 0:
            builder.add_joint_state(m)
        else:
            obs = builder.add_mask(m) if kind == 1 else builder.add_disparity(m)
            if obs is not None:
                want.append(obs)
    assert len(want) == len(rec["mask"]) >= 4
    assert [m.frame_id for m in got["observation"]] == [o.frame_id for o in want], result.log[-3000:]
    assert [m.frame_id for m in got["action"]] == [o.frame_id for o in want]
    runner = PolicyRunner.load(fixtures["policy_snapshot"])
    for o, om, am in zip(want, got["observation"], got["action"]):
        np.testing.assert_array_equal(om.data, o.flat)
        assert om.stamp_ns == o.stamp_ns == am.stamp_ns and am.meta["action_space"] == "cartesian"
        np.testing.assert_array_equal(am.data, runner.act(o.rgb_f32, o.low_dim_state)[0])
    assert got["observation"][-1].meta["obs_built"] == len(want)
    assert "Traceback" not in result.log


def test_onnx_on_cuda_without_a_cuda_provider_is_refused(fixtures):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        PolicyRunner.load(fixtures["policy_handoff"], backend="onnx", device="cuda")


def test_snapshot_with_only_the_duplicate_actor_model_keys(fixtures, runner, tmp_path):
    snap = torch.load(fixtures["policy_snapshot"], weights_only=False)
    snap["agent"] = {k: v for k, v in snap["agent"].items() if not k.startswith("actor.")}
    torch.save(snap, tmp_path / "dup_only.pt")
    rgb, low = observation(8)
    np.testing.assert_array_equal(PolicyRunner.load(tmp_path / "dup_only.pt").act(rgb, low)[0], runner.act(rgb, low)[0])
