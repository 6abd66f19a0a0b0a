"""Safe checkpoint loading: training snapshots (OmegaConf cfg) load, code-running pickles are refused
before any of their code runs, and full loading is trusted per file: only the sha256 of the very file
(SO101_POLICY_TRUSTED_SHA256, or --trust-checkpoint) enables it; the old SO101_POLICY_TRUSTED enables
nothing, wherever it is set."""

from __future__ import annotations

import builtins
import hashlib
import importlib.util
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from so101_deploy.core.settings import Settings, SettingError
from so101_deploy.policy.drqv2 import SETTINGS as POLICY_SETTINGS
from so101_deploy.policy.drqv2 import policy_runner_from_settings
from so101_deploy.policy.safe_load import (CheckpointError, TrustMismatchError, UnsafeCheckpointError,
                                           load_checkpoint)
from so101_deploy.tools.fixtures import training_config, write_fixture_snapshots

TRUST = "SO101_POLICY_TRUSTED_SHA256"
LEGACY = "SO101_POLICY_TRUSTED"
POLICY_MAIN = Path(__file__).resolve().parent.parent / "nodes" / "policy" / "main.py"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No trust setting leaks in from the shell that runs the tests."""
    monkeypatch.delenv(LEGACY, raising=False)
    monkeypatch.delenv(TRUST, raising=False)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def policy_settings(env=None, **values):
    """The policy node's settings over ``values`` (or, with ``env=os.environ``, the process env)."""
    return Settings("policy", POLICY_SETTINGS, env if env is not None else values)


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
    digest = sha256(path)
    with pytest.raises(UnsafeCheckpointError, match=global_name) as err:
        load_checkpoint(path)
    assert not marker.exists()
    msg = str(err.value)
    # how to trust this very file: its sha256 and the exact setting line; no word of the retired switch
    assert digest in msg and f"'{TRUST}: {digest}'" in msg and "--trust-checkpoint" in msg
    assert "no longer honoured" not in msg and "\n" not in msg
    # the policy node refuses it too, naming the setting
    with pytest.raises(SettingError, match="SO101_POLICY_CHECKPOINT.*refused") as err:
        policy_runner_from_settings(policy_settings(SO101_POLICY_CHECKPOINT=str(path)))
    assert digest in str(err.value)
    assert not marker.exists()
    # the payload is live: trusting this file's hash really runs it (proves the refusal above mattered)
    load_checkpoint(path, trusted_sha256=digest)
    assert marker.exists()


def test_legacy_trust_in_the_node_env_enables_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = _malicious_snapshot(tmp_path / "evil.pt", _SystemPayload(marker))
    for value in ("1", "true", "yes"):  # as a YAML env entry still carrying it would give it
        with pytest.raises(SettingError, match="SO101_POLICY_CHECKPOINT.*refused") as err:
            policy_runner_from_settings(policy_settings(SO101_POLICY_CHECKPOINT=str(path), SO101_POLICY_TRUSTED=value))
        msg = str(err.value)
        assert f"{LEGACY} is set but no longer honoured" in msg and f"'{TRUST}: {sha256(path)}'" in msg
        assert not marker.exists()


def test_legacy_trust_exported_in_the_shell_enables_nothing(tmp_path, monkeypatch, caplog):
    marker = tmp_path / "marker"
    path = _malicious_snapshot(tmp_path / "evil.pt", _ExecPayload(marker))
    monkeypatch.setenv(LEGACY, "1")
    monkeypatch.setenv("SO101_POLICY_CHECKPOINT", str(path))
    with pytest.raises(UnsafeCheckpointError, match="no longer honoured") as err:
        load_checkpoint(path)
    assert sha256(path) in str(err.value)
    with caplog.at_level(logging.WARNING), pytest.raises(SettingError, match="refused.*no longer honoured"):
        policy_runner_from_settings(policy_settings(env=os.environ))  # what the node reads under dora
    assert any(f"{LEGACY} is set but no longer honoured" in r.getMessage() for r in caplog.records)
    assert not marker.exists()


def test_a_safe_file_still_loads_with_the_legacy_switch_set(tmp_path, monkeypatch, caplog):
    paths = write_fixture_snapshots(tmp_path)
    monkeypatch.setenv(LEGACY, "1")
    with caplog.at_level(logging.WARNING):
        runner = policy_runner_from_settings(policy_settings(SO101_POLICY_CHECKPOINT=str(paths["policy_snapshot"])))
    assert runner.loaded.format == "snapshot"
    assert any("no longer honoured" in r.getMessage() for r in caplog.records)
    assert not any("full pickle" in r.getMessage() for r in caplog.records)


