"""Recorder node: writes every input message to a recording folder that tests replay.

Settings: SO101_RECORD_DIR (required; one `<input id>.arrow` per input, see so101_deploy.core.recording)
and SO101_RECORD_TYPES (`input_id=schema,...`, e.g. `image=image,mask=seg_mask`; an input not
listed is recorded with the schema of its own name).  Every message is validated with its schema
before it is written; a rejected message is reported and not written.  Counts are printed at stop.
"""

import sys
from pathlib import Path

from so101_deploy.core.messages import SCHEMAS, Message
from so101_deploy.core.node import SettingError, Settings, log, run
from so101_deploy.core.recording import Recorder

NODE = "recorder"


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


def main() -> int:
    from dora import Node

    node = Node()
    settings = Settings(NODE)
    try:
        folder = Path(settings.str("SO101_RECORD_DIR", required=True))
        input_ids = sorted((node.node_config() or {}).get("inputs", {}))
        if not input_ids:
            raise SettingError(f"{NODE}: the node has no inputs in the dataflow YAML; nothing to record")
        types = parse_record_types(settings.str("SO101_RECORD_TYPES", ""), input_ids)
    except SettingError as e:
        log(NODE, "error", str(e))
        return 2
    recorder = Recorder(folder)
    log(NODE, "info", f"recording {types} to {folder.resolve()}")

    def record(input_id: str):
        def handler(msg: Message) -> None:
            recorder.record_message(input_id, msg)
        return handler

    def on_stop() -> None:
        recorder.close()
        counts = {topic: w.count for topic, w in recorder.writers.items()}
        log(NODE, "info", f"recorded {counts} to {folder.resolve()}")

    stats = run(NODE, inputs=types, on_input={i: record(i) for i in types}, on_stop=on_stop, node=node)
    if stats.rejected or stats.errors:
        log(NODE, "warning", f"{stats.rejected} message(s) rejected, {stats.errors} error(s); not recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
