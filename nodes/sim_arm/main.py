"""Sim arm node: the MuJoCo SO-101 on pick-101's lift-cube scene, standing in for camera + servo.

Inputs: ``tick`` (a dora timer, ``dora/timer/millis/20``: one control step = 10 x 2 ms of physics),
``goal`` (schema joint_goal; ignored in the bus variant).  Outputs: ``joint_state`` (with the
privileged cube position and the episode in its metadata), ``image`` (wrist camera, 640x480 BGR),
and with ``SO101_SIM_ORACLE=true`` the oracle ``mask`` (seg_mask, classes "sim5") and ``disparity``
of the same frame -- what training fed the policy, for A/B tests against the learned seg/depth.

Settings: SO101_SIM_SEED (0), SO101_SIM_RENDER_EVERY (1: render every control step),
SO101_SIM_CAMERA (true), SO101_SIM_ORACLE (false), SO101_SIM_EPISODE_STEPS (200; 0 = never reset;
the bus variant defaults to 0), SO101_SIM_BUS_LINK (e.g. /tmp/so101-sim-bus: run the software
servo bus in-process at that path; the real servo node then drives the sim), SO101_CALIBRATION
(bus variant: the LeRobot calibration JSON the servo node uses; default the shipped example).
Headless rendering needs MUJOCO_GL=osmesa (or egl on a GPU machine).
"""

from dora import Node

from so101_deploy.messages import Message
from so101_deploy.node import Settings, log, run
from so101_deploy.sim_arm import runner_from_settings

NAME = "sim_arm"


def main() -> None:
    runner, bus = runner_from_settings(Settings(NAME))
    node = Node()
    last_episode = {"n": runner.sim.episode}

    def on_tick() -> None:
        for output_id, value, meta in runner.tick():
            node.send_output(output_id, value, meta)
        if runner.sim.episode != last_episode["n"]:
            last_episode["n"] = runner.sim.episode
            log(NAME, "info", f"episode {runner.results[-1]} -> reset, episode {runner.sim.episode}")

    def on_goal(msg: Message) -> None:
        runner.on_goal(msg.data)

    def on_stop() -> None:
        if bus is not None:
            bus.stop()
        wins = sum(r["success"] for r in runner.results)
        log(NAME, "info", f"{len(runner.results)} episodes finished, {wins} successes: {runner.results}")
        runner.close()

    inputs = {} if bus is not None else {"goal": "joint_goal"}
    run(NAME, inputs, {"goal": on_goal}, on_tick={"tick": on_tick}, on_stop=on_stop, node=node)


if __name__ == "__main__":
    main()
