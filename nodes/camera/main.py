"""Camera node: frames of SO101_CAMERA (device, video file or image folder) as `image` messages.

Inputs: `tick` (a dora timer, e.g. dora/timer/millis/33).  Output: `image` (640x480 BGR,
frame_id from 0, stamp_ns = capture time).  Settings: SO101_CAMERA, SO101_CAMERA_FPS,
SO101_CAMERA_LOOP, SO101_CAMERA_RESIZE, SO101_CAMERA_MAX_FRAMES (see so101_deploy.perception.camera).
"""

import sys

from so101_deploy.perception.camera import Camera, CameraError
from so101_deploy.core.messages import encode
from so101_deploy.core.node import SettingError, Settings, log, run

NODE = "camera"


def main() -> int:
    try:
        camera = Camera.from_settings(Settings(NODE))
        camera.open()
    except (SettingError, CameraError) as e:
        log(NODE, "error", str(e))
        return 2

    from dora import Node

    node = Node()
    sent = 0

    def on_tick() -> None:
        nonlocal sent
        try:
            frame = camera.poll()
        except CameraError as e:
            # a configuration problem does not fix itself: leave with the message, not an error per tick
            log(NODE, "error", str(e))
            raise SystemExit(2) from None
        if frame is not None:
            node.send_output("image", *encode("image", frame.image_bgr, frame_id=frame.frame_id,
                                              stamp_ns=frame.stamp_ns))
            sent += 1

    def on_stop() -> None:
        camera.close()
        log(NODE, "info", f"stopped after {sent} frames (reopened {camera.reconnects} time(s), "
                          f"looped {camera.loops} time(s))")

    run(NODE, inputs={}, on_input={}, on_tick={"tick": on_tick}, on_stop=on_stop, node=node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
