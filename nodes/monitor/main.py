"""Monitor node: side-by-side video (wrist view | mask | disparity) and a run report at stop."""

from dora import Node

from so101_deploy.tools.monitor import Monitor
from so101_deploy.core.node import Settings, log, run
from so101_deploy.arm.safety import JointLimits

SCHEMAS = {"image": "image", "mask": "seg_mask", "disparity": "disparity", "action": "action",
           "goal": "joint_goal", "joint_state": "joint_state"}


def main() -> None:
    settings = Settings("monitor")
    mon = Monitor(settings.str("SO101_MONITOR_DIR", "artifacts/monitor"),
                  fps=settings.float("SO101_MONITOR_FPS", 10.0, min=1.0, max=120.0),
                  limits=JointLimits.from_model())
    handlers = {"image": mon.on_image, "mask": mon.on_mask, "disparity": mon.on_disparity,
                "action": mon.on_action, "goal": mon.on_goal, "joint_state": mon.on_joint_state}

    def stop() -> None:
        rep = mon.close()
        log("monitor", "info", f"report written to {mon.out_dir}: {rep}")

    run("monitor", SCHEMAS, handlers, on_stop=stop, node=Node())


if __name__ == "__main__":
    main()
