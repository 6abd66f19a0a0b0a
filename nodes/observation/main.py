"""Observation node: pairs mask + disparity of the same camera frame, adds the proprioception and
stacks 3 frames into the training observation (see so101_deploy.policy.observation).

Inputs: ``mask`` (seg_mask), ``disparity``, ``joint_state``, optional ``reset`` (any message: the frame
stack restarts, e.g. the sim arm's ``episode_start``).  Output: ``observation``.
Settings: so101_deploy.policy.observation.SETTINGS and SO101_GRIPPERFRAME.
"""

import sys

from so101_deploy.core.gl import no_rendering_here

no_rendering_here()  # first: MuJoCo is used for kinematics only here, never to render (saves ~55 MB)

from so101_deploy.arm.kinematics import GRIPPERFRAME_SETTING
from so101_deploy.core.node import RAW, Handlers, NodeSpec, run_node
from so101_deploy.policy.observation import SETTINGS, observation_node_from_settings

SPEC = NodeSpec("observation", SETTINGS + (GRIPPERFRAME_SETTING,),
                inputs={"mask": "seg_mask", "disparity": "disparity", "joint_state": "joint_state", "reset": RAW},
                outputs=("observation",), optional=frozenset({"reset"}))


def build(settings, ctx) -> Handlers:
    obs = observation_node_from_settings(settings)
    if not obs.builder.options.is_training_default:
        ctx.log.warning(f"observation differs from training's: {obs.builder.options}")

    def send(encoded) -> None:
        if encoded is not None:
            ctx.send("observation", *encoded)

    def stop() -> None:
        ctx.log.info(f"counters: {obs.builder.counters}, proprio: {obs.builder.proprio.counters}")

    return Handlers(on_input={"mask": lambda m: send(obs.on_mask(m)), "disparity": lambda m: send(obs.on_disparity(m)),
                              "joint_state": obs.on_joint_state},
                    on_tick={"reset": obs.reset}, on_stop=stop)


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
