"""LeRobot units adapter: puts a dora-hub arm driver that speaks LeRobot units (degrees, gripper percent)
where the project's servo node was, so an A/B of the two drivers is a YAML swap.

Inputs: ``goal`` (joint_goal, rad, from the controller) and ``hub_joint_state`` (the hub driver's reading:
a numeric Arrow array of 6 in LeRobot units, shoulder_pan.pos ... gripper.pos).  Outputs: ``goal`` (float32
[deg x5, gripper %] for the hub driver, metadata names/units/frame_id/stamp_ns) and ``joint_state`` (the
project's schema, rad and rad/s, for the controller and the observation).  Settings: SO101_CALIBRATION
(the arm's LeRobot calibration JSON).  See so101_deploy.arm.lerobot_units for the conversions.
"""

import sys

from so101_deploy.arm.calibration import Calibration, CalibrationError
from so101_deploy.arm.lerobot_units import SETTINGS, LeRobotAdapter, LeRobotUnits
from so101_deploy.core.messages import Message
from so101_deploy.core.node import RAW, Handlers, NodeSpec, StartError, run_node

SPEC = NodeSpec("lerobot_adapter", SETTINGS, inputs={"goal": "joint_goal", "hub_joint_state": RAW},
                outputs=("goal", "joint_state"))


def build(settings, ctx) -> Handlers:
    try:
        calibration = Calibration.load(settings["SO101_CALIBRATION"])
    except CalibrationError as e:
        raise StartError(f"lerobot_adapter: {e}") from None
    adapter = LeRobotAdapter(LeRobotUnits(calibration))

    def on_goal(msg: Message) -> None:
        ctx.send("goal", *adapter.goal(msg.data, msg.frame_id, msg.stamp_ns))

    def on_hub_state(value, metadata) -> None:
        ctx.send("joint_state", *adapter.joint_state(value, metadata))

    return Handlers(on_input={"goal": on_goal}, on_raw={"hub_joint_state": on_hub_state},
                    on_stop=lambda: ctx.log.info(f"{adapter.readings} readings converted; gripper clips: "
                                                 f"{dict(calibration.events)}"))


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
