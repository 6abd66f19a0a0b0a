"""Depth node: Depth Anything V2 (Small) relative disparity of each camera frame.

Input: `image` (bgr8).  Output: `disparity` (32FC1, raw relative disparity, larger = nearer, the
frame's size, frame_id and stamp_ns, plus `latency_ms`).  Settings: SO101_DEPTH_MODEL (a Hugging
Face folder or the original depth_anything_v2_vits.pth), SO101_DEPTH_BACKEND (torch | onnx),
SO101_DEPTH_INPUT_SIZE (short side, multiple of 14; default 518), SO101_DEPTH_FP16 (cuda + torch
only), SO101_DEVICE (cpu | cuda), SO101_ONNX_CACHE, SO101_THREADS, SO101_DEPTH_WARMUP_HW (frame
size HxW to export/run once at start, default 480x640; "none" to skip).  A missing or unreadable
model ends the node at start with one error naming the setting and the file (use
restart_policy: never for this node).
"""

import sys

from so101_deploy.perception.depth import DepthNode, depth_model_from_settings
from so101_deploy.core.node import SettingError, Settings, log, serve_frames

NODE = "depth"


def main() -> int:
    settings = Settings(NODE)
    try:
        model = depth_model_from_settings(settings, log=lambda m: log(NODE, "info", m))
        warmup = settings.str("SO101_DEPTH_WARMUP_HW", "480x640")
        if warmup.lower() != "none":
            try:
                hw = tuple(int(v) for v in warmup.lower().split("x"))
                assert len(hw) == 2 and min(hw) > 0
            except (ValueError, AssertionError):
                raise SettingError(f"{NODE}: SO101_DEPTH_WARMUP_HW={warmup!r} must be HxW (e.g. 480x640) "
                                   f"or none") from None
            try:
                model.warmup(hw)  # exports the ONNX graph for this frame size before the first frame
            except Exception as e:  # noqa: BLE001 - report once and leave; a retry would fail the same way
                raise SettingError(f"{NODE}: warm-up of SO101_DEPTH_MODEL={model.source} at {warmup} failed: "
                                   f"{e}") from None
    except SettingError as e:
        log(NODE, "error", str(e))
        return 2
    log(NODE, "info", f"loaded {model.source}: input size {model.input_size}, backend {model.backend} on "
                      f"{model.device}{' fp16' if model.fp16 else ''}")
    return serve_frames(NODE, "disparity", DepthNode(model).handle)


if __name__ == "__main__":
    sys.exit(main())
