"""Test node: writes the metadata of every message it gets (any inputs, as wired in the YAML) to a JSONL
file, one line per message: ``{"t": unix time received, "input": id, ...scalar metadata}``.

Setting: SO101_TAP_OUT (the JSONL path).  It stops when all its inputs have closed (or at STOP).
"""

import json
import os
import sys
import time

from dora import Node


def main() -> int:
    try:
        node = Node()
    except RuntimeError as e:  # the dataflow never started (another node failed at start): one line
        print(f"[tap] error: no dataflow: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    open_inputs = set((node.node_config() or {}).get("inputs") or {})
    with open(os.environ["SO101_TAP_OUT"], "a", buffering=1) as out:
        for event in node:
            kind = event["type"]
            if kind == "STOP":
                break
            if kind == "INPUT_CLOSED":
                open_inputs.discard(event["id"])
                if not open_inputs:
                    break
                continue
            if kind != "INPUT":
                continue
            meta = {k: v for k, v in (event.get("metadata") or {}).items()
                    if isinstance(v, (int, float, str, bool)) and k != "timestamp"}
            out.write(json.dumps({"t": time.time(), "input": event["id"], **meta}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
