"""Servo node: the SO-101's six STS3215 through scservo_sdk.

Inputs: `goal` (joint_goal, rad), `tick` (dora timer: the read rate, e.g. dora/timer/millis/20),
optional `estop` (estop: 0 clear, 1 hold, 2 release torque).  Output: `joint_state` (rad, rad/s;
frame_id = read counter; metadata errors, error_kinds, overload_ids, missing_ids, torque, estop,
hold, read_ms, events).
Settings: SO101_PORT, SO101_CALIBRATION (required), SO101_SERVO_WATCHDOG_S (0.5),
SO101_SERVO_READ_RETRIES (2), SO101_MAX_STEP_RAD (0.05), SO101_TORQUE_ON_START (true; false =
read-only monitoring, torque stays off), SO101_SERVO_REPLY_WINDOW_MS (50: how long to wait for a reply),
SO101_PORT_WAIT_S (5: how long to wait for the port to appear before giving up).

Torque is released on every exit path: dora stop (on_stop), the end of the loop, an exception
(finally), SIGTERM/SIGINT (raised into the loop as SystemExit/KeyboardInterrupt), interpreter exit
(atexit).
"""

import atexit
import signal
import sys

from so101_deploy.core.messages import encode, now_ns
from so101_deploy.core.node import SettingError, Settings, log, run
from so101_deploy.arm.servo_bus import ServoBusError
from so101_deploy.arm.servo_node import ServoNode, ServoSettings, wait_for_port

NODE = "servo"


def _raise_on_signal(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds the loop through every finally (torque release)


def main(node=None, env=None) -> int:
    try:
        settings = ServoSettings.from_settings(Settings(NODE, env))
        servo = ServoNode.from_settings(settings)
    except (SettingError, ServoBusError, ValueError, OSError) as e:
        log(NODE, "error", str(e))
        return 2
    if not wait_for_port(settings.port, settings.port_wait_s):
        log(NODE, "error", f"SO101_PORT={settings.port}: no such port after {settings.port_wait_s:.0f} s; "
                           f"is the bus adapter plugged in (ls /dev/ttyACM*)?")
        return 2
    atexit.register(servo.shutdown)
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGINT, _raise_on_signal)
    try:
        try:
            servo.start()
        except ServoBusError as e:
            log(NODE, "error", str(e))
            return 2
        if node is None:
            from dora import Node

            node = Node()

        def on_tick() -> None:
            out = servo.on_tick()
            if out is not None:
                state, meta = out
                node.send_output("joint_state", *encode("joint_state", state, frame_id=servo.bus.reads,
                                                        stamp_ns=now_ns(), **meta))

        run(NODE, inputs={"goal": "joint_goal", "estop": "estop"},
            on_input={"goal": lambda m: servo.on_goal(m.data), "estop": lambda m: servo.on_estop(int(m.data[0]))},
            on_tick={"tick": on_tick}, on_stop=servo.shutdown, node=node)
    finally:
        servo.shutdown()
    log(NODE, "info", f"stopped: {servo.bus.reads} reads, {servo.goals_written} goals written, "
                      f"bus errors {dict(servo.bus.errors)}, events {dict(servo.events)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
