"""Policy node: observation -> DrQ-v2 eval action (tanh of the mean), with its action space.

Input: ``observation``.  Output: ``action`` (metadata ``action_space``: cartesian or joint_delta, and
``latency_ms``).  Settings: so101_deploy.policy.runtime.SETTINGS.
"""

import sys

from so101_deploy.core.node import Handlers, NodeSpec, run_node
from so101_deploy.policy.runtime import SETTINGS, PolicyNode, policy_runner_from_settings

SPEC = NodeSpec("policy", SETTINGS, inputs={"observation": "observation"}, outputs=("action",))


def build(settings, ctx) -> Handlers:
    runner = policy_runner_from_settings(settings)
    ctx.log.info(f"loaded {runner.loaded.format} checkpoint: {runner.spec} -> action space {runner.action_space!r}, "
                 f"backend {runner.backend}, device {runner.device}")
    policy = PolicyNode(runner)
    return Handlers(on_input={"observation": lambda m: ctx.send("action", *policy.handle(m))})


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
