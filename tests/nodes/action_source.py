"""Test node: a light stand-in for the policy.  Sends Cartesian actions (schema ``action``,
``action_space`` cartesian, as the policy node does) on ``tick`` and writes every ``joint_state`` it
gets (time, state, torque, e-stop, events, pose) to a JSONL file, so a test sees the servo node's safe
state as it changes.

Inputs: ``tick`` (a dora timer: the action rate), ``joint_state`` (servo/joint_state; when it closes,
the arm side is gone and this node stops, as the camera does).  Output: ``action``.

Settings: SO101_TEST_OUT (JSONL path, required); SO101_ACTION_PATTERN (``wave``: the gripperframe target
goes round a circle in x/y at SO101_ACTION_SPEED_M_S whatever the tick rate, like a policy that keeps
moving; ``still``: zero motion, the target stays where the controller started it -- the arm should not
move); SO101_ACTION_GRIPPER (the gripper action, default 0); SO101_ACTION_STOP_AFTER_S (stop sending
actions this many seconds after the first joint_state; default never).  Times count from the first
joint_state (the servo node is up).
"""

import json
import math
import sys
import time

import numpy as np

from so101_deploy.core.messages import encode, now_ns
from so101_deploy.core.node import RAW, Handlers, NodeSpec, run_node
from so101_deploy.core.settings import Setting

SETTINGS = (Setting("SO101_TEST_OUT", "str", required=True, doc="JSONL file of the joint_state messages received"),
            Setting("SO101_ACTION_PATTERN", "choice", "wave", "wave or still", choices=("wave", "still")),
            Setting("SO101_ACTION_GRIPPER", "float", 0.0, "the gripper action", min=-1.0, max=1.0),
            Setting("SO101_ACTION_STOP_AFTER_S", "float", 1e9, "stop sending actions after this long"),
            Setting("SO101_ACTION_SPEED_M_S", "float", 0.05, "wave: speed of the target", min=0.0, max=1.0))
ACTION_SCALE_M = 0.02  # the controller's SO101_ACTION_SCALE_M default: target move per unit of action
SPEC = NodeSpec("action_source", SETTINGS, inputs={"tick": RAW, "joint_state": "joint_state"}, outputs=("action",))


def build(settings, ctx) -> Handlers:
    out = open(settings["SO101_TEST_OUT"], "a", buffering=1)
    pattern, gripper = settings["SO101_ACTION_PATTERN"], settings["SO101_ACTION_GRIPPER"]
    stop_after_s, speed = settings["SO101_ACTION_STOP_AFTER_S"], settings["SO101_ACTION_SPEED_M_S"]
    st = {"t0": None, "sent": 0, "last": None}

    def on_joint_state(msg) -> None:
        meta = {k: v for k, v in msg.meta.items() if isinstance(v, (int, float, str, bool))}
        out.write(json.dumps({"t": time.time(), "pos": msg.data[0].tolist(), **meta}) + "\n")
        if st["t0"] is None:
            st["t0"] = time.monotonic()

    def on_tick() -> None:
        if st["t0"] is None:
            return  # the servo node is not up yet
        now = time.monotonic()
        t = now - st["t0"]
        if t > stop_after_s:
            return
        dt = min(0.2, now - st["last"]) if st["last"] is not None else 0.0
        st["last"] = now
        if pattern == "wave":
            amp = min(1.0, speed * dt / ACTION_SCALE_M)  # target speed, whatever the tick rate
            a = np.array([amp * math.cos(2 * math.pi * t / 4.0), amp * math.sin(2 * math.pi * t / 4.0), 0.0, gripper])
        else:
            a = np.array([0.0, 0.0, 0.0, gripper])
        st["sent"] += 1
        ctx.send("action", *encode("action", a.astype(np.float32), frame_id=st["sent"], stamp_ns=now_ns(),
                                   action_space="cartesian"))

    def on_stop() -> None:
        out.close()
        ctx.log.info(f"sent {st['sent']} actions")

    return Handlers(on_input={"joint_state": on_joint_state}, on_tick={"tick": on_tick}, on_stop=on_stop)


if __name__ == "__main__":
    sys.exit(run_node(SPEC, build))
