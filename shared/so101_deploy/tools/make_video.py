"""``so101-deploy make-video``: write the project's generated test video (a cube seen from the wrist).

The frames are :func:`so101_deploy.sim.synthetic.render_frame`'s: a ``.mp4`` (mp4v) or ``.avi``
(MJPG) file, or a folder of lossless PNG frames when ``--out`` has no suffix.  Exit code 2 when
the file cannot be written as asked.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from so101_deploy.sim.synthetic import HEIGHT, WIDTH, write_image_folder, write_video


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path,
                        help="a .mp4 (mp4v) or .avi (MJPG) file, or a folder (PNG frames) when it has no suffix")
    parser.add_argument("--frames", type=int, default=90, help="number of frames (default 90)")
    parser.add_argument("--fps", type=float, default=30.0, help="frame rate written in the video (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="scene variant (default 0)")
    parser.add_argument("--still", action="store_true", help="a still scene (cube and fingers do not move)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.out.suffix:
            write_video(args.out, args.frames, fps=args.fps, seed=args.seed, moving=not args.still)
            print(f"wrote {args.frames} frames {WIDTH}x{HEIGHT} at {args.fps:g} fps to {args.out}")
        else:
            write_image_folder(args.out, args.frames, seed=args.seed, moving=not args.still)
            print(f"wrote {args.frames} PNG frames {WIDTH}x{HEIGHT} to {args.out}/")
    except (ValueError, RuntimeError, OSError) as e:
        print(f"make-video: error: {e}")
        return 2
    return 0
