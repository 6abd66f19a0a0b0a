"""Scripted policy node: a privileged lift policy (it reads the cube position the sim arm sends as
joint_state metadata) that emits the learned policy's Cartesian actions, to prove that the controller,
the IK and the safety layer close the loop.  Simulation only.

Input: ``joint_state`` (from ``sim_arm/joint_state``).  Output: ``action`` (action_space "cartesian",
metadata ``phase``).  Settings: SO101_GRIPPERFRAME.
"""

import sys

from so101_deploy.arm.kinematics import GRIPPERFRAME_SETTING
from so101_deploy.core.node import Handlers, NodeSpec, run_node
from so101_deploy.sim.scripted_policy import ScriptedPolicyRunner

SPEC = NodeSpec("scripted_policy", (GRIPPERFRAME_SETTING,), inputs={"joint_state": "joint_state"},
                outputs=("action",))


def build(settings, ctx) -> Handlers:
    runner = ScriptedPolicyRunner()
    return Handlers(on_input={"joint_state": lambda m: ctx.send("action", *runner.on_joint_state(m))})


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
