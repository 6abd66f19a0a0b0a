"""E-stop node: publishes the state of the e-stop file (see so101_deploy.arm.estop) on every tick."""

import numpy as np
from dora import Node

from so101_deploy.arm.estop import NAMES, EstopFile
from so101_deploy.core.messages import encode, now_ns
from so101_deploy.core.node import Settings, log, run

NAME = "estop"


def main() -> None:
    settings = Settings(NAME)
    switch = EstopFile(settings.str("SO101_ESTOP_FILE", "/tmp/so101.estop"))
    node = Node()
    count = {"n": 0, "last": None}

    def tick() -> None:
        state = switch.state()
        if state != count["last"]:
            log(NAME, "warning" if state else "info", f"e-stop {NAMES[state]} ({switch.path})")
            count["last"] = state
        node.send_output("estop", *encode("estop", np.array([state], np.uint8), frame_id=count["n"],
                                          stamp_ns=now_ns()))
        count["n"] += 1

    run(NAME, {}, {}, on_tick={"tick": tick}, node=node)


if __name__ == "__main__":
    main()
