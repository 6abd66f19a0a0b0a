"""Scripted policy node: a privileged lift policy (it reads the cube position the sim arm sends
as joint_state metadata) that emits the learned policy's Cartesian actions, to prove that the
controller, the IK and the safety layer close the loop.  Simulation only.

Input: ``joint_state`` (schema joint_state, from ``sim_arm/joint_state``).  Output: ``action``
(schema action, action_space "cartesian", metadata ``phase``).
"""

from dora import Node

from so101_deploy.core.messages import Message
from so101_deploy.core.node import run
from so101_deploy.sim.scripted_policy import ScriptedPolicyRunner

NAME = "scripted_policy"


def main() -> None:
    runner = ScriptedPolicyRunner()
    node = Node()

    def on_joint_state(msg: Message) -> None:
        node.send_output("action", *runner.on_joint_state(msg))

    run(NAME, {"joint_state": "joint_state"}, {"joint_state": on_joint_state}, node=node)


if __name__ == "__main__":
    main()
