"""Sim arm node: the MuJoCo SO-101 on pick-101's lift-cube scene, standing in for camera + servo.

Inputs: ``tick`` (a dora timer, ``dora/timer/millis/20``), ``goal`` (schema joint_goal; not wired in the
bus variant).  Outputs: ``joint_state`` (with the privileged cube position and the episode in its
metadata), ``episode_start`` (schema joint_state: the first state after each reset; wire it to the
observation's ``reset`` input), ``image`` (wrist camera, 640x480 BGR), and with ``SO101_SIM_ORACLE=true``
the oracle ``mask`` (seg_mask, classes "sim5") and ``disparity`` of the same frame -- what training fed
the policy, for A/B tests against the learned seg/depth.

Stepping (SO101_SIM_STEP_ON): ``tick`` (default) = one control step (10 x 2 ms) per timer tick, goals
applied as they arrive; ``goal`` = lockstep as in training: one control step per goal, and the timer only
sends the first frame and re-sends the present state when no goal came for SO101_SIM_RESEND_S, so a
stalled loop restarts.  Settings: so101_deploy.sim.sim_arm.SETTINGS and SO101_GRIPPERFRAME.
Headless rendering: MUJOCO_GL=osmesa (or egl on a GPU machine).
"""

import sys
import time

from so101_deploy.arm.kinematics import GRIPPERFRAME_SETTING
from so101_deploy.core.messages import Message
from so101_deploy.core.node import RAW, Handlers, NodeSpec, run_node
from so101_deploy.sim.evaluation import FINISHED_LINE, LockstepPacer
from so101_deploy.sim.sim_arm import SETTINGS, runner_from_settings

SPEC = NodeSpec("sim_arm", SETTINGS + (GRIPPERFRAME_SETTING,), inputs={"goal": "joint_goal", "tick": RAW},
                outputs=("joint_state", "episode_start", "image", "mask", "disparity"),
                optional=frozenset({"goal"}))


def build(settings, ctx) -> Handlers:
    runner, bus = runner_from_settings(settings)
    state = {"episode": runner.sim.episode}
    pacer = LockstepPacer(runner.resend_s)

    def send(messages) -> None:
        for output_id, value, meta in messages:
            ctx.send(output_id, value, meta)
        if messages:
            pacer.sent(time.monotonic())
        if runner.sim.episode != state["episode"]:
            state["episode"] = runner.sim.episode
            ctx.log.info(f"episode {_brief(runner.results[-1])} -> reset, episode {runner.sim.episode}")
        if runner.all_done and not state.get("done_logged"):
            state["done_logged"] = True
            wins = sum(r["success"] for r in runner.results)
            ctx.log.info(f"episode {_brief(runner.results[-1])}; {FINISHED_LINE}: {wins}/{len(runner.results)} "
                         f"successes, the sim stops stepping")

    def on_tick() -> None:
        if runner.step_on == "tick":
            send(runner.tick())
        elif not runner.all_done and pacer.stalled(time.monotonic()):
            if pacer.sent_s is not None:
                pacer.resends += 1
                runner.record.resends += 1
            send(runner.publish(force_frame=True))  # first frame, or the loop stalled: show it again

    def on_goal(msg: Message) -> None:
        if bus is not None:
            return  # the bus variant takes its goals from the servo bus
        if runner.step_on != "goal":
            runner.on_goal(msg.data)
        elif runner.lockstep_goal(msg.data, msg.frame_id, msg.meta.get("source")):
            pacer.goal(time.monotonic())
            send(runner.tick())

    def on_stop() -> None:
        if bus is not None:
            bus.stop(torque_grace_s=60.0)  # a deadline: it returns as soon as the servo node released torque
        wins = sum(r["success"] for r in runner.results)
        ctx.log.info(f"{len(runner.results)} episodes finished, {wins} successes: {[_brief(r) for r in runner.results]}; "
                     f"episode {runner.sim.episode} at step {runner.sim.step_count}: "
                     f"success={runner.sim.is_success()}, cube z {runner.sim.cube_pos()[2]:.3f} m"
                     + (f"; lockstep: {pacer.resends} re-send(s) after a stall, goals ignored {runner.ignored}"
                        if runner.step_on == "goal" else ""))
        runner.close()

    return Handlers(on_input={"goal": on_goal}, on_tick={"tick": on_tick}, on_stop=on_stop)


def _brief(result: dict) -> dict:
    """An episode's result for the log: without the scene variation's draws (those are in the report)."""
    return {k: v for k, v in result.items() if k not in ("variation", "video")}


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
