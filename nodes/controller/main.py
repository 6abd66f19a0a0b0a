"""Controller node: policy actions -> safe joint goals (rad) for the servo node.

Inputs: ``action`` (schema action), ``joint_state`` (schema joint_state), ``tick`` (a dora timer,
drives the watchdog), optional ``estop`` (schema estop), optional ``reset`` (schema joint_state: the
first state of a new simulated episode; the target and the safety filter restart from it).  Output: ``goal`` (schema joint_goal) with
metadata ``events`` (the safety events of this goal, comma separated), ``mode`` and ``source``
("action" or "watchdog").  Settings: see ``so101_deploy.arm.controller.control_loop_from_settings``.
"""

import time

from dora import Node

from so101_deploy.arm.controller import ControlLoop, ControllerError, Output, control_loop_from_settings
from so101_deploy.core.messages import Message, MessageError, encode, now_ns
from so101_deploy.core.node import Settings, log, run

NAME = "controller"


def main() -> None:
    loop: ControlLoop = control_loop_from_settings(Settings(NAME))
    node = Node()
    last_frame = {"frame_id": 0}

    def send(out: Output | None, frame_id: int, stamp_ns: int) -> None:
        if out is None:
            return
        node.send_output("goal", *encode("joint_goal", out.goal_rad, frame_id=frame_id, stamp_ns=stamp_ns,
                                         events=",".join(out.events), mode=out.mode, source=out.source))

    def on_action(msg: Message) -> None:
        last_frame["frame_id"] = msg.frame_id
        try:
            out = loop.on_action(msg.data, msg.meta["action_space"], time.monotonic())
        except ControllerError as e:  # e.g. an action space the configured mode does not take
            raise MessageError(str(e)) from None  # reported and counted as a rejected input
        send(out, msg.frame_id, msg.stamp_ns)

    def on_joint_state(msg: Message) -> None:
        loop.on_joint_state(msg.data, time.monotonic())

    def on_reset(msg: Message) -> None:
        loop.restart(msg.data, time.monotonic())
        log(NAME, "info", f"new episode {msg.meta.get('episode', '?')}: target restarts from the present pose")

    def on_estop(msg: Message) -> None:
        loop.on_estop(int(msg.data[0]))
        log(NAME, "warning", f"e-stop {'ENGAGED' if loop.safety.estop_engaged else 'released'}")

    def on_tick() -> None:
        send(loop.on_tick(time.monotonic()), last_frame["frame_id"], now_ns())

    def on_stop() -> None:
        log(NAME, "info", f"safety events: {dict(loop.safety.events_total)}")

    run(NAME, {"action": "action", "joint_state": "joint_state", "estop": "estop", "reset": "joint_state"},
        {"action": on_action, "joint_state": on_joint_state, "estop": on_estop, "reset": on_reset},
        on_tick={"tick": on_tick}, on_stop=on_stop, node=node)


if __name__ == "__main__":
    main()
