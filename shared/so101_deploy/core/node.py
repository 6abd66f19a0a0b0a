"""The one way every dora node starts and runs.

A node's ``main.py`` declares a :class:`NodeSpec` (name, settings, inputs with their message schemas,
outputs) and a ``build(settings, ctx) -> Handlers`` function that makes the library object, then calls
:func:`run_node`.  ``run_node``:

1. routes :mod:`logging` to ``[node] level: message`` lines (:mod:`so101_deploy.core.log`);
2. checks the wiring dora gives it (:mod:`so101_deploy.core.wiring`: unknown or missing inputs, unknown
   outputs, unknown ``SO101_*`` keys in its YAML env, each with the nearest valid name), parses every
   declared setting, then builds the node: a bad wiring or setting, a missing file or an absent device
   (:class:`SettingError`, :class:`StartError`) is one line and exit code 2, never a traceback;
3. runs the checked event loop (:func:`run`): each input is decoded with its declared schema, so a
   malformed message is reported (node, input, what was expected) and counted, never passed on; a
   failing handler is reported without killing the node, unless it keeps failing or raises
   :class:`FatalError`;
4. stops when an input closes for good (dora's INPUT_CLOSED: the node that fed it is gone), unless the
   node handles that itself (``Handlers.on_closed``), so one dead node ends the whole run instead of
   leaving the rest waiting forever;
5. always calls ``on_stop`` (stop event, closed inputs, Ctrl-C, an exception), so hardware is released.

``main(node=None, env=None)`` of every node takes a stand-in for ``dora.Node`` and a settings mapping,
so tests replay recorded messages through the very code dora runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from so101_deploy.core import log as _log
from so101_deploy.core import trace as _trace
from so101_deploy.core import wiring as _wiring
from so101_deploy.core.messages import HubStamps, Message, MessageError, decode, dora_timestamp_ns
from so101_deploy.core.settings import Setting, SettingError, Settings  # noqa: F401  (re-exported)

class _CurrentInput:
    """The metadata of the input being handled (a node is one event loop), for ``send``'s stamps."""
    meta: dict | None = None


_current_input = _CurrentInput()

RAW = None  # an input handled without decoding: a dora timer, or a trigger whose content is ignored


class StartError(RuntimeError):
    """The node cannot start (a missing checkpoint, an absent port or camera): one line, exit 2."""


class FatalError(RuntimeError):
    """Raised by a handler when carrying on makes no sense (e.g. the camera's source is gone for good):
    the loop ends, ``on_stop`` runs and the node exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class StopNode(Exception):
    """Raised by a handler when the node has nothing left to do (e.g. every input it records is gone):
    the loop ends cleanly, ``on_stop`` runs, exit code 0."""


@dataclass(frozen=True)
class NodeSpec:
    """What a node is: its name, the settings it reads, its inputs (id -> message schema, or
    :data:`RAW` for timers and triggers) and its outputs.  ``optional`` inputs may be left unwired;
    ``waivers`` maps an input to the (setting, value) that lets it be unwired (the e-stop:
    ``SO101_ESTOP: none``); ``any_inputs`` is for a node that takes whatever the YAML wires (the
    recorder)."""

    name: str
    settings: tuple[Setting, ...] = ()
    inputs: Mapping[str, str | None] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    optional: frozenset[str] = frozenset()
    waivers: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    any_inputs: bool = False


@dataclass
class Handlers:
    """What ``build`` returns: a callback per input (decoded inputs get a :class:`Message`, raw ones
    nothing), and what to do at stop (always called).  ``exit_code`` is read after the loop.  ``schemas``
    (input id -> message schema) is for a node whose inputs come from the YAML (the recorder)."""

    on_input: Mapping[str, Callable[[Message], None]] = field(default_factory=dict)
    on_tick: Mapping[str, Callable[[], None]] = field(default_factory=dict)
    on_stop: Callable[[], None] | None = None
    exit_code: Callable[[], int] | None = None
    schemas: Mapping[str, str] | None = None
    on_closed: Callable[[str], None] | None = None
    # RAW inputs from nodes outside the project (dora-hub drivers): the handler gets the Arrow value and
    # the metadata and validates them itself (raising MessageError for a bad one: reported and counted)
    on_raw: Mapping[str, Callable[[Any, Mapping[str, Any]], None]] = field(default_factory=dict)


class NodeContext:
    """Given to ``build``: the node's logger, its dora node (created on first use) and ``send``."""

    def __init__(self, spec: NodeSpec, node: Any = None):
        self.spec = spec
        self.log = logging.getLogger(f"so101_deploy.node.{spec.name}")
        self._node = node

    @property
    def dora(self) -> Any:
        if self._node is None:
            from dora import Node  # imported here: building a node (loading a model) needs no dora

            try:
                self._node = Node()
            except RuntimeError as e:  # e.g. another node failed at start and dora gave up the dataflow
                reason = next((ln.strip() for ln in str(e).splitlines() if "failed" in ln), str(e).splitlines()[0])
                raise StartError(f"{self.spec.name}: cannot join the dataflow: {reason}") from None
        return self._node

    def node_config(self) -> dict:
        """dora's config of this node (its inputs, outputs); {} from a stand-in that has none."""
        get = getattr(self.dora, "node_config", None)
        return (get() if get is not None else None) or {}

    def send(self, output_id: str, value: Any, metadata: Mapping[str, Any] | None = None) -> None:
        """Send ``value``; the metadata gains the timeline stamps of the input being handled (see
        so101_deploy.core.trace) unless it carries stamps already, and ``t_<node>_out_ns``."""
        if output_id not in self.spec.outputs:
            raise ValueError(f"{self.spec.name}: output {output_id!r} is not declared (outputs: "
                             f"{list(self.spec.outputs)})")
        self.dora.send_output(output_id, value, _trace.outgoing(self.spec.name, metadata, (_current_input.meta,)))


