"""Wiring checks: the inputs, outputs and settings a dataflow gives a node against what the node declares.

``dora validate`` accepts a misspelt input id (``actoin``) or a misspelt setting (``SO101_MAX_STPE_RAD``):
the node then silently never gets its actions, or silently runs on a default.  Every node checks at start
what dora gives it (its own entry of the dataflow, from ``DORA_NODE_CONFIG``) against its
:class:`~so101_deploy.core.node.NodeSpec`, and refuses to start with one line naming the nearest valid
name.  ``so101-deploy check-flow FILE.yml`` runs the same checks on a whole dataflow without starting it.

Only the node's own YAML ``env`` is checked for unknown keys: the shell's environment (``SO101_VENV``,
say) is not the dataflow's business.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import yaml

from so101_deploy.core.settings import SettingError


@dataclass
class NodeWiring:
    """One node's entry of a dataflow: its id, input ids, output ids and YAML env."""

    node_id: str
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml_node(cls, node: Mapping[str, Any]) -> "NodeWiring":
        return cls(str(node.get("id")), dict(node.get("inputs") or {}), [str(o) for o in node.get("outputs") or []],
                   {str(k): v for k, v in (node.get("env") or {}).items()})


class _TolerantLoader(yaml.SafeLoader):
    """dora's config carries YAML tags of its own (``!Tcp``); read them as plain data."""


def _untagged(loader, suffix, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_TolerantLoader.add_multi_constructor("!", _untagged)


def from_dora_environment(environ: Mapping[str, str] | None = None) -> NodeWiring | None:
    """This node's wiring as dora gave it (``DORA_NODE_CONFIG``), or None outside dora."""
    text = (os.environ if environ is None else environ).get("DORA_NODE_CONFIG")
    if not text:
        return None
    try:
        config = yaml.load(text, Loader=_TolerantLoader) or {}
    except yaml.YAMLError:
        return None
    node_id = str(config.get("node_id", ""))
    run = config.get("run_config") or {}
    env: dict[str, Any] = {}
    for node in (config.get("dataflow_descriptor") or {}).get("nodes") or []:
        if str(node.get("id")) == node_id:
            env = {str(k): v for k, v in (node.get("env") or {}).items()}
    return NodeWiring(node_id, dict(run.get("inputs") or {}), [str(o) for o in run.get("outputs") or []], env)


def _nearest(name: str, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}(valid: {', '.join(valid) if valid else 'none'})"


def problems(spec, wiring: NodeWiring) -> list[str]:
    """Everything wrong with ``wiring`` for a node declared by ``spec`` (a NodeSpec), one line each."""
    out: list[str] = []
    declared_keys = {s.key for s in spec.settings}
    env = {k: ("" if v is None else str(v)) for k, v in wiring.env.items()}
    for key in sorted(k for k in env if k.startswith("SO101_") and k not in declared_keys):
        out.append(f"setting {key} is not one this node reads; {_nearest(key, declared_keys)}")
    if not spec.any_inputs:
        for iid in sorted(set(wiring.inputs) - set(spec.inputs)):
            out.append(f"input {iid!r} is not an input of this node; {_nearest(iid, spec.inputs)}")
    for iid in spec.inputs:
        if iid in wiring.inputs or iid in spec.optional:
            continue
        waiver = spec.waivers.get(iid)
        if waiver is not None and env.get(waiver[0], "").strip() == waiver[1]:
            continue
        how = f", or set {waiver[0]}: \"{waiver[1]}\" to run without it" if waiver else ""
        out.append(f"input {iid!r} is not wired (add it under inputs{how})")
    for oid in sorted(set(wiring.outputs) - set(spec.outputs)):
        out.append(f"output {oid!r} is not an output of this node; {_nearest(oid, spec.outputs)}")
    return out


def check(spec, wiring: NodeWiring | None) -> None:
    """Raise one :class:`SettingError` listing every problem (nothing to check outside dora)."""
    if wiring is None:
        return
    found = problems(spec, wiring)
    if found:
        raise SettingError(f"{spec.name}: " + "; ".join(found))
