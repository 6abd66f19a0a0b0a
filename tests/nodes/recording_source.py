"""Test node: replays a recording folder's messages, one per `tick`, in time order.

Settings: SO101_SOURCE_DIR (a recording folder, see so101_deploy.core.recording; required),
SO101_SOURCE_ORDER (comma-separated topics: at equal stamp_ns the earlier topic goes first).
Each message leaves on the output named like its topic, exactly as it was recorded.
Waits SO101_SOURCE_START_TICKS ticks first so that slow-starting receivers are up, and leaves 10 ticks
after the last message: the nodes it feeds stop when their inputs close, so the run ends by itself.
"""

from dora import Node

from so101_deploy.core.recording import iter_messages
from so101_deploy.core.settings import Setting, Settings

s = Settings("recording_source", (Setting("SO101_SOURCE_DIR", "str", required=True),
                                  Setting("SO101_SOURCE_ORDER", "str", ""),
                                  Setting("SO101_SOURCE_START_TICKS", "int", 0, min=0)))
folder = s["SO101_SOURCE_DIR"]
order = [t for t in s["SO101_SOURCE_ORDER"].split(",") if t]
start_ticks = s["SO101_SOURCE_START_TICKS"]

from pathlib import Path  # noqa: E402

events = []
for path in sorted(Path(folder).glob("*.arrow")):
    topic = path.stem
    rank = order.index(topic) if topic in order else len(order)
    for value, meta, _ in iter_messages(path):
        events.append((int(meta["stamp_ns"]), rank, topic, value, meta))
events.sort(key=lambda e: e[:2])

node = Node()
ticks = 0
done_at = None
for event in node:
    if event["type"] == "STOP":
        break
    if event["type"] != "INPUT" or event["id"] != "tick":
        continue
    ticks += 1
    if ticks <= start_ticks:
        continue
    if not events:
        done_at = done_at or ticks
        if ticks - done_at >= 10:
            break
        continue
    _, _, topic, value, meta = events.pop(0)
    node.send_output(topic, value, meta)
