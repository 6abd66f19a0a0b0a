"""Recorded Arrow messages: what a running dataflow sent, kept in files that tests replay.

A recording is a folder with one Arrow IPC file per topic (``<topic>.arrow``, topic = the
recorder's input id).  Each record batch is one message: a single column ``value`` holding the
flat array exactly as it crossed dora, and the message metadata as JSON in the batch's custom
metadata.  The file's schema metadata names the message schema, so reading a recording
validates every message again with :func:`so101_deploy.core.messages.decode`.

dora 1.1's own ``dora record`` writes ``.drec`` files that only ``dora replay`` reads back into a
running dataflow; tests need the messages in-process, so the project keeps this pyarrow format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa

from so101_deploy.core.messages import Message, MessageError, decode, encode

SUFFIX = ".arrow"


def _jsonable(meta: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in meta.items():
        if k == "timestamp":  # added by dora; not part of the message
            continue
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


class TopicWriter:
    """Appends messages of one schema to one Arrow IPC file."""

    def __init__(self, path: str | Path, message: str):
        self.path = Path(path)
        self.message = message
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self.count = 0

    def write(self, value: pa.Array, meta: Mapping[str, Any]) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            schema = pa.schema([("value", value.type)], metadata={"message": self.message})
            # zstd keeps committed recordings of camera frames at kilobytes
            options = pa.ipc.IpcWriteOptions(compression="zstd")
            self._writer = pa.ipc.new_file(str(self.path), schema, options=options)
        batch = pa.record_batch([value], names=["value"])
        self._writer.write_batch(batch, custom_metadata={"meta": json.dumps(_jsonable(meta))})
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Recorder:
    """One :class:`TopicWriter` per topic under a folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.writers: dict[str, TopicWriter] = {}

    def record(self, topic: str, message: str, value: pa.Array, meta: Mapping[str, Any]) -> None:
        w = self.writers.get(topic)
        if w is None:
            w = self.writers[topic] = TopicWriter(self.folder / f"{topic}{SUFFIX}", message)
        w.write(value, meta)

    def record_message(self, topic: str, msg: Message) -> None:
        value, meta = encode(msg.name, msg.data, **msg.meta)
        self.record(topic, msg.name, value, meta)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_messages(path: str | Path) -> Iterator[tuple[pa.Array, dict[str, Any], str]]:
    """Yield (Arrow value, metadata, message name) in recorded order, without validation."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recording {path} does not exist")
    try:
        reader = pa.ipc.open_file(str(path))
    except pa.ArrowInvalid as e:
        raise MessageError(f"recording {path}: not an Arrow IPC file ({e})") from None
    name = (reader.schema.metadata or {}).get(b"message", b"").decode()
    if not name:
        raise MessageError(f"recording {path}: the file does not name its message schema")
    for i in range(reader.num_record_batches):
        batch, custom = reader.get_batch_with_custom_metadata(i)
        meta = json.loads((custom or {}).get(b"meta", b"{}")) if custom else {}
        yield batch.column(0), meta, name


def read_messages(path: str | Path) -> list[Message]:
    """All messages of one topic file, each validated against its schema."""
    return [decode(name, value, meta) for value, meta, name in iter_messages(path)]


def read_recording(folder: str | Path) -> dict[str, list[Message]]:
    """topic -> messages for every ``*.arrow`` file in a recording folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"recording folder {folder} does not exist")
    return {p.stem: read_messages(p) for p in sorted(folder.glob(f"*{SUFFIX}"))}
