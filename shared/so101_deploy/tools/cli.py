"""The ``so101-deploy`` command line.

Each subcommand lives in its own module with ``configure_parser(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs, so ``--help`` stays fast and a command's heavy
dependencies (torch, mujoco) are not loaded by the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from so101_deploy import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("so101_deploy.tools.demo", "the main job: the full graph on the simulated arm; writes a report and a video"),
    "bench": ("so101_deploy.tools.bench", "measure stage latencies, the hand-off pipeline and this graph on this machine"),
    "doctor": ("so101_deploy.tools.doctor", "check this machine, and optionally the camera, bus and checkpoints"),
    "camera-check": ("so101_deploy.tools.camera_check", "open a camera source and report what it delivers"),
    "calibrate-camera": ("so101_deploy.tools.calibrate_camera",
                         "checkerboard calibration of the wrist camera (photos or live) -> SO101_CAMERA_CALIBRATION JSON"),
    "camera-proof": ("so101_deploy.tools.camera_proof",
                     "prove the camera remap in the simulator: calibrate a wide distorted camera, remap, compare"),
    "camera-overlay": ("so101_deploy.tools.camera_overlay",
                       "check the wrist camera's mounting pose: a photo with the sim's finger outlines, side by side"),
    "make-video": ("so101_deploy.tools.make_video", "write the project's generated test video (a cube seen from the wrist)"),
    "replay-demo": ("so101_deploy.tools.replay", "run the replay dataflow (generated video -> camera -> recorder)"),
    "emulate-bus": ("so101_deploy.tools.emulate_bus", "a software bus of six STS3215 servos on a pty that scservo_sdk talks to"),
    "fixtures": ("so101_deploy.tools.fixtures", "write deterministic random-weight model files in the real checkpoint formats"),
    "check-flow": ("so101_deploy.tools.check_flow", "check a dataflow's wiring and settings against what each node declares"),
    "infer": ("so101_deploy.tools.infer", "run seg, depth, observation and policy offline on image files; write outputs"),
    "faults": ("so101_deploy.tools.faults", "run the fault matrix (kill -9 nodes, e-stop, sag, bad settings) on the software bus; write docs/faults.md"),
    "quantize-depth": ("so101_deploy.tools.quantize", "a static int8 export of the depth model, kept only if its observation agrees with fp32's"),
    "view": ("so101_deploy.tools.viewer", "turn a recording folder into a rerun .rrd with the live view's entities"),
    "evaluate": ("so101_deploy.tools.evaluate",
                 "pre-flight: a checkpoint (or the scripted policy) on training's task in the simulator through this graph; "
                 "success rate with its 95-percent interval, deployment knobs, --sweep"),
    "sim-lift": ("so101_deploy.tools.sim_lift", "scripted cube lift in the MuJoCo sim through controller + safety (success rate, timings)"),
    "two-machines": ("so101_deploy.tools.two_machines", "the two-machine flow: write its cluster copy (flow), measure JPEG (jpeg) and the link on loopback (bench)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="so101-deploy",
        description="Run the pick-101 seg+depth DrQ-v2 policy on an SO-101 arm (dora-rs dataflow tools).",
    )
    parser.add_argument("--version", action="version", version=f"so101-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if "--help" in sys.argv or "-h" in sys.argv:
            # only the requested command's module is imported for its own help
            if name in sys.argv:
                importlib.import_module(module).configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    module = importlib.import_module(args._module)
    # re-parse with the command's own options now that its module is loaded
    full = argparse.ArgumentParser(prog=f"so101-deploy {args.command}", description=COMMANDS[args.command][1])
    module.configure_parser(full)
    return int(module.run(full.parse_args(argv[argv.index(args.command) + 1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
