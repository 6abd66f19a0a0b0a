"""Seg node: EfficientViT-B0 + FPN segmentation of each camera frame.

Input: `image` (bgr8).  Output: `mask` (seg_mask, classes real6 = 0 unlabeled .. 5 moving_finger, the
frame's frame_id and stamp_ns, plus `latency_ms`).  Settings: so101_deploy.perception.seg.SETTINGS.
A missing or unreadable checkpoint ends the node at start with one line naming the setting and the file
(use restart_policy: never for this node).
"""

import sys

from so101_deploy.core.node import Handlers, NodeSpec, run_node
from so101_deploy.perception.seg import SETTINGS, SegNode, seg_model_from_settings

SPEC = NodeSpec("seg", SETTINGS, inputs={"image": "image"}, outputs=("mask",))


def build(settings, ctx) -> Handlers:
    model = seg_model_from_settings(settings)
    ctx.log.info(f"loaded {model.source}: {model.num_classes} classes, trained at {model.train_hw}, "
                 f"backend {model.backend} on {model.device}")
    seg = SegNode(model)
    return Handlers(on_input={"image": lambda msg: ctx.send("mask", *seg.handle(msg))})


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
