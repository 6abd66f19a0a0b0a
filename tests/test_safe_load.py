"""Safe checkpoint loading: training snapshots (OmegaConf cfg) load, code-running pickles are refused
before any of their code runs, and the explicit trust opt-in exists."""

from __future__ import annotations

import builtins
import os
import pickle

import pytest
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from so101_deploy.core.settings import Settings, SettingError
from so101_deploy.policy.drqv2 import SETTINGS as POLICY_SETTINGS
from so101_deploy.policy.drqv2 import policy_runner_from_settings
from so101_deploy.policy.safe_load import CheckpointError, UnsafeCheckpointError, load_checkpoint
from so101_deploy.tools.fixtures import training_config, write_fixture_snapshots


class _SystemPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _ExecPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _malicious_snapshot(path, payload):
    agent = {"encoder.convs_per_cam.0.0.weight": torch.zeros(32, 6, 3, 3)}
    torch.save({"_pretrain_step": 0, "agent": agent, "cfg": payload}, path)
    return path


@pytest.mark.parametrize("payload_class, global_name", [(_SystemPayload, "system"), (_ExecPayload, "builtins.exec")])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload_class, global_name):
    marker = tmp_path / "marker"
    path = _malicious_snapshot(tmp_path / "evil.pt", payload_class(marker))
    with pytest.raises(UnsafeCheckpointError, match=global_name) as err:
        load_checkpoint(path)
    assert not marker.exists()
    assert "--trust-checkpoint" in str(err.value) and "SO101_POLICY_TRUSTED" in str(err.value)
    # the policy node refuses it too, naming the setting
    with pytest.raises(SettingError, match="SO101_POLICY_CHECKPOINT.*refused"):
        policy_runner_from_settings(Settings("policy", POLICY_SETTINGS, {"SO101_POLICY_CHECKPOINT": str(path)}))
    assert not marker.exists()
    # the payload is live: the explicit opt-in really runs it (proves the refusal above mattered)
    load_checkpoint(path, trusted=True)
    assert marker.exists()


def test_plain_pickle_file_with_payload_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "legacy.pkl"
    path.write_bytes(pickle.dumps({"agent": {}, "cfg": _SystemPayload(marker)}))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_training_snapshot_with_omegaconf_cfg_loads_safely(tmp_path):
    paths = write_fixture_snapshots(tmp_path)
    snap = load_checkpoint(paths["policy_snapshot"])
    cfg = snap["cfg"]
    assert isinstance(cfg, DictConfig) and isinstance(cfg.method.actor_model.mlp_nodes, ListConfig)
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(training_config())
    assert len(snap["agent"]) == 98


def test_structured_and_interpolated_configs_load(tmp_path):
    cfg = OmegaConf.create({"a": 1, "b": "${a}", "c": [1.5, None, True, "x"], "d": {"e": {"f": [{"g": 2}]}}})
    typed = OmegaConf.structured({"n": 3})
    torch.save({"agent": {}, "cfg": cfg, "typed": typed}, tmp_path / "cfg.pt")
    out = load_checkpoint(tmp_path / "cfg.pt")
    assert out["cfg"].b == 1 and out["cfg"].c[2] is True and out["typed"].n == 3


def test_other_globals_need_trust(tmp_path):
    import fractions

    torch.save({"agent": {}, "cfg": fractions.Fraction(1, 3)}, tmp_path / "frac.pt")
    with pytest.raises(UnsafeCheckpointError, match="fractions.Fraction"):
        load_checkpoint(tmp_path / "frac.pt")
    assert load_checkpoint(tmp_path / "frac.pt", trusted=True)["cfg"] == fractions.Fraction(1, 3)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    paths = write_fixture_snapshots(tmp_path)
    data = paths["policy_handoff"].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: not a loadable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pt"):
        load_checkpoint(tmp_path / "text.pt")


def test_legacy_pickle_names_eval(tmp_path):
    class _EvalPayload:
        def __reduce__(self):
            return (builtins.eval, ("1 + 1",))

    path = tmp_path / "legacy_eval.pkl"
    path.write_bytes(pickle.dumps({"agent": {}, "cfg": _EvalPayload()}))
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        load_checkpoint(path)
