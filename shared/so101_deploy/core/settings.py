"""Node settings: declared once, read typed, refused with one line naming the node and the key.

dora passes a node's YAML ``env`` as environment variables.  Each node declares the settings it reads
as a tuple of :class:`Setting` (name, type, default, range or choices, doc), usually by joining the
``SETTINGS`` tuples of the library objects it builds.  :class:`Settings` reads only declared keys, so a
default or a range lives in exactly one place, and :meth:`Settings.check` parses every declared value
at start, before any hardware is touched.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping


class SettingError(ValueError):
    """A node setting (an ``env`` entry in the dataflow YAML) that is missing or malformed."""


KINDS = ("str", "float", "int", "bool", "choice")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    """One setting a node reads from its ``env``: ``kind`` is str, float, int, bool or choice."""

    key: str
    kind: str
    default: Any = None
    doc: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    required: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"setting {self.key}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "choice" and self.default is not None and self.default not in self.choices:
            raise ValueError(f"setting {self.key}: default {self.default!r} is not one of {self.choices}")

    def describe(self) -> str:
        if self.kind == "choice":
            rng = "|".join(self.choices)
        elif self.min is not None or self.max is not None:
            rng = f"{self.kind} in [{self.min}, {self.max}]"
        else:
            rng = self.kind
        default = "required" if self.required else f"default {self.default!r}"
        return f"{self.key} ({rng}, {default}): {self.doc}"

    def parse(self, node: str, raw: str | None) -> Any:
        """The typed value of ``raw`` (None or blank = the default)."""
        v = None if raw is None or raw.strip() == "" else raw.strip()
        if v is None:
            if self.required:
                raise SettingError(f"{node}: setting {self.key} is required (set it in the node's env in the "
                                   f"dataflow YAML)")
            return self.default
        if self.kind == "str":
            return v
        if self.kind == "bool":
            if v.lower() in _TRUE:
                return True
            if v.lower() in _FALSE:
                return False
            raise SettingError(f"{node}: {self.key}={v!r} must be true or false")
        if self.kind == "choice":
            if v not in self.choices:
                raise SettingError(f"{node}: {self.key}={v!r} must be one of {list(self.choices)}")
            return v
        try:
            x = int(v) if self.kind == "int" else float(v)
        except ValueError:
            raise SettingError(f"{node}: {self.key}={v!r} is not {'an integer' if self.kind == 'int' else 'a number'}") \
                from None
        if isinstance(x, float) and not math.isfinite(x):
            raise SettingError(f"{node}: {self.key}={v!r} must be a finite number"
                               + (f" in [{self.min}, {self.max}]" if self.min is not None or self.max is not None else ""))
        if (self.min is not None and x < self.min) or (self.max is not None and x > self.max):
            raise SettingError(f"{node}: {self.key}={v!r} must be in [{self.min}, {self.max}]")
        return x


def join(*groups: Iterable[Setting]) -> tuple[Setting, ...]:
    """The settings of several library objects as one node's declaration; a key declared twice must
    be declared the same way (e.g. SO101_DEVICE shared by a model and its backend)."""
    out: dict[str, Setting] = {}
    for group in groups:
        for s in group:
            if s.key in out and out[s.key] != s:
                raise ValueError(f"setting {s.key} declared twice, differently: {out[s.key]} vs {s}")
            out[s.key] = s
    return tuple(out.values())


class Settings:
    """Typed access to a node's declared settings; ``settings["SO101_X"]`` is the parsed value."""

    def __init__(self, node: str, declared: Iterable[Setting], env: Mapping[str, str] | None = None):
        self.node = node
        self.declared = {s.key: s for s in declared}
        self.env = os.environ if env is None else env
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            spec = self.declared.get(key)
            if spec is None:  # a programming error: every key a node reads is declared
                raise KeyError(f"{self.node}: setting {key} is not declared by this node")
            self._values[key] = spec.parse(self.node, self.env.get(key))
        return self._values[key]

    def is_set(self, key: str) -> bool:
        """True when the YAML gives the key a non-blank value (not the declared default)."""
        v = self.env.get(key)
        return v is not None and v.strip() != ""

    def check(self) -> dict[str, Any]:
        """Parse every declared setting (raises the first :class:`SettingError`); returns them all."""
        return {key: self[key] for key in self.declared}

    @classmethod
    def of(cls, node: str, values: Mapping[str, Any], declared: Iterable[Setting]) -> "Settings":
        """Settings from plain values (tests, commands): the same parsing as a node's env."""
        return cls(node, declared, {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
                                    for k, v in values.items()})
