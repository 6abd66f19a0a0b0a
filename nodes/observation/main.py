"""Observation node: pairs mask + disparity of the same camera frame, adds the proprioception and
stacks 3 frames into the training observation (see so101_deploy.policy.observation)."""

from dora import Node

from so101_deploy.core.node import Settings, log, run
from so101_deploy.policy.observation import observation_node_from_settings

NAME = "observation"


def main() -> None:
    obs = observation_node_from_settings(Settings(NAME))
    if not obs.builder.options.is_training_default:
        log(NAME, "warn", f"observation differs from training's: {obs.builder.options}")
    node = Node()

    def send(encoded) -> None:
        if encoded is not None:
            node.send_output("observation", *encoded)

    def stop() -> None:
        log(NAME, "info", f"counters: {obs.builder.counters}, proprio: {obs.builder.proprio.counters}")

    run(NAME, {"mask": "seg_mask", "disparity": "disparity", "joint_state": "joint_state"},
        {"mask": lambda m: send(obs.on_mask(m)), "disparity": lambda m: send(obs.on_disparity(m)),
         "joint_state": obs.on_joint_state},
        on_tick={"reset": obs.reset},  # any message on the optional `reset` input starts a new stack
        on_stop=stop, node=node)


if __name__ == "__main__":
    main()
