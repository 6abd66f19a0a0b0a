"""Policy node: observation -> DrQ-v2 eval action (tanh of the mean), with its action space."""

from dora import Node

from so101_deploy.core.node import Settings, log, run
from so101_deploy.policy.drqv2 import PolicyNode, policy_runner_from_settings

NAME = "policy"


def main() -> None:
    runner = policy_runner_from_settings(Settings(NAME))
    loaded = runner.loaded
    log(NAME, "info", f"loaded {loaded.format} checkpoint: {runner.spec} -> action space {runner.action_space!r}, "
                      f"backend {runner.backend}, device {runner.device}")
    policy = PolicyNode(runner)
    node = Node()
    run(NAME, {"observation": "observation"},
        {"observation": lambda m: node.send_output("action", *policy.handle(m))}, node=node)


if __name__ == "__main__":
    main()
