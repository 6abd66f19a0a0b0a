"""Frame gate node: passes the newest camera frame to seg and depth once both answered the last one.

Inputs: ``image`` (camera frames), ``mask`` and ``disparity`` (the answers), ``tick`` (timer, for the
timeout).  Output: ``image`` (the frame both models work on, same frame_id and stamp_ns).  A camera frame
sent as a JPEG (the camera on another machine) arrives decoded (messages.decode) and leaves as bgr8; the
link statistics (bytes, encode/decode ms, capture -> gate) are logged at stop as ``link stats: {json}``.
Settings: so101_deploy.perception.frame_gate.SETTINGS.  See so101_deploy.perception.frame_gate for why.
"""

import json
import sys
import time

from so101_deploy.core.messages import Message, encode
from so101_deploy.core.node import RAW, Handlers, NodeSpec, StartError, run_node
from so101_deploy.perception.frame_gate import SETTINGS, FrameGate, LinkStats

SPEC = NodeSpec("frame_gate", SETTINGS,
                inputs={"image": "image", "mask": "seg_mask", "disparity": "disparity", "tick": RAW},
                outputs=("image", "depth_image"))


def build(settings, ctx) -> Handlers:
    gate = FrameGate(timeout_s=settings["SO101_GATE_TIMEOUT_S"], order=settings["SO101_GATE_ORDER"])
    link = LinkStats()
    wired = ctx.node_config().get("outputs")
    if gate.order == "seg_first" and wired is not None and "depth_image" not in wired:
        raise StartError("frame_gate: SO101_GATE_ORDER=seg_first sends depth its frame on output 'depth_image': "
                         "add it to the gate's outputs and wire depth's image input to frame_gate/depth_image")

    def on_image(msg: Message) -> None:
        link.add(msg, time.time_ns())
        send(gate.on_image(msg, time.monotonic()))

    def on_stop() -> None:
        ctx.log.info(f"counters: {gate.counters.as_meta()}")
        ctx.log.info(f"link stats: {json.dumps(link.summary())}")

    def send(msg: Message | None) -> None:
        if msg is not None:
            ctx.send("image", *encode("image", msg.data, **msg.meta))
        ready = gate.take_depth()  # seg_first: the mask of the frame in flight is back
        if ready is not None:
            ctx.send("depth_image", *encode("image", ready.data, **ready.meta))

    return Handlers(
        on_input={"image": on_image,
                  "mask": lambda m: send(gate.on_result("mask", m.frame_id, time.monotonic())),
                  "disparity": lambda m: send(gate.on_result("disparity", m.frame_id, time.monotonic()))},
        on_tick={"tick": lambda: send(gate.on_tick(time.monotonic()))},
        on_stop=on_stop)


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
