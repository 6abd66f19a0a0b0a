"""``so101-deploy check-flow FILE.yml ...``: the checks every node runs at start, on a whole dataflow, without
starting anything: unknown or missing inputs, unknown outputs, unknown SO101_* settings (each with the
nearest valid name), settings that do not parse or are out of range, and inputs whose source is no node's
output.  Nodes that are not this project's (no NodeSpec in their script) are listed and skipped."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import yaml

from so101_deploy.core.settings import SettingError, Settings
from so101_deploy.core.wiring import NodeWiring, problems


def node_spec(script: Path):
    """The NodeSpec a node script declares, or None (not a project node).  Importing a node script runs
    nothing: its main() is behind ``if __name__ == "__main__"``."""
    if script.suffix != ".py" or not script.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"so101_check_{script.parent.name}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "SPEC", None)


def check_flow(path: Path) -> tuple[list[str], list[str]]:
    """(problems, skipped node ids) of one dataflow file."""
    flow = yaml.safe_load(path.read_text()) or {}
    nodes = flow.get("nodes") or []
    outputs = {str(n.get("id")): {str(o) for o in n.get("outputs") or []} for n in nodes}
    found, skipped = [], []
    for node in nodes:
        wiring = NodeWiring.from_yaml_node(node)
        for iid, src in wiring.inputs.items():
            source = src.get("source") if isinstance(src, dict) else src
            if isinstance(source, str) and not source.startswith("dora/"):
                producer, _, output = source.partition("/")
                if output not in outputs.get(producer, set()):
                    found.append(f"{wiring.node_id}: input {iid!r} reads {source!r}, which no node outputs")
        script = path.parent / str(node.get("path", ""))
        spec = node_spec(script)
        if spec is None:
            skipped.append(wiring.node_id)
            continue
        found += [f"{wiring.node_id}: {p}" for p in problems(spec, wiring)]
        env = {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
               for k, v in wiring.env.items()}
        settings = Settings(wiring.node_id, spec.settings, env)
        for s in spec.settings:
            if "${" in env.get(s.key, ""):
                continue  # dora expands ${VAR} from the environment when it starts the node
            try:
                settings[s.key]
            except SettingError as e:
                if s.required and s.key not in env:
                    continue  # a required setting may come from the shell; the node says so at start
                found.append(str(e))
    return found, skipped


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("flows", nargs="+", type=Path, help="dataflow YAML files")


def run(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.flows:
        if not path.is_file():
            print(f"check-flow: {path}: no such file", file=sys.stderr)
            bad += 1
            continue
        found, skipped = check_flow(path)
        for line in found:
            print(f"{path}: {line}")
        note = f" (not this project's, skipped: {', '.join(skipped)})" if skipped else ""
        print(f"{path}: {'OK' if not found else f'{len(found)} problem(s)'}{note}")
        bad += bool(found)
    return 1 if bad else 0
