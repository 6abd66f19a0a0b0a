"""Monitor node: side-by-side video (wrist view | mask | disparity) and a run report at stop.

Inputs (all optional: wire what the flow has): ``image``, ``mask``, ``disparity``, ``action``, ``goal``,
``joint_state``.  No outputs.  Settings: so101_deploy.tools.monitor.SETTINGS.
"""

import sys

from so101_deploy.core.gl import no_rendering_here

no_rendering_here()  # first: MuJoCo is used for joint ranges only here, never to render (~45 MB)

from so101_deploy.arm.safety import JointLimits
from so101_deploy.core.node import Handlers, NodeSpec, run_node
from so101_deploy.tools.monitor import SETTINGS, Monitor

INPUTS = {"image": "image", "mask": "seg_mask", "disparity": "disparity", "action": "action",
          "goal": "joint_goal", "joint_state": "joint_state"}
SPEC = NodeSpec("monitor", SETTINGS, inputs=INPUTS, optional=frozenset(INPUTS))


def build(settings, ctx) -> Handlers:
    mon = Monitor(settings["SO101_MONITOR_DIR"], fps=settings["SO101_MONITOR_FPS"], limits=JointLimits.from_model())

    def stop() -> None:
        ctx.log.info(f"report written to {mon.out_dir}: {mon.close()}")

    return Handlers(on_input={"image": mon.on_image, "mask": mon.on_mask, "disparity": mon.on_disparity,
                              "action": mon.on_action, "goal": mon.on_goal, "joint_state": mon.on_joint_state},
                    on_stop=stop, on_closed=lambda input_id: None)  # report what came until the end


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
