"""Seg node: EfficientViT-B0 + FPN segmentation of each camera frame.

Input: `image` (bgr8).  Output: `mask` (seg_mask, classes real6 = 0 unlabeled .. 5 moving_finger,
the frame's frame_id and stamp_ns, plus `latency_ms`).  Settings: SO101_SEG_CHECKPOINT (the
Lightning best.ckpt of training), SO101_SEG_BACKEND (torch | onnx), SO101_DEVICE (cpu | cuda),
SO101_ONNX_CACHE, SO101_THREADS.  A missing or unreadable checkpoint ends the node at start with
one error naming the setting and the file (use restart_policy: never for this node).
"""

import sys

from so101_deploy.core.node import SettingError, Settings, log, serve_frames
from so101_deploy.perception.seg import SegNode, seg_model_from_settings

NODE = "seg"


def main() -> int:
    settings = Settings(NODE)
    try:
        model = seg_model_from_settings(settings, log=lambda m: log(NODE, "info", m))
    except SettingError as e:
        log(NODE, "error", str(e))
        return 2
    log(NODE, "info", f"loaded {model.source}: {model.num_classes} classes, trained at {model.train_hw}, "
                      f"backend {model.backend} on {model.device}")
    return serve_frames(NODE, "mask", SegNode(model).handle)


if __name__ == "__main__":
    sys.exit(main())