def test_a_wrong_hash_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "marker"
    path = _malicious_snapshot(tmp_path / "evil.pt", _SystemPayload(marker))
    digest = sha256(path)
    other = sha256(write_fixture_snapshots(tmp_path / "fx")["policy_snapshot"])  # the hash of another, real file
    for wrong in (other, "0" * 64):
        with pytest.raises(TrustMismatchError) as err:
            load_checkpoint(path, trusted_sha256=wrong)
        assert str(path) in str(err.value) and wrong in str(err.value) and digest in str(err.value)
        with pytest.raises(SettingError) as err:
            policy_runner_from_settings(policy_settings(SO101_POLICY_CHECKPOINT=str(path), **{TRUST: wrong}))
        msg = str(err.value)
        assert f"{TRUST}={wrong} does not match SO101_POLICY_CHECKPOINT={path}" in msg and digest in msg
        assert not marker.exists()


def test_the_right_hash_loads_in_full_with_a_warning(tmp_path, caplog):
    marker = tmp_path / "marker"
    path = _malicious_snapshot(tmp_path / "evil.pt", _ExecPayload(marker))
    digest = sha256(path)
    # the node's setting, in upper case (compared case-insensitively): the file is unpickled in full, so the
    # payload runs; the snapshot's weights are then incomplete, which the node reports as usual
    with caplog.at_level(logging.WARNING), pytest.raises(SettingError, match="SO101_POLICY_CHECKPOINT"):
        policy_runner_from_settings(policy_settings(SO101_POLICY_CHECKPOINT=str(path), **{TRUST: digest.upper()}))
    assert marker.read_text() == "pwned"
    warned = [r.getMessage() for r in caplog.records if "full pickle" in r.getMessage()]
    assert len(warned) == 1 and digest in warned[0] and "run code" in warned[0]


@pytest.mark.parametrize("bad", ["1", "true", "abc", "g" * 64, "0" * 63, "0" * 65, "sha256:" + "0" * 64])
def test_a_malformed_hash_is_a_setting_error(tmp_path, bad):
    path = _malicious_snapshot(tmp_path / "evil.pt", _SystemPayload(tmp_path / "marker"))
    settings = policy_settings(SO101_POLICY_CHECKPOINT=str(path), **{TRUST: bad})
    with pytest.raises(SettingError, match=f"^policy: {TRUST}=.*64 hex digits") as err:
        settings.check()
    assert "\n" not in str(err.value)
    with pytest.raises(SettingError, match=TRUST):
        policy_runner_from_settings(settings)
    with pytest.raises(ValueError, match="not a sha256"):
        load_checkpoint(path, trusted_sha256=bad)
    assert not (tmp_path / "marker").exists()


def _policy_main():
    spec = importlib.util.spec_from_file_location("entry_policy_trust", POLICY_MAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


class _NoDora:
    def __iter__(self):
        raise AssertionError("the event loop started despite a refused start")

    def send_output(self, *a):
        raise AssertionError("a message was sent despite a refused start")


@pytest.fixture
def _restore_logging():
    """run_node routes the root logger to the (captured) streams of its test; undo it afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_policy_node_entrypoint(tmp_path, capsys, _restore_logging):
    main = _policy_main()
    marker = tmp_path / "marker"
    path = _malicious_snapshot(tmp_path / "evil.pt", _SystemPayload(marker))
    # a malformed hash: one line naming the key, exit 2, before the file is touched
    rc = main(node=_NoDora(), env={"SO101_POLICY_CHECKPOINT": str(path), TRUST: "not-a-hash"})
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and TRUST in err[0] and "64 hex digits" in err[0], err
    # the retired switch in the node's env: refused, one error line with this file's hash to trust
    rc = main(node=_NoDora(), env={"SO101_POLICY_CHECKPOINT": str(path), LEGACY: "1"})
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert rc == 2 and len(errors) == 1 and f"'{TRUST}: {sha256(path)}'" in errors[0], err
    assert not marker.exists()


def test_cli_trust_checkpoint_prints_the_hash_and_loads_that_file(tmp_path, capsys):
    from so101_deploy.sim.synthetic import write_image_folder
    from so101_deploy.tools.cli import main as cli_main

    marker = tmp_path / "marker"
    path = _malicious_snapshot(tmp_path / "evil.pt", _SystemPayload(marker))
    frame = write_image_folder(tmp_path / "frames", frames=1)[0]
    # the policy is loaded first, so seg and depth are never opened here
    argv = ["infer", "--seg", str(tmp_path / "no-seg.ckpt"), "--depth", str(tmp_path / "no-depth"),
            "--policy", str(path), "--frames", str(frame), "--out", str(tmp_path / "out")]
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "refused" in err and sha256(path) in err and not marker.exists()
    rc = cli_main(argv + ["--trust-checkpoint"])
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "--trust-checkpoint" in line]
    assert len(warning) == 1 and sha256(path) in warning[0] and "run code" in warning[0], err
    assert marker.exists()  # loaded in full: the payload ran (then the file is not a policy: rc 2)
    assert rc == 2 and "--policy" in err


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
    trusted = load_checkpoint(tmp_path / "frac.pt", trusted_sha256=sha256(tmp_path / "frac.pt"))
    assert trusted["cfg"] == fractions.Fraction(1, 3)


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
