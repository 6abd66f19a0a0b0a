"""Every node starts the same way (core.node.run_node): a bad setting is one line naming the node and the
key, and exit code 2, before anything is loaded or opened; the event loop is the same for all."""

import importlib.util
from pathlib import Path

import pytest

from so101_deploy.core.node import RAW, FatalError, Handlers, NodeSpec, run_node
from so101_deploy.core.settings import Setting

from conftest import StandInNode as Events  # a stand-in dora node

NODES = sorted((Path(__file__).resolve().parent.parent / "nodes").glob("*/main.py"))


def load(script: Path):
    spec = importlib.util.spec_from_file_location(f"entry_{script.parent.name}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class NoDora:
    """A dora node that must never be reached: settings are checked before it is created or iterated."""

    def __iter__(self):
        raise AssertionError("the event loop started despite a bad setting")

    def send_output(self, *a):
        raise AssertionError("a message was sent despite a bad setting")


def bad_value(s: Setting) -> str:
    return {"float": "fast", "int": "1.5", "bool": "maybe", "choice": "no-such-choice"}.get(s.kind, "")


def test_every_node_has_one_entrypoint():
    names = {p.parent.name for p in NODES}
    assert names >= {"camera", "frame_gate", "seg", "depth", "observation", "policy", "controller", "servo", "estop",
                     "recorder", "monitor", "sim_arm", "scripted_policy", "viewer", "lerobot_adapter"}, names
    for script in NODES:
        module = load(script)
        assert isinstance(module.SPEC, NodeSpec) and module.SPEC.name == script.parent.name
        assert callable(module.build) and callable(module.main)
        assert "run_node(SPEC, build" in script.read_text(), f"{script} does not start through run_node"


@pytest.mark.parametrize("script", NODES, ids=lambda p: p.parent.name)
def test_a_bad_setting_is_one_line_and_exit_2(script: Path, capsys):
    module = load(script)
    typed = [s for s in module.SPEC.settings if s.kind != "str"]
    required = [s for s in module.SPEC.settings if s.required]
    if typed:
        target = typed[0]
        env = {s.key: "x" for s in required}
        env[target.key] = bad_value(target)
    elif required:
        target = required[0]
        env = {}
    else:
        pytest.skip(f"{module.SPEC.name} declares no setting that can be wrong (only optional strings)")
    rc = module.main(node=NoDora(), env=env)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"[{module.SPEC.name}] error: {module.SPEC.name}: ") and target.key in err[0], err[0]


def test_the_loop_counts_rejects_survives_errors_and_always_stops(capsys):
    import numpy as np

    from so101_deploy.core.messages import encode

    value, meta = encode("estop", np.array([1], np.uint8), frame_id=0, stamp_ns=1)
    got, stopped = [], []

    def on_estop(msg):
        got.append(int(msg.data[0]))
        if len(got) == 2:
            raise RuntimeError("boom")

    spec = NodeSpec("t", (Setting("SO101_T", "int", 1, min=0),), inputs={"estop": "estop", "tick": RAW},
                    outputs=("out",))

    def build(settings, ctx):
        assert settings["SO101_T"] == 3
        return Handlers(on_input={"estop": on_estop}, on_tick={"tick": lambda: ctx.send("out", value, meta)},
                        on_stop=lambda: stopped.append(True))

    good = {"type": "INPUT", "id": "estop", "value": value, "metadata": meta}
    bad = {"type": "INPUT", "id": "estop", "value": value, "metadata": {}}  # no frame_id: rejected
    node = Events([good, bad, good, {"type": "INPUT", "id": "tick", "value": None}, good, {"type": "STOP"}, good])
    assert run_node(spec, build, node=node, env={"SO101_T": "3"}) == 0
    assert got == [1, 1, 1] and stopped == [True] and [s[0] for s in node.sent] == ["out"]
    out = capsys.readouterr()
    assert "[t] error: input 'estop' rejected" in out.err and "RuntimeError('boom')" in out.err
    assert "1 message(s) rejected, 1 handler error(s)" in out.err


def test_a_fatal_error_stops_the_loop_with_its_exit_code():
    stopped = []

    def build(settings, ctx):
        def tick():
            raise FatalError("source gone", exit_code=3)
        return Handlers(on_tick={"tick": tick}, on_stop=lambda: stopped.append(True))

    node = Events([{"type": "INPUT", "id": "tick", "value": None}] * 3)
    assert run_node(NodeSpec("t", inputs={"tick": RAW}), build, node=node, env={}) == 3
    assert stopped == [True]


def test_sending_an_undeclared_output_is_refused():
    def build(settings, ctx):
        return Handlers(on_tick={"tick": lambda: ctx.send("typo", None, {})})

    node = Events([{"type": "INPUT", "id": "tick", "value": None}])
    run_node(NodeSpec("t", inputs={"tick": RAW}, outputs=("out",)), build, node=node, env={})
    assert node.sent == []
