"""Controller node: policy actions -> safe joint goals (rad) for the servo node.

Inputs: ``action``, ``joint_state``, ``tick`` (a dora timer, drives the watchdog), optional ``estop``,
optional ``reset`` (schema joint_state: the first state of a new simulated episode; the target and the
safety filter restart from it).  Output: ``goal`` (joint_goal) with metadata ``events`` (the safety
events of this goal, comma separated), ``mode`` and ``source`` ("action" or "watchdog").
Settings: so101_deploy.arm.controller.SETTINGS and SO101_GRIPPERFRAME; SO101_MAX_ACTION_AGE_S drops actions
from frames captured too long ago (the two-machine flow, where a stalled link can deliver old actions).
"""

import json
import sys

from so101_deploy.core.gl import no_rendering_here

no_rendering_here()  # first: MuJoCo is used for kinematics only here, never to render (saves ~55 MB)

from so101_deploy.arm.controller import SETTINGS, ActionAgeGate, ControllerClock, ControllerError, HopTimes, Output, \
    control_loop_from_settings, explain_meta
from so101_deploy.arm.kinematics import GRIPPERFRAME_SETTING
from so101_deploy.core.messages import Message, MessageError, encode, now_ns
from so101_deploy.core.node import RAW, Handlers, NodeSpec, run_node

SPEC = NodeSpec("controller", SETTINGS + (GRIPPERFRAME_SETTING,),
                inputs={"action": "action", "joint_state": "joint_state", "estop": "estop", "reset": "joint_state",
                        "tick": RAW},
                outputs=("goal",), optional=frozenset({"reset"}), waivers={"estop": ("SO101_ESTOP", "none")})


def build(settings, ctx) -> Handlers:
    loop = control_loop_from_settings(settings)
    clock = ControllerClock(settings["SO101_CLOCK"])
    last_frame = {"frame_id": 0}

    def send(out: Output | None, frame_id: int, stamp_ns: int) -> None:
        if out is not None:
            ctx.send("goal", *encode("joint_goal", out.goal_rad, frame_id=frame_id, stamp_ns=stamp_ns,
                                     events=",".join(out.events), mode=out.mode, source=out.source,
                                     **explain_meta(out)))

    age = ActionAgeGate(settings["SO101_MAX_ACTION_AGE_S"])

    hop = HopTimes()

    def on_action(msg: Message) -> None:
        hop.add(msg.meta, now_ns())
        use, line = age.check(msg.stamp_ns, now_ns(), msg.frame_id)
        if line:
            (ctx.log.warning if not use else ctx.log.info)(line)
        if not use:
            return
        last_frame["frame_id"] = msg.frame_id
        try:
            out = loop.on_action(msg.data, msg.meta["action_space"], clock.now())
        except ControllerError as e:  # e.g. an action space the configured mode does not take
            raise MessageError(str(e)) from None  # reported and counted as a rejected input
        send(out, msg.frame_id, msg.stamp_ns)

    def clock_from(msg: Message) -> float:
        """The safety filter's time after this joint_state (SO101_CLOCK=sim: its simulated time)."""
        try:
            clock.on_joint_state(msg.meta)
        except ControllerError as e:
            raise MessageError(str(e)) from None  # reported and counted as a rejected input
        return clock.now()

    def on_reset(msg: Message) -> None:
        loop.restart(msg.data, clock_from(msg))
        ctx.log.info(f"new episode {msg.meta.get('episode', '?')}: target restarts from the present pose")

    def on_estop(msg: Message) -> None:
        was = loop.safety.estop_engaged
        loop.on_estop(int(msg.data[0]), clock.now())
        if loop.safety.estop_engaged != was:  # the estop node repeats its state 20 times a second
            ctx.log.warning(f"e-stop {'ENGAGED' if loop.safety.estop_engaged else 'released'}")

    return Handlers(
        on_input={"action": on_action, "joint_state": lambda m: loop.on_joint_state(m.data, clock_from(m)),
                  "estop": on_estop, "reset": on_reset},
        on_tick={"tick": lambda: send(loop.on_tick(clock.now()), last_frame["frame_id"], now_ns())},
        on_stop=lambda: (ctx.log.info(f"safety events: {dict(loop.safety.events_total)}"
                                      + (f"; {age.dropped} stale action(s) dropped" if age.dropped else "")),
                         ctx.log.info(f"action hop ms: {json.dumps(hop.summary())}")))


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
