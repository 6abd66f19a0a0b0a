"""Logging for nodes and commands: the standard :mod:`logging`, one format everywhere.

Library modules log through ``logging.getLogger(__name__)``; a node calls :func:`setup` once with its
name, so every line of that process reads ``[node] level: message`` (info and below on stdout,
warnings and errors on stderr, as dora collects both into the node's log).
"""

from __future__ import annotations

import logging
import sys

_FORMAT = "[{node}] {level}: {message}"


class _Formatter(logging.Formatter):
    def __init__(self, node: str):
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        text = _FORMAT.format(node=self.node, level=record.levelname.lower(), message=record.getMessage())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def setup(node: str, level: int = logging.INFO) -> logging.Logger:
    """Route every logger of this process to stdout/stderr with the node's name; returns the node's
    own logger.  Calling it again (tests run several nodes in one process) re-labels the output."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_so101", False):
            root.removeHandler(h)
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_Below(logging.WARNING))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for h in (out, err):
        h.setFormatter(_Formatter(node))
        h._so101 = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)
    return logging.getLogger(f"so101_deploy.node.{node}")


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def leveled(logger: logging.Logger):
    """A ``log(level, message)`` callable over a standard logger, for objects that take an injectable
    log (tests pass their own); ``level`` is one of :data:`LEVELS`."""

    def log(level: str, message: str) -> None:
        logger.log(LEVELS[level], message)

    return log
