"""Loading checkpoints without running code that came with them.

A pickle can call any importable function while it loads (``os.system``, ``builtins.eval``...), so
a checkpoint downloaded from somewhere is a program.  ``load_checkpoint`` uses torch's
``weights_only`` unpickler, which builds only tensors, plain containers and an explicit
allow-list of classes, and refuses any other global *before* calling it.  The allow-list holds
exactly what a training snapshot's OmegaConf ``cfg`` pickles into (found by saving a real
``OmegaConf.create(...)`` config and reading what ``weights_only`` rejected), plus OmegaConf's
typed value nodes.  These are data containers: unpickling them sets attributes, nothing else.
The config is never resolved here, so interpolations and resolvers do not run either.

``trusted=True`` (``--trust-checkpoint`` / ``SO101_POLICY_TRUSTED=1``) is the explicit opt-in to
full pickle loading for files the user made or trusts.
"""

from __future__ import annotations

import collections
import pickle
import re
import typing
from pathlib import Path
from typing import Any

TRUST_ENV = "SO101_POLICY_TRUSTED"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, unsafe or not in an expected format."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle references a global outside the allow-list."""

    def __init__(self, path: Path, global_name: str):
        self.path = path
        self.global_name = global_name
        super().__init__(
            f"{path}: refused to load: the pickle references {global_name!r}, which is not on the "
            f"allow-list of a training snapshot (tensors, OmegaConf configs, plain containers). Loading it "
            f"could run code. If you made this file or trust its source, opt in with --trust-checkpoint "
            f"or {TRUST_ENV}=1.")


def omegaconf_safe_globals() -> list[Any]:
    """The classes an OmegaConf ``DictConfig`` pickle needs, found empirically (see module doc)."""
    from omegaconf import base, dictconfig, listconfig, nodes

    found = [dictconfig.DictConfig, listconfig.ListConfig, base.ContainerMetadata, base.Metadata,
             nodes.AnyNode, typing.Any, dict, list, int, collections.defaultdict]
    # typed value nodes appear when a config was built from a structured (dataclass) schema
    typed = [getattr(nodes, n) for n in ("StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                                         "BytesNode", "PathNode") if hasattr(nodes, n)]
    return found + typed + [float, str, bool]


# torch words it "Unsupported global: GLOBAL x was not an allowed global" or "unsupported GLOBAL x whose
# module y is blocked" depending on the module
_GLOBAL_RE = re.compile(r"GLOBAL ([\w\.]+)")


def load_checkpoint(path: str | Path, *, trusted: bool = False, map_location: str = "cpu") -> Any:
    """``torch.load`` a checkpoint safely; raise :class:`CheckpointError` with a clear reason.

    Without ``trusted`` only tensors, containers and OmegaConf configs can come out, and a file that
    references anything else raises :class:`UnsafeCheckpointError` naming the global, before any of
    it runs.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        if trusted:
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(omegaconf_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        m = _GLOBAL_RE.search(str(e))
        name = m.group(1) if m else _first_unsafe_global(path)
        if name and "." not in name:  # torch drops the module of builtins ("exec")
            name = "builtins." + name
        if name:
            raise UnsafeCheckpointError(path, name) from None
        raise CheckpointError(f"{path}: not a loadable checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, KeyError) as e:
        # truncated zip, not a torch file, missing module in trusted mode...
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {_first_line(e)})") from None


def _first_unsafe_global(path: Path) -> str | None:
    """The first global outside the allow-list, read without unpickling (zip checkpoints only)."""
    import torch

    allowed = {f"{g.__module__}.{getattr(g, '__qualname__', getattr(g, '_name', ''))}"
               for g in omegaconf_safe_globals()}
    try:  # what torch's weights-only unpickler allows on its own (tensor rebuilding, dtypes...)
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed |= set(_get_allowed_globals())
    except (ImportError, AttributeError):
        pass
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint: a legacy pickle, scanned statically
        names = _pickle_globals(path)
    rest = [n for n in names if n not in allowed]
    return rest[0] if rest else None


def _pickle_globals(path: Path) -> list[str]:
    """The globals a plain pickle file names, read with ``pickletools`` (nothing is executed)."""
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - a corrupt pickle: report what was found so far
        pass
    return names


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    for line in s.splitlines():
        if "WeightsUnpickler error" in line:
            return line.strip()
    return s.splitlines()[0] if s else type(e).__name__