@dataclass
class Stats:
    received: int = 0
    sent: int = 0
    rejected: int = 0
    errors: int = 0
    last_report: float = field(default_factory=time.monotonic)


Build = Callable[[Settings, NodeContext], Handlers]


def run_node(spec: NodeSpec, build: Build, node: Any = None, env: Mapping[str, str] | None = None) -> int:
    """Start and run one node; returns the process exit code (see the module docstring)."""
    logger = _log.setup(spec.name)
    settings = Settings(spec.name, spec.settings, env)
    ctx = NodeContext(spec, node)
    try:
        # under dora, its own config of this node; a stand-in node (tests, replays) is not checked
        _wiring.check(spec, _wiring.from_dora_environment() if node is None else None)
        settings.check()
        handlers = build(settings, ctx)
    except (SettingError, StartError) as e:
        logger.error(str(e))
        return 2
    try:
        dora_node = ctx.dora
    except BaseException as e:  # not started by dora, or the daemon is gone: still release what build took
        if handlers.on_stop is not None:
            handlers.on_stop()
        if isinstance(e, StartError):
            logger.error(str(e))
            return 2
        raise
    try:
        schemas = handlers.schemas if handlers.schemas is not None else \
            {i: s for i, s in spec.inputs.items() if s is not RAW}
        stats = run(spec.name, schemas, handlers.on_input, on_tick=handlers.on_tick, on_stop=handlers.on_stop,
                    node=dora_node, on_closed=handlers.on_closed, on_raw=handlers.on_raw)
    except FatalError as e:
        logger.error(str(e))
        return e.exit_code
    if stats.rejected or stats.errors:
        logger.warning(f"{stats.rejected} message(s) rejected, {stats.errors} handler error(s)")
    return handlers.exit_code() if handlers.exit_code else 0


def run(node_name: str, inputs: Mapping[str, str], on_input: Mapping[str, Callable[[Message], None]],
        on_tick: Mapping[str, Callable[[], None]] | None = None,
        on_stop: Callable[[], None] | None = None, node: Any = None,
        max_consecutive_errors: int = 50, on_closed: Callable[[str], None] | None = None,
        on_raw: Mapping[str, Callable[[Any, Mapping[str, Any]], None]] | None = None) -> Stats:
    """The checked event loop over ``node`` (a ``dora.Node`` or anything that yields its events).

    ``inputs`` maps input id -> message schema name; ``on_input`` maps input id -> handler(Message).
    ``on_tick`` maps raw input ids (timers, triggers) to no-argument callbacks.  ``on_stop`` always
    runs at the end (stop event, input closed, Ctrl-C, exception) so nodes that hold hardware release it.
    An input that closes for good ends the loop, unless ``on_closed(input_id)`` is given.
    ``on_raw`` maps input ids to handler(value, metadata) for messages of foreign formats (dora-hub nodes).
    """
    logger = logging.getLogger(f"so101_deploy.node.{node_name}")
    if node is None:
        from dora import Node

        node = Node()
    stats = Stats()
    consecutive = 0
    # images from dora-hub cameras come without frame_id/stamp_ns: filled per input (logged once)
    hub = {iid: HubStamps(iid, logger.warning) for iid, schema in inputs.items() if schema == "image"}
    try:
        for event in node:
            kind = event["type"]
            if kind == "STOP":
                break
            if kind == "INPUT_CLOSED":
                if on_closed is not None:
                    try:
                        on_closed(event["id"])
                    except StopNode as e:
                        logger.info(f"input {event['id']!r} closed: {e or 'nothing left to do'}; stopping")
                        break
                    continue
                logger.warning(f"input {event['id']!r} closed (the node that fed it is gone): stopping")
                break
            if kind != "INPUT":
                continue
            iid = event["id"]
            try:
                if on_tick and iid in on_tick:
                    on_tick[iid]()
                elif on_raw and iid in on_raw:
                    stats.received += 1
                    on_raw[iid](event["value"], event.get("metadata") or {})
                elif iid in inputs:
                    stats.received += 1
                    metadata = event.get("metadata")
                    if iid in hub:
                        metadata = hub[iid].fill(metadata)
                    meta = dict(metadata or {})
                    _trace.received(node_name, meta)
                    msg = decode(inputs[iid], event["value"], meta)
                    msg.sent_ns = dora_timestamp_ns(metadata)
                    _current_input.meta = msg.meta
                    try:
                        on_input[iid](msg)
                    finally:
                        _current_input.meta = None
                consecutive = 0
            except MessageError as e:
                stats.rejected += 1
                logger.error(f"input {iid!r} rejected: {e}")
            except (FatalError, SystemExit, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - keep the node alive, report, count
                stats.errors += 1
                consecutive += 1
                logger.error(f"while handling {iid!r}: {e!r}", exc_info=consecutive == 1)
                if consecutive >= max_consecutive_errors:
                    raise FatalError(f"{node_name}: {consecutive} consecutive errors, giving up", 1) from e
    finally:
        if on_stop is not None:
            on_stop()
    return stats

