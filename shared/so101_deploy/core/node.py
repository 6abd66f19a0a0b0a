"""What every dora node shares: settings from the node's ``env``, and a checked event loop.

A node's ``main.py`` is thin: it builds its logic object from :class:`Settings` and hands
callbacks to :func:`run`.  ``run`` decodes each input with its declared message schema, so a
malformed message is reported (node, input, what was expected) and counted, never passed on,
and a failing callback is reported without killing the node unless it is fatal.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from so101_deploy.core.messages import Message, MessageError, decode


class SettingError(ValueError):
    """A node setting (an ``env`` entry in the dataflow YAML) that is missing or malformed."""


class Settings:
    """Typed access to a node's settings (dora passes the YAML ``env`` as environment variables)."""

    def __init__(self, node: str, env: Mapping[str, str] | None = None):
        self.node = node
        self.env = os.environ if env is None else env

    def _raw(self, key: str) -> str | None:
        v = self.env.get(key)
        return None if v is None or v.strip() == "" else v.strip()

    def str(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        v = self._raw(key)
        if v is None:
            if required:
                raise SettingError(f"{self.node}: setting {key} is required (set it in the node's env in the "
                                   f"dataflow YAML)")
            return default
        return v

    def float(self, key: str, default: float, *, min: float | None = None, max: float | None = None) -> float:
        v = self._raw(key)
        if v is None:
            return default
        try:
            x = float(v)
        except ValueError:
            raise SettingError(f"{self.node}: {key}={v!r} is not a number") from None
        if x != x or (min is not None and x < min) or (max is not None and x > max):
            raise SettingError(f"{self.node}: {key}={v!r} must be in [{min}, {max}]")
        return x

    def int(self, key: str, default: int, *, min: int | None = None, max: int | None = None) -> int:
        v = self._raw(key)
        if v is None:
            return default
        try:
            x = int(v)
        except ValueError:
            raise SettingError(f"{self.node}: {key}={v!r} is not an integer") from None
        if (min is not None and x < min) or (max is not None and x > max):
            raise SettingError(f"{self.node}: {key}={v!r} must be in [{min}, {max}]")
        return x

    def bool(self, key: str, default: bool) -> bool:
        v = self._raw(key)
        if v is None:
            return default
        if v.lower() in ("1", "true", "yes", "on"):
            return True
        if v.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingError(f"{self.node}: {key}={v!r} must be true or false")

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        v = self._raw(key) or default
        if v not in choices:
            raise SettingError(f"{self.node}: {key}={v!r} must be one of {list(choices)}")
        return v


@dataclass
class Stats:
    received: int = 0
    sent: int = 0
    rejected: int = 0
    errors: int = 0
    last_report: float = field(default_factory=time.monotonic)


def log(node: str, level: str, msg: str) -> None:
    print(f"[{node}] {level}: {msg}", file=sys.stderr if level != "info" else sys.stdout, flush=True)


Handler = Callable[[Message], None]


def run(node_name: str, inputs: Mapping[str, str], on_input: Mapping[str, Handler],
        on_tick: Mapping[str, Callable[[], None]] | None = None,
        on_stop: Callable[[], None] | None = None, node: Any = None,
        max_consecutive_errors: int = 50) -> Stats:
    """Run a dora node's event loop.

    ``inputs`` maps input id -> message schema name; ``on_input`` maps input id -> handler(Message).
    ``on_tick`` maps timer input ids to no-argument callbacks.  ``on_stop`` always runs at the
    end (stop event, input closed, Ctrl-C, exception) so nodes that hold hardware release it.
    """
    if node is None:
        from dora import Node

        node = Node()
    stats = Stats()
    consecutive = 0
    try:
        for event in node:
            kind = event["type"]
            if kind == "STOP":
                break
            if kind != "INPUT":
                continue
            iid = event["id"]
            try:
                if on_tick and iid in on_tick:
                    on_tick[iid]()
                elif iid in inputs:
                    stats.received += 1
                    msg = decode(inputs[iid], event["value"], event.get("metadata"))
                    on_input[iid](msg)
                consecutive = 0
            except MessageError as e:
                stats.rejected += 1
                log(node_name, "error", f"input {iid!r} rejected: {e}")
            except Exception as e:  # noqa: BLE001 - keep the node alive, report, count
                stats.errors += 1
                consecutive += 1
                log(node_name, "error", f"while handling {iid!r}: {e!r}\n{traceback.format_exc(limit=3)}")
                if consecutive >= max_consecutive_errors:
                    raise RuntimeError(f"{node_name}: {consecutive} consecutive errors, giving up") from e
    finally:
        if on_stop is not None:
            on_stop()
    return stats


def serve_frames(node_name: str, output_id: str, handle: Callable[[Message], tuple], node: Any = None) -> int:
    """Run a node that answers every camera frame (input ``image``) with one message on ``output_id``;
    ``handle`` returns what ``encode`` returns.  The perception nodes are this loop around a model."""
    if node is None:
        from dora import Node

        node = Node()
    run(node_name, {"image": "image"}, {"image": lambda msg: node.send_output(output_id, *handle(msg))}, node=node)
    return 0
