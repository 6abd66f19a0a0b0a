"""A software e-stop you can trigger from any shell: the presence of a file.

``touch /tmp/so101.estop`` holds the arm (goals ignored, the present goal kept, torque on);
``echo release > /tmp/so101.estop`` also releases torque (the arm goes limp: support it first);
removing the file clears the e-stop.  Anything unreadable or unexpected in the file counts as
*hold*: a broken e-stop must never be read as "all clear".

The e-stop node publishes the state (schema ``estop``: 0 clear, 1 hold, 2 release torque) on every
tick, to the controller and the servo node, which both act on it.
"""

from __future__ import annotations

from pathlib import Path

from so101_deploy.core.settings import Setting

CLEAR, HOLD, RELEASE = 0, 1, 2
SETTINGS = (Setting("SO101_ESTOP_FILE", "str", "/tmp/so101.estop", "the e-stop file: present = hold, "
                    "'release' in it = release torque, absent = clear"),)
# Declared by the nodes that act on the e-stop (controller, servo): their `estop` input must be wired
# unless the flow says, in so many words, that it has no e-stop node.
WIRING_SETTING = Setting("SO101_ESTOP", "choice", "required", "required: the estop input must be wired; none: "
                         "this flow has no e-stop node (simulation)", choices=("required", "none"))
NAMES = {CLEAR: "clear", HOLD: "hold", RELEASE: "release torque"}


class EstopFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def state(self) -> int:
        try:
            text = self.path.read_text(errors="replace").strip().lower()
        except FileNotFoundError:
            return CLEAR
        except OSError:
            return HOLD  # exists but cannot be read: fail safe
        return RELEASE if text == "release" else HOLD
