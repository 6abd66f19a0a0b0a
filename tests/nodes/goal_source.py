"""Test node: publishes joint goals on `tick` and writes every `joint_state` it gets to a JSONL file.

Settings: SO101_TEST_OUT (JSONL path for joint_state, required), SO101_GOAL_PATTERN
(`wave`: a slow sine of 0.6 rad on every arm joint plus, every 10th goal, one far outside the
limits; `hold`: no goals at all), SO101_GOAL_STOP_AFTER_S (stop sending goals after this many
seconds, default: never), SO101_ESTOP_AT_S (send estop=1 at that time; optional).  Times count
from the first joint_state received (the servo node is up), so a slow start-up does not eat the pattern.
"""

import json
import math
import time

import numpy as np
from dora import Node

from so101_deploy.core.messages import decode, encode, now_ns
from so101_deploy.core.settings import Setting, Settings

s = Settings("goal_source", (Setting("SO101_TEST_OUT", "str", required=True),
                             Setting("SO101_GOAL_PATTERN", "choice", "wave", choices=("wave", "hold")),
                             Setting("SO101_GOAL_STOP_AFTER_S", "float", 1e9),
                             Setting("SO101_ESTOP_AT_S", "float", -1.0)))
out_path = s["SO101_TEST_OUT"]
pattern = s["SO101_GOAL_PATTERN"]
stop_after_s = s["SO101_GOAL_STOP_AFTER_S"]
estop_at_s = s["SO101_ESTOP_AT_S"]

node = Node()
t0 = None
sent = 0
estop_sent = False
with open(out_path, "a", buffering=1) as out:
    for event in node:
        if event["type"] == "STOP":
            break
        if event["type"] != "INPUT":
            continue
        if event["id"] == "joint_state":
            msg = decode("joint_state", event["value"], event["metadata"])
            meta = {k: v for k, v in msg.meta.items() if isinstance(v, (int, float, str, bool))}
            out.write(json.dumps({"pos": msg.data[0].tolist(), "vel": msg.data[1].tolist(), **meta}) + "\n")
            t0 = time.monotonic() if t0 is None else t0
            continue
        if event["id"] != "tick":
            continue
        if t0 is None:
            continue  # the servo node is not up yet
        now = time.monotonic()
        t = now - t0
        if estop_at_s >= 0 and t >= estop_at_s and not estop_sent:
            node.send_output("estop", *encode("estop", np.array([1], np.uint8), frame_id=0, stamp_ns=now_ns()))
            estop_sent = True
        if pattern == "hold" or t > stop_after_s:
            continue
        sent += 1
        if sent % 10 == 0:
            goal = np.array([5.0, -5.0, 5.0, -5.0, 5.0, 5.0])  # far outside every limit
        else:
            a = 0.6 * math.sin(2 * math.pi * t / 2.0)
            goal = np.array([a, a, -a, a, a, 0.5 + a])
        node.send_output("goal", *encode("joint_goal", goal, frame_id=sent, stamp_ns=now_ns()))
