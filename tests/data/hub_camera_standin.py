"""A stand-in for dora-hub's `opencv-video-capture` 0.5.0 camera, sending exactly its format (its main.py: the
tick's metadata less `timestamp`, plus encoding/width/height/primitive): on each `tick`, one frame as a flat
uint8 Arrow array with metadata {"encoding": "bgr8", "width": W, "height": H, "primitive": "image"}, no
frame_id, no stamp_ns.  The frames are the project's generated test video, so a test can
tell them apart (``so101_deploy.sim.synthetic.read_frame_index``).  Used by tests/test_viewer.py."""

import os

import pyarrow as pa
from dora import Node

from so101_deploy.sim.synthetic import render_frame


def main() -> None:
    width, height = int(os.environ.get("IMAGE_WIDTH", "640")), int(os.environ.get("IMAGE_HEIGHT", "480"))
    node = Node()
    n = 0
    for event in node:
        if event["type"] == "INPUT" and event["id"] == "tick":
            frame = render_frame(n % 30)
            assert frame.shape == (height, width, 3)
            node.send_output("image", pa.array(frame.ravel()), {"encoding": "bgr8", "width": width, "height": height,
                                                          "primitive": "image"})
            n += 1


if __name__ == "__main__":
    main()
