"""Loading checkpoints without running code that came with them.

A pickle can call any importable function while it loads (``os.system``, ``builtins.eval``...), so
a checkpoint downloaded from somewhere is a program.  ``load_checkpoint`` uses torch's
``weights_only`` unpickler, which builds only tensors, plain containers and an explicit
allow-list of classes, and refuses any other global *before* calling it.  The allow-list holds
exactly what a training snapshot's OmegaConf ``cfg`` pickles into (found by saving a real
``OmegaConf.create(...)`` config and reading what ``weights_only`` rejected), plus OmegaConf's
typed value nodes.  These are data containers: unpickling them sets attributes, nothing else.
The config is never resolved here, so interpolations and resolvers do not run either.

Full pickle loading (which runs whatever code the file holds) is trusted per file, never per
process: ``trusted_sha256`` is the sha256 of the one file the user made or trusts
(``SO101_POLICY_TRUSTED_SHA256`` in the policy node's env, or ``--trust-checkpoint``, which hashes
the file it is given), and the file is loaded in full only if the bytes read have that very hash;
any other file is refused before it is unpickled.  The old blanket switch ``SO101_POLICY_TRUSTED``
enables nothing (an export left in a shell would silently trust every checkpoint a flow loads);
when it is still set, a refusal says so.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import pickle
import re
import typing
from pathlib import Path
from typing import Any, Mapping

TRUST_SHA256_ENV = "SO101_POLICY_TRUSTED_SHA256"
LEGACY_TRUST_ENV = "SO101_POLICY_TRUSTED"  # no longer honoured: only mentioned when it is still set
LEGACY_NOTE = (f"{LEGACY_TRUST_ENV} is set but no longer honoured: only {TRUST_SHA256_ENV} (the sha256 of "
               f"the very file) enables full loading.")

log = logging.getLogger(__name__)
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, unsafe or not in an expected format."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle references a global outside the allow-list; the message says how to
    trust this very file (its sha256 and the setting line)."""

    def __init__(self, path: Path, global_name: str, sha256: str, legacy_trust_set: bool = False):
        self.path = path
        self.global_name = global_name
        self.sha256 = sha256
        self.legacy_trust_set = legacy_trust_set
        super().__init__(
            f"{path}: refused to load: the pickle references {global_name!r}, which is not on the "
            f"allow-list of a training snapshot (tensors, OmegaConf configs, plain containers). Loading it "
            f"could run code. If you made this file or trust its source, trust this very file (sha256 "
            f"{sha256}): add the line '{TRUST_SHA256_ENV}: {sha256}' to the policy node's env in the dataflow "
            f"YAML, or pass --trust-checkpoint to so101-deploy infer."
            + (f" {LEGACY_NOTE}" if legacy_trust_set else ""))


class TrustMismatchError(CheckpointError):
    """A trusted hash was given, and the file's sha256 is another: nothing was unpickled."""

    def __init__(self, path: Path, expected: str, actual: str):
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{path}: refused to load: its sha256 is {actual}, but the trusted sha256 is {expected}; this is not "
            f"the file that was trusted, and nothing in it was unpickled.")


def parse_sha256(value: str) -> str:
    """A sha256 as 64 lowercase hex digits; :class:`ValueError` for anything else."""
    v = value.strip()
    if not _SHA256_RE.fullmatch(v):
        raise ValueError(f"{value!r} is not a sha256 (64 hex digits, as sha256sum prints)")
    return v.lower()


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def legacy_trust_in(env: Mapping[str, str] | None = None) -> bool:
    """Whether the retired ``SO101_POLICY_TRUSTED`` has a value in ``env`` (default: this process's)."""
    v = (os.environ if env is None else env).get(LEGACY_TRUST_ENV)
    return v is not None and v.strip() != ""


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


def load_checkpoint(path: str | Path, *, trusted_sha256: str | None = None, map_location: str = "cpu",
                    legacy_trust_set: bool = False) -> Any:
    """``torch.load`` a checkpoint safely; raise :class:`CheckpointError` with a clear reason.

    Without ``trusted_sha256`` only tensors, containers and OmegaConf configs can come out, and a file
    that references anything else raises :class:`UnsafeCheckpointError` naming the global and the
    file's sha256, before any of it runs.  With it, the file is hashed and, only if its sha256 equals
    ``trusted_sha256`` (any case), unpickled in full from the very bytes hashed (one open file, so a
    file swapped in after the check is not the one read); otherwise :class:`TrustMismatchError`.
    ``legacy_trust_set`` (or ``SO101_POLICY_TRUSTED`` in this process's environment) only adds a note
    to a refusal: that switch enables nothing.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if trusted_sha256 is not None:
        return _load_trusted(path, parse_sha256(trusted_sha256), map_location)
    try:
        with torch.serialization.safe_globals(omegaconf_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        m = _GLOBAL_RE.search(str(e))
        name = m.group(1) if m else _first_unsafe_global(path)
        if name and "." not in name:  # torch drops the module of builtins ("exec")
            name = "builtins." + name
        if name:
            raise UnsafeCheckpointError(path, name, file_sha256(path),
                                        legacy_trust_set or legacy_trust_in()) from None
        raise CheckpointError(f"{path}: not a loadable checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, KeyError) as e:
        # truncated zip, not a torch file...
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {_first_line(e)})") from None


def _load_trusted(path: Path, expected: str, map_location: str) -> Any:
    """Full pickle loading of ``path``, only if the bytes read hash to ``expected``."""
    import torch

    try:
        with open(path, "rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
            if actual != expected:
                raise TrustMismatchError(path, expected, actual)
            log.warning(f"{path}: loading as a full pickle, which can run code in it (trusted by its sha256 "
                        f"{actual})")
            f.seek(0)
            return torch.load(f, map_location=map_location, weights_only=False)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError,
            KeyError) as e:  # truncated zip, not a torch file, a module the pickle names is missing...
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
