"""Camera node: frames of SO101_CAMERA (device, video file or image folder) as `image` messages.

Inputs: `tick` (a dora timer polled faster than the frame rate; the node keeps SO101_CAMERA_FPS).
Output: `image` (640x480 BGR, frame_id from 0, stamp_ns = capture time); with SO101_CAMERA_JPEG_QUALITY
set, the same frame as a JPEG (`encoding: jpeg`, decoded by whichever node takes the image).
Settings: so101_deploy.perception.camera.SETTINGS. With SO101_CAMERA_CALIBRATION every frame is remapped
onto the simulator's wrist_cam (fovy and size read from the MJCF scene) by one precomputed table.
"""

import sys

from so101_deploy.core.log import leveled
from so101_deploy.core.messages import encode, encode_jpeg_image
from so101_deploy.core.node import RAW, FatalError, Handlers, NodeSpec, StartError, run_node
from so101_deploy.perception.camera import SETTINGS, Camera, CameraError
from so101_deploy.perception.camera_calibration import CalibrationError, rectifier_from_settings

# `arm` (optional, any message): its only use is that it closes when the arm side is gone, so the camera
# stops with the run instead of running on alone
SPEC = NodeSpec("camera", SETTINGS, inputs={"tick": RAW, "arm": RAW}, outputs=("image",),
                optional=frozenset({"arm"}))


def sim_camera():
    """The sim's wrist_cam pinhole, read from the compiled scene (mujoco is loaded only with a calibration)."""
    from so101_deploy.sim.scene import wrist_camera_pinhole

    return wrist_camera_pinhole()


def build(settings, ctx) -> Handlers:
    try:
        rectifier = rectifier_from_settings(settings, sim_camera, leveled(ctx.log))
        camera = Camera.from_settings(settings, rectifier=rectifier)
        camera.open()
    except (CameraError, CalibrationError) as e:
        raise StartError(str(e)) from None
    sent = 0
    quality = settings["SO101_CAMERA_JPEG_QUALITY"]
    if quality:
        ctx.log.info(f"sending frames as JPEG, quality {quality}")

    def on_tick() -> None:
        nonlocal sent
        try:
            frame = camera.poll()
        except CameraError as e:  # a configuration problem does not fix itself: leave with the message
            raise FatalError(str(e)) from None
        if frame is not None:
            if quality:
                ctx.send("image", *encode_jpeg_image(frame.image_bgr, quality, frame_id=frame.frame_id,
                                                     stamp_ns=frame.stamp_ns))
            else:
                ctx.send("image", *encode("image", frame.image_bgr, frame_id=frame.frame_id, stamp_ns=frame.stamp_ns))
            sent += 1

    def on_stop() -> None:
        camera.close()
        ctx.log.info(f"stopped after {sent} frames (reopened {camera.reconnects} time(s), "
                     f"looped {camera.loops} time(s))")

    return Handlers(on_tick={"tick": on_tick, "arm": lambda: None}, on_stop=on_stop)


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
