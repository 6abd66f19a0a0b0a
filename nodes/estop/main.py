"""E-stop node: publishes the state of the e-stop file (see so101_deploy.arm.estop) on every tick.

Input: ``tick`` (a dora timer).  Output: ``estop`` (0 clear, 1 hold, 2 release torque).
Settings: so101_deploy.arm.estop.SETTINGS.
"""

import sys

import numpy as np

from so101_deploy.arm.estop import NAMES, SETTINGS, EstopFile
from so101_deploy.core.messages import encode, now_ns
from so101_deploy.core.node import RAW, Handlers, NodeSpec, run_node

SPEC = NodeSpec("estop", SETTINGS, inputs={"tick": RAW}, outputs=("estop",))


def build(settings, ctx) -> Handlers:
    switch = EstopFile(settings["SO101_ESTOP_FILE"])
    count = {"n": 0, "last": None}

    def tick() -> None:
        state = switch.state()
        if state != count["last"]:
            (ctx.log.warning if state else ctx.log.info)(f"e-stop {NAMES[state]} ({switch.path})")
            count["last"] = state
        ctx.send("estop", *encode("estop", np.array([state], np.uint8), frame_id=count["n"], stamp_ns=now_ns()))
        count["n"] += 1

    return Handlers(on_tick={"tick": tick})


def main(node=None, env=None) -> int:
    return run_node(SPEC, build, node=node, env=env)


if __name__ == "__main__":
    sys.exit(main())
