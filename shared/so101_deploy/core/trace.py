"""Per-frame timeline stamps carried in message metadata, so one goal tells where its time went.

Every node stamps the messages it receives with ``t_<node>_in_ns`` (at receipt, before decoding) and
the messages it sends with ``t_<node>_out_ns``; a node's output carries the stamps of the input it was
computed from (the current input by default, or the sources a node names: the observation merges its
mask's and its disparity's).  A goal therefore arrives with the whole chain: camera, frame gate, seg,
depth, observation, policy, controller; the servo node adds the write of that goal to the bus.

Stamps are ``time.time_ns()`` of the machine that took them (as ``stamp_ns``): differences between
stamps taken on one machine are exact; across machines they include the clocks' offset (see the
two-machine notes in docs/).  Staleness is never judged from them.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

PREFIX = "t_"


def is_stamp(key: str) -> bool:
    return key.startswith(PREFIX) and key.endswith("_ns")


def stamps(meta: Mapping[str, Any] | None) -> dict[str, int]:
    """The timeline stamps of one message's metadata."""
    return {k: int(v) for k, v in (meta or {}).items() if is_stamp(k) and isinstance(v, (int,)) and not
            isinstance(v, bool)}


def merged(*metas: Mapping[str, Any] | None) -> dict[str, int]:
    """The stamps of several messages (the observation's mask and disparity); the first wins a clash."""
    out: dict[str, int] = {}
    for meta in reversed(metas):
        out.update(stamps(meta))
    return out


def received(node: str, meta: dict[str, Any], now_ns: int | None = None) -> None:
    """Stamp a message's metadata as received by ``node`` (in place)."""
    meta[f"{PREFIX}{node}_in_ns"] = time.time_ns() if now_ns is None else int(now_ns)


def outgoing(node: str, metadata: Mapping[str, Any] | None, sources: Iterable[Mapping[str, Any] | None]) -> dict:
    """The metadata to send: ``metadata`` plus the sources' stamps (unless ``metadata`` already
    carries stamps, chosen by the node) and ``t_<node>_out_ns``."""
    meta = dict(metadata or {})
    if not any(is_stamp(k) for k in meta):
        meta.update(merged(*sources))
    meta[f"{PREFIX}{node}_out_ns"] = time.time_ns()
    return meta
