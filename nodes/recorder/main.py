"""Recorder node: writes every input message to a recording folder that tests replay.

Inputs: any, as wired in the YAML; each is recorded to `<input id>.arrow` (see so101_deploy.core.recording)
after it is validated with its message schema (a rejected message is reported and not written).
`tick` (optional, a dora timer, e.g. `dora/timer/millis/250`) is not recorded: it flushes topics that went
quiet, so every message is in its file within a second and a `kill -9` loses at most the last second.
Without it a topic is flushed when its next message comes (at least every 0.5 s while it flows) and at stop.
Settings: SO101_RECORD_DIR (required) and SO101_RECORD_TYPES (`input_id=schema,...`, e.g.
`image=image,mask=seg_mask`; an input not listed is recorded with the schema of its own name).
Counts are printed at stop.
"""

import sys
from pathlib import Path

from so101_deploy.core.messages import SCHEMAS, Message
from so101_deploy.core.node import RAW, Handlers, NodeSpec, SettingError, StopNode, run_node
from so101_deploy.core.recording import Recorder
from so101_deploy.core.settings import Setting

NODE = "recorder"
SETTINGS = (
    Setting("SO101_RECORD_DIR", "str", required=True, doc="the recording folder (one <input id>.arrow per input)"),
    Setting("SO101_RECORD_TYPES", "str", "", "input_id=schema,... for inputs not named after their schema"),
)
TICK = "tick"
# inputs: whatever the YAML wires (read from dora's node config), all recorded but the optional flush timer
SPEC = NodeSpec(NODE, SETTINGS, inputs={TICK: RAW}, optional=frozenset({TICK}), any_inputs=True)


def parse_record_types(text: str | None, input_ids: list[str]) -> dict[str, str]:
    """input id -> message schema for every input, from `id=schema,...` (default: schema = id)."""
    given: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        input_id, sep, schema = (s.strip() for s in item.partition("="))
        if not sep or not input_id or not schema:
            raise SettingError(f"{NODE}: SO101_RECORD_TYPES item {item!r} must look like input_id=schema")
        if schema not in SCHEMAS:
            raise SettingError(f"{NODE}: SO101_RECORD_TYPES {item!r}: unknown schema {schema!r}; "
                               f"known: {sorted(SCHEMAS)}")
        given[input_id] = schema
    unknown = sorted(set(given) - set(input_ids))
    if unknown:
        raise SettingError(f"{NODE}: SO101_RECORD_TYPES names {unknown}, which are not inputs of this node "
                           f"(inputs: {input_ids})")
    types = {}
    for input_id in input_ids:
        schema = given.get(input_id, input_id)
        if schema not in SCHEMAS:
            raise SettingError(f"{NODE}: input {input_id!r} is not a message schema name; add "
                               f"{input_id}=<schema> to SO101_RECORD_TYPES (schemas: {sorted(SCHEMAS)})")
        types[input_id] = schema
    return types


def build(settings, ctx) -> Handlers:
    folder = Path(settings["SO101_RECORD_DIR"])
    wired = set(ctx.node_config().get("inputs", {}))
    input_ids = sorted(wired - {TICK})
    if not input_ids:
        raise SettingError(f"{NODE}: the node has no inputs in the dataflow YAML; nothing to record")
    types = parse_record_types(settings["SO101_RECORD_TYPES"], input_ids)
    recorder = Recorder(folder)
    ctx.log.info(f"recording {types} to {folder.resolve()}" + ("" if TICK in wired else
                 f" (no {TICK!r} timer input: a topic that goes quiet is flushed with its next message or at stop)"))

    def record(input_id: str):
        def handler(msg: Message) -> None:
            recorder.record_message(input_id, msg)
        return handler

    def on_stop() -> None:
        recorder.close()
        counts = {topic: w.count for topic, w in recorder.writers.items()}
        ctx.log.info(f"recorded {counts} to {folder.resolve()}")

    closed: set[str] = set()

    def on_closed(input_id: str) -> None:  # the others keep recording; when all are gone, the recorder ends
        closed.add(input_id)
        if set(types) <= closed:
            raise StopNode("every recorded input is gone")

    return Handlers(on_input={i: record(i) for i in types}, on_tick={TICK: recorder.flush_due}, on_stop=on_stop,
                    schemas=types, on_closed=on_closed)


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
