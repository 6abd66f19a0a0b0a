"""Frame gate node: passes the newest camera frame to seg and depth once both answered the last one.

Inputs: ``image`` (camera frames), ``mask`` and ``disparity`` (the answers), ``tick`` (timer, for the
timeout).  Output: ``image`` (the frame both models work on, same frame_id and stamp_ns).
Settings: ``SO101_GATE_TIMEOUT_S`` (2.0: pass the next frame anyway when an answer does not come).
See so101_deploy.perception.frame_gate for why.
"""

import time

from dora import Node

from so101_deploy.perception.frame_gate import FrameGate
from so101_deploy.core.messages import Message, encode
from so101_deploy.core.node import Settings, log, run

NAME = "frame_gate"


def main() -> None:
    gate = FrameGate(timeout_s=Settings(NAME).float("SO101_GATE_TIMEOUT_S", 2.0, min=0.05, max=60.0))
    node = Node()

    def send(msg: Message | None) -> None:
        if msg is not None:
            node.send_output("image", *encode("image", msg.data, **msg.meta))

    run(NAME, {"image": "image", "mask": "seg_mask", "disparity": "disparity"},
        {"image": lambda m: send(gate.on_image(m, time.monotonic())),
         "mask": lambda m: send(gate.on_result("mask", m.frame_id, time.monotonic())),
         "disparity": lambda m: send(gate.on_result("disparity", m.frame_id, time.monotonic()))},
        on_tick={"tick": lambda: send(gate.on_tick(time.monotonic()))},
        on_stop=lambda: log(NAME, "info", f"counters: {gate.counters.as_meta()}"), node=node)


if __name__ == "__main__":
    main()
