"""Servo node: the SO-101's six STS3215 through scservo_sdk.

Inputs: `goal` (joint_goal, rad), `tick` (dora timer: the read rate, e.g. dora/timer/millis/20),
optional `estop` (estop: 0 clear, 1 hold, 2 release torque).  Output: `joint_state` (rad, rad/s;
frame_id = read counter; metadata errors, error_kinds, overload_ids, missing_ids, torque, estop,
state, hold, read_ms, events).  Settings: so101_deploy.arm.servo_node.SETTINGS.

Safe states (so101_deploy.arm.safe_state): torque waits for the first goal from an action; no fresh goal,
an e-stop (input or file), a silent e-stop input, a closed input or a servo fault holds the present pose;
a long hold or a dead input parks the arm, releases torque and ends this node with exit code 3 and one
line, so `dora run` ends too.

Torque is released on every exit path: dora stop (on_stop), the end of the loop, an exception
(finally), SIGTERM/SIGINT (raised into the loop as SystemExit), interpreter exit (atexit).  A kill
that runs none of them (SIGKILL, or dora's orphan guard after `dora run` was killed) is covered by
the torque guard (so101_deploy.arm.torque_guard), a separate process started before torque is
first enabled: it releases torque when this process is gone without having said "released".
SO101_TORQUE_GUARD=false runs without it.  The orphan path: when the process that started this node
(the dora daemon, `dora run`) is gone, the event loop may block for good, so a watch thread
(ParentWatch) releases torque and ends the process (kill -9 of the daemon -> torque off).
"""

import atexit
import os
import signal
import sys
import threading

from so101_deploy.core.gl import no_rendering_here

no_rendering_here()  # first: the safety filter's joint ranges come from MuJoCo, which never renders here (~45 MB)

from so101_deploy.arm.servo_bus import ServoBusError
from so101_deploy.arm.servo_node import SETTINGS, ServoNode, ServoSettings, wait_for_port
from so101_deploy.arm.torque_guard import ParentWatch, TorqueGuard, TorqueGuardError
from so101_deploy.core.messages import encode, now_ns
from so101_deploy.core.node import RAW, FatalError, Handlers, NodeSpec, StartError, run_node

EXIT_SAFE_STATE = 3  # the arm parked (or was released) because of a fault: the run ends here

SPEC = NodeSpec("servo", SETTINGS, inputs={"goal": "joint_goal", "estop": "estop", "tick": RAW},
                outputs=("joint_state",), waivers={"estop": ("SO101_ESTOP", "none")})


def _raise_on_signal(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds the loop through every finally (torque release)


def build(settings, ctx) -> Handlers:
    cfg = ServoSettings.from_settings(settings)
    estop_wired = "estop" in (ctx.node_config().get("inputs") or {})
    try:
        servo = ServoNode.from_settings(cfg, settings, estop_wired=estop_wired)
    except (ServoBusError, ValueError, OSError) as e:
        raise StartError(str(e)) from None
    if not wait_for_port(cfg.port, cfg.port_wait_s):
        raise StartError(f"SO101_PORT={cfg.port}: no such port after {cfg.port_wait_s:.0f} s; is the bus adapter "
                         f"plugged in (ls /dev/ttyACM*)?")
    guard = None
    if settings["SO101_TORQUE_GUARD"]:  # started before anything is written to the servos
        guard = TorqueGuard(cfg.port, servo.bus.baudrate, servo.bus.ids, reply_window_ms=cfg.reply_window_ms,
                            log=servo.log)
        try:
            guard.start()
        except TorqueGuardError as e:
            raise StartError(f"{e}; torque stays off (SO101_TORQUE_GUARD=false runs without the guard)") from None

    released = threading.Event()
    bus_lock = threading.Lock()  # the loop's handlers and the orphan release never share the bus

    def release() -> None:
        """Release torque (idempotent), then let the guard exit without touching the port."""
        watch.stop()
        servo.shutdown()
        if guard is not None:
            guard.released()
        released.set()

    def orphaned() -> None:
        """The daemon (or `dora run`) that started this node is gone and the event loop may never
        return: release torque here and end the process."""
        bus_lock.acquire(timeout=0.5)  # a handler busy longer is stuck outside the bus (a send to the dead daemon)
        if released.is_set():
            return  # the loop ended (dora's ERROR event) and the node is on its way out
        release()
        servo.log("error", f"the process that started this node (pid {watch.parent}) is gone: torque released, exiting")
        os._exit(1)

    watch = ParentWatch(orphaned)
    atexit.register(release)
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGINT, _raise_on_signal)
    try:
        servo.start()
    except ServoBusError as e:
        release()
        raise StartError(str(e)) from None
    except BaseException:
        release()
        raise
    watch.start()

    def locked(handler):
        def call(*args):
            with bus_lock:
                return handler(*args)
        return call

    def leave_if_done() -> None:
        if servo.exit_reason is not None:
            raise FatalError(f"servo: {servo.exit_reason}", exit_code=EXIT_SAFE_STATE)

    def on_tick() -> None:
        if guard is not None:
            guard.check()
        out = servo.on_tick()
        if out is not None:
            state, meta = out
            ctx.send("joint_state", *encode("joint_state", state, frame_id=servo.bus.reads, stamp_ns=now_ns(), **meta,
                                            **last_write))
        leave_if_done()

    def on_closed(input_id: str) -> None:
        servo.on_input_closed(input_id)
        leave_if_done()

    def on_stop() -> None:
        release()
        ctx.log.info(f"stopped: {servo.bus.reads} reads, {servo.goals_written} goals written, "
                     f"bus errors {dict(servo.bus.errors)}, events {dict(servo.events)}")

    # the last goal written to the bus: its camera frame and when (the bench's per-frame timeline)
    last_write = {"goal_frame_id": 0, "t_servo_write_ns": 0}

    def on_goal(msg) -> None:
        written = servo.goals_written
        servo.on_goal(msg.data, fresh=msg.meta.get("source") != "watchdog")
        if servo.goals_written != written:
            last_write.update(goal_frame_id=msg.frame_id, t_servo_write_ns=now_ns())

    return Handlers(on_input={"goal": locked(on_goal),
                              "estop": locked(lambda m: servo.on_estop(int(m.data[0])))},
                    on_tick={"tick": locked(on_tick)}, on_stop=locked(on_stop), on_closed=locked(on_closed))


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
