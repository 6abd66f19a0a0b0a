"""Viewer node: a live rerun view of the graph (camera, mask, disparity as depth, the policy's observation,
actions, the Cartesian target, joints, the arm in 3-D, safety events, e-stop, per-stage latency).

Inputs (all optional: wire what the flow has, each with ``queue_size: 1`` so a slow viewer drops old
messages and never holds up the control path): ``image``, ``mask``, ``disparity``, ``observation``,
``action``, ``goal``, ``joint_state``, ``estop``.  No outputs.  Settings: so101_deploy.tools.viewer.SETTINGS
(SO101_VIEW_MODE serve|save|spawn|connect).  See so101_deploy.tools.viewer for the entities.
"""

import sys

from so101_deploy.core.node import Handlers, NodeSpec, StartError, run_node
from so101_deploy.tools.viewer import INPUTS, SETTINGS, view_from_settings

SPEC = NodeSpec("viewer", SETTINGS, inputs=INPUTS, optional=frozenset(INPUTS))


def build(settings, ctx) -> Handlers:
    try:
        view, where = view_from_settings(settings)
    except (OSError, RuntimeError, ValueError) as e:  # a port in use, no desktop viewer to spawn, ...
        raise StartError(f"viewer: cannot open the {settings['SO101_VIEW_MODE']} view: {e}") from None
    ctx.log.info(f"rerun view ({settings['SO101_VIEW_MODE']}): {where}")

    def stop() -> None:
        view.rec.flush()
        view.rec.disconnect()
        ctx.log.info(f"logged {sum(view.counts.values())} rows to {len(view.counts)} entities: {where}")

    # an input whose node is gone: the others keep being shown until the run stops
    return Handlers(on_input=view.handlers(), on_stop=stop, on_closed=lambda input_id: None)


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
