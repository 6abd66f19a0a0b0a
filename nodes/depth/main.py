"""Depth node: Depth Anything V2 (Small) relative disparity of each camera frame.

Input: `image` (bgr8).  Output: `disparity` (32FC1, raw relative disparity, larger = nearer, the frame's
size, frame_id and stamp_ns, plus `latency_ms`).  Settings: so101_deploy.perception.depth.SETTINGS.
A missing or unreadable model ends the node at start with one line naming the setting and the file
(use restart_policy: never for this node).
"""

import sys

from so101_deploy.core.node import Handlers, NodeSpec, run_node
from so101_deploy.perception.depth import SETTINGS, DepthNode, depth_model_from_settings, warmup_from_settings

SPEC = NodeSpec("depth", SETTINGS, inputs={"image": "image"}, outputs=("disparity",))


def build(settings, ctx) -> Handlers:
    model = depth_model_from_settings(settings)
    warmup_from_settings(model, settings)  # exports the ONNX graph for the frame size before the first frame
    ctx.log.info(f"loaded {model.source}: input size {model.input_size}, backend {model.backend} on "
                 f"{model.device}{' fp16' if model.fp16 else ''}")
    depth = DepthNode(model)
    return Handlers(on_input={"image": lambda msg: ctx.send("disparity", *depth.handle(msg))})


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
