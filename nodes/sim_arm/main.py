"""Sim arm node: the MuJoCo SO-101 on pick-101's lift-cube scene, standing in for camera + servo.

Inputs: ``tick`` (a dora timer, ``dora/timer/millis/20``), ``goal`` (schema joint_goal; ignored in
the bus variant).  Outputs: ``joint_state`` (with the privileged cube position and the episode in
its metadata), ``episode_start`` (schema joint_state: the first state after each reset; wire it to
the observation's ``reset`` input), ``image`` (wrist camera, 640x480 BGR), and with ``SO101_SIM_ORACLE=true`` the
oracle ``mask`` (seg_mask, classes "sim5") and ``disparity`` of the same frame -- what training
fed the policy, for A/B tests against the learned seg/depth.

Stepping (SO101_SIM_STEP_ON): ``tick`` (default) = one control step (10 x 2 ms) per timer tick,
goals applied as they arrive; ``goal`` = lockstep as in training: one control step per goal, and
the timer only sends the first frame and re-sends the present state when no goal came for
SO101_SIM_RESEND_S (1.0 s), so a stalled loop restarts.

Settings: SO101_SIM_SEED (0), SO101_SIM_RENDER_EVERY (1: render every control step),
SO101_SIM_CAMERA (true), SO101_SIM_ORACLE (false), SO101_SIM_EPISODE_STEPS (200; 0 = never reset;
the bus variant defaults to 0), SO101_SIM_STEP_ON (tick | goal), SO101_SIM_RESEND_S (1.0),
SO101_SIM_BUS_LINK (e.g. /tmp/so101-sim-bus: run the software servo bus in-process at that path;
the real servo node then drives the sim), SO101_CALIBRATION (bus variant: the LeRobot calibration
JSON the servo node uses; default the shipped example).
Headless rendering: MUJOCO_GL=osmesa (or egl on a GPU machine).
"""

import time

from dora import Node

from so101_deploy.core.messages import Message
from so101_deploy.core.node import Settings, log, run
from so101_deploy.sim.sim_arm import runner_from_settings

NAME = "sim_arm"


def main() -> None:
    runner, bus = runner_from_settings(Settings(NAME))
    node = Node()
    state = {"episode": runner.sim.episode, "last_send": None}

    def send(messages) -> None:
        for output_id, value, meta in messages:
            node.send_output(output_id, value, meta)
        state["last_send"] = time.monotonic()
        if runner.sim.episode != state["episode"]:
            state["episode"] = runner.sim.episode
            log(NAME, "info", f"episode {runner.results[-1]} -> reset, episode {runner.sim.episode}")

    def on_tick() -> None:
        if runner.step_on == "tick":
            send(runner.tick())
        elif state["last_send"] is None or time.monotonic() - state["last_send"] > runner.resend_s:
            send(runner.publish(force_frame=True))  # first frame, or the loop stalled: show it again

    def on_goal(msg: Message) -> None:
        runner.on_goal(msg.data)
        if runner.step_on == "goal":
            send(runner.tick())

    def on_stop() -> None:
        if bus is not None:
            bus.stop(torque_grace_s=3.0)
        wins = sum(r["success"] for r in runner.results)
        log(NAME, "info", f"{len(runner.results)} episodes finished, {wins} successes: {runner.results}; "
                          f"episode {runner.sim.episode} at step {runner.sim.step_count}: "
                          f"success={runner.sim.is_success()}, cube z {runner.sim.cube_pos()[2]:.3f} m")
        runner.close()

    inputs = {} if bus is not None else {"goal": "joint_goal"}
    run(NAME, inputs, {"goal": on_goal}, on_tick={"tick": on_tick}, on_stop=on_stop, node=node)


if __name__ == "__main__":
    main()
