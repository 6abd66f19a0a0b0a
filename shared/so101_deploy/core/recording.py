"""Recorded Arrow messages: what a running dataflow sent, kept in files that tests replay.

A recording is a folder with one Arrow IPC stream per topic (``<topic>.arrow``, topic = the
recorder's input id).  Each record batch is one message: a single column ``value`` holding the
flat array exactly as it crossed dora, and the message metadata as JSON in the batch's custom
metadata (key ``meta``).  The stream's schema metadata (key ``message``) names the message schema,
so reading a recording validates every message again with :func:`so101_deploy.core.messages.decode`.
Record batch bodies are zstd-compressed.

Crash safety: the IPC *stream* format needs nothing at the end of the file (the IPC *file* format
writes its footer only at close, so a killed writer left nothing readable).  :class:`TopicWriter`
buffers small messages and flushes the file at least every ``flush_interval_s`` (0.5 s): when a
message arrives that long after the last flush, and when :meth:`Recorder.flush_due` runs (the
recorder node calls it from its ``tick`` timer, so a topic that went quiet is flushed too).  After a
``kill -9`` of the recorder, every message it got up to about a second before is in the file; the
readers here read every complete message and warn (:class:`RecordingCutWarning`) about a cut-off
last one or a missing end-of-stream marker instead of failing.  (A flush hands the bytes to the
operating system; it does not ``fsync``, so a power cut may still lose what the kernel held.)

Reading also accepts the IPC *file* format that earlier recordings (and the committed test data
under ``tests/data/recordings``) were written in, also a file cut off before its footer.

Read a recording with plain pyarrow (an old IPC file: ``pa.ipc.open_file``)::

    reader = pa.ipc.open_stream("rec/image.arrow")
    reader.schema.metadata[b"message"]                            # b"image"
    batch, custom = reader.read_next_batch_with_custom_metadata()  # custom[b"meta"]: the JSON metadata

dora 1.1's own ``dora record`` writes ``.drec`` files that only ``dora replay`` reads back into a
running dataflow; tests need the messages in-process, so the project keeps this pyarrow format.

:class:`ReplayNode` plays recordings back through a node's ``main(node=..., env=...)`` in-process (a
stand-in for ``dora.Node``) and keeps what the node sent: the node tests do this, and so can anyone
comparing two versions of a node on the same recorded run.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa

from so101_deploy.core.messages import Message, MessageError, decode, encode

SUFFIX = ".arrow"
FLUSH_INTERVAL_S = 0.5  # + the recorder's 250 ms tick: every message is in the file within a second
BUFFER_BYTES = 256 * 1024  # small messages are gathered between flushes; larger writes go straight through
FILE_MAGIC = b"ARROW1"  # the IPC file format starts with ARROW1 and two bytes of padding, then a stream
FILE_STREAM_OFFSET = 8
END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # continuation marker + zero metadata length
CONTINUATION = b"\xff\xff\xff\xff"


class RecordingCutWarning(UserWarning):
    """A recording ends early: its last message was cut off mid-write, or the stream has no end marker
    (the recorder was killed, or is still writing).  Every complete message before the cut is read."""


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
    """Appends messages of one schema to one Arrow IPC stream file.

    ``compression_level``: zstd level (None: pyarrow's fast default, what a live recorder wants;
    19 halves a rendered float disparity for files that are written once and kept, e.g. committed
    test data).  The messages read back the same at any level.

    ``flush_interval_s``: the file is flushed when a message arrives at least this long after the last
    flush (so the first message, and the first one after a quiet spell, go out at once), by
    :meth:`flush_due` when the last flush is that old and messages wait, and at :meth:`close`.
    ``clock`` (seconds, monotonic) is for tests."""

    def __init__(self, path: str | Path, message: str, compression_level: int | None = None,
                 flush_interval_s: float = FLUSH_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        if flush_interval_s < 0:
            raise ValueError(f"TopicWriter: flush_interval_s must be >= 0, got {flush_interval_s}")
        self.path = Path(path)
        self.message = message
        self.compression_level = compression_level
        self.flush_interval_s = float(flush_interval_s)
        self._clock = clock
        self._file: pa.NativeFile | None = None
        self._sink: pa.BufferedOutputStream | None = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._last_flush = -math.inf
        self.count = 0
        self.flushed = 0  # messages handed to the operating system
        self.flushes = 0

    def write(self, value: pa.Array, meta: Mapping[str, Any]) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            schema = pa.schema([("value", value.type)], metadata={"message": self.message})
            # zstd keeps committed recordings of camera frames at kilobytes
            codec = "zstd" if self.compression_level is None else \
                pa.Codec("zstd", compression_level=self.compression_level)
            options = pa.ipc.IpcWriteOptions(compression=codec)
            self._file = pa.OSFile(str(self.path), "wb")
            self._sink = pa.BufferedOutputStream(self._file, buffer_size=BUFFER_BYTES)
            self._writer = pa.ipc.new_stream(self._sink, schema, options=options)
        batch = pa.record_batch([value], names=["value"])
        self._writer.write_batch(batch, custom_metadata={"meta": json.dumps(_jsonable(meta))})
        self.count += 1
        if self._clock() - self._last_flush >= self.flush_interval_s:
            self.flush()

    @property
    def pending(self) -> int:
        """Messages written since the last flush (possibly still in the buffer)."""
        return self.count - self.flushed

    def flush(self) -> None:
        """Hand everything written so far to the operating system (no fsync)."""
        if self._sink is None:
            return
        self._sink.flush()
        self._last_flush = self._clock()
        self.flushed = self.count
        self.flushes += 1

    def flush_due(self) -> bool:
        """Flush when messages wait and the last flush is ``flush_interval_s`` old; True if it flushed."""
        if self.pending and self._clock() - self._last_flush >= self.flush_interval_s:
            self.flush()
            return True
        return False

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()  # writes the end-of-stream marker
            self._sink.close()  # flushes and closes the file
            self._writer = self._sink = self._file = None
            self.flushed = self.count
            self._last_flush = self._clock()


class Recorder:
    """One :class:`TopicWriter` per topic under a folder.  Call :meth:`flush_due` from a timer so a
    topic that went quiet is flushed within ``flush_interval_s`` plus the timer's period."""

    def __init__(self, folder: str | Path, compression_level: int | None = None,
                 flush_interval_s: float = FLUSH_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.folder = Path(folder)
        self.compression_level = compression_level
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        self.writers: dict[str, TopicWriter] = {}

    def record(self, topic: str, message: str, value: pa.Array, meta: Mapping[str, Any]) -> None:
        w = self.writers.get(topic)
        if w is None:
            w = self.writers[topic] = TopicWriter(self.folder / f"{topic}{SUFFIX}", message,
                                                  compression_level=self.compression_level,
                                                  flush_interval_s=self.flush_interval_s, clock=self._clock)
        w.write(value, meta)

    def record_message(self, topic: str, msg: Message) -> None:
        value, meta = encode(msg.name, msg.data, **msg.meta)
        if "primitive" not in msg.meta:
            meta.pop("primitive", None)  # a viewer hint `encode` adds: the recording keeps the metadata that came
        self.record(topic, msg.name, value, meta)

    def flush_due(self) -> list[str]:
        """:meth:`TopicWriter.flush_due` of every topic; returns the topics flushed."""
        return [topic for topic, w in self.writers.items() if w.flush_due()]

    def flush(self) -> None:
        for w in self.writers.values():
            w.flush()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _cut(path: Path, message: str) -> None:
    warnings.warn(f"recording {path}: {message}", RecordingCutWarning, stacklevel=3)


def iter_messages(path: str | Path) -> Iterator[tuple[pa.Array, dict[str, Any], str]]:
    """Yield (Arrow value, metadata, message name) in recorded order, without validation.

    Reads the IPC stream format (and the IPC file format of older recordings, through the stream it
    holds).  A recording cut off by a killed recorder yields every complete message, then warns
    (:class:`RecordingCutWarning`); one cut before its first message (an empty file: killed before the
    first flush) yields nothing, with the warning.  A file that is not an Arrow IPC stream or file is
    a :class:`MessageError`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recording {path} does not exist")
    size = path.stat().st_size
    with pa.OSFile(str(path), "rb") as f:
        head = f.read(FILE_STREAM_OFFSET)
        is_file = head[:len(FILE_MAGIC)] == FILE_MAGIC
        start = FILE_STREAM_OFFSET if is_file else 0
        f.seek(start)
        try:
            reader = pa.ipc.open_stream(f)
        except (pa.ArrowException, OSError) as e:
            f.seek(0)
            if _cut_in_schema(f.read(start + 8), size, start):
                _cut(path, f"cut off before its schema was complete ({size} bytes); no messages read")
                return
            raise MessageError(f"recording {path}: not an Arrow IPC stream or file ({e})") from None
        name = (reader.schema.metadata or {}).get(b"message", b"").decode()
        if not name:
            raise MessageError(f"recording {path}: the file does not name its message schema")
        n = 0
        end = f.tell()  # the end of the last complete message (the schema, at first)
        while True:
            try:
                batch, custom = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as e:
                _cut(path, f"cut off in message {n}, of which {size - end} byte(s) are there ({e}); read the "
                           f"{n} complete message(s) before it (the recorder was killed mid-write?)")
                return
            end = f.tell()
            meta = json.loads((custom or {}).get(b"meta", b"{}")) if custom else {}
            n += 1
            yield batch.column(0), meta, name
        if f.tell() != end + len(END_OF_STREAM):  # a clean end of file right after a message: no marker
            _cut(path, f"no end-of-stream marker after message {n}: the recorder did not close it (killed, or "
                       f"still recording); read {n} message(s)")


def _cut_in_schema(head: bytes, size: int, start: int) -> bool:
    """Whether a stream that fails to open is just cut off before its schema message is complete (an IPC
    message: continuation marker 0xFFFFFFFF, int32 metadata length, the metadata)."""
    if 0 < size < FILE_STREAM_OFFSET and (FILE_MAGIC + b"\0\0").startswith(head[:size]):
        return True  # an IPC file cut inside its leading ARROW1 magic
    msg = head[start:start + 8]
    if msg[:4] != CONTINUATION[:len(msg[:4])]:
        return False
    if len(msg) < 8:
        return True
    length = int.from_bytes(msg[4:8], "little", signed=True)
    return length > 0 and size - start < 8 + length


def read_messages(path: str | Path) -> list[Message]:
    """All messages of one topic file, each validated against its schema (a cut-off recording: the
    complete messages, with a :class:`RecordingCutWarning`)."""
    return [decode(name, value, meta) for value, meta, name in iter_messages(path)]


def read_recording(folder: str | Path) -> dict[str, list[Message]]:
    """topic -> messages for every ``*.arrow`` file in a recording folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"recording folder {folder} does not exist")
    return {p.stem: read_messages(p) for p in sorted(folder.glob(f"*{SUFFIX}"))}


# --- replaying recordings through a node --------------------------------------------------------

# The project's output ids whose message schema is not their own name (see the dataflow YAML files).
OUTPUT_SCHEMAS = {"mask": "seg_mask", "goal": "joint_goal", "episode_start": "joint_state"}

ORDERS = ("stamp", "file")


class ReplayNode:
    """A stand-in for ``dora.Node`` fed from recordings: replay recorded messages through a node's
    ``main(node=..., env=...)`` and look at what it sent.

    ``inputs`` is a list of ``(input_id, source)`` pairs (or a mapping input_id -> source); a source is
    a recording file (``<topic>.arrow``), a list of :class:`~so101_deploy.core.messages.Message`, or a
    list of ``(arrow_value, metadata)`` pairs.  Several sources may feed one input id.  Messages from
    files are replayed exactly as recorded (the same Arrow values, the recorded metadata); Message
    objects are encoded again with their own metadata.

    Order (``order``):

    * ``"stamp"`` (default): all messages sorted by their ``stamp_ns`` metadata -- the capture time
      the pipeline carries along (a mask, a disparity, an observation, an action and a goal keep the
      stamp of the camera frame they come from).  Equal stamps keep the order of ``inputs``, then the
      file order; so list the input that happened first at a shared stamp first (e.g. the sim's
      ``joint_state`` before the ``mask`` rendered at the same step).
    * ``"file"``: source after source as listed, each in its recorded order.

    Timer ticks (events with id ``tick_id`` and an empty value, as dora's timers send them):
    ``ticks_before`` ticks first, a tick before every message when ``tick_each``, ``ticks_after``
    ticks after the last message; ``tick_interval_s`` > 0 makes consecutive ticks at least that far
    apart in wall time (nodes that pace themselves with ``time.monotonic``: the camera's frame rate,
    the servo bus).  A ``STOP`` event ends the stream (``stop=False`` leaves it out: the iteration
    just ends, as when every input closed).

    Outputs: every ``send_output(output_id, value, metadata)`` is kept in :attr:`sent`, in order, as
    ``(output_id, value, metadata)`` with a private copy of the value; :meth:`messages` decodes one
    output id's messages with its schema (``outputs`` maps output id -> schema; an id that is a
    schema name or in :data:`OUTPUT_SCHEMAS` needs no entry), so a message that breaks its schema
    fails the caller there.  Sending on an output not declared in ``outputs`` raises, as dora does.

    :meth:`node_config` returns ``{"inputs": {input_id: {"source": ...}}, "outputs": [...]}`` for the
    replayed input ids, the tick id when ticks are sent, and ``extra_inputs`` (inputs a node wants
    wired even if nothing arrives on them in this replay).

    Example (A/B a node on a recorded run)::

        node = ReplayNode([("image", "rec/image.arrow")], outputs={"mask": "seg_mask"})
        assert seg_main.main(node=node, env={"SO101_SEG_CHECKPOINT": "best.ckpt"}) == 0
        masks = node.messages("mask")
    """

    def __init__(self, inputs: Mapping[str, Any] | list[tuple[str, Any]], *, order: str = "stamp",
                 ticks_before: int = 0, tick_each: bool = False, ticks_after: int = 0, tick_id: str = "tick",
                 tick_interval_s: float = 0.0, outputs: Mapping[str, str | None] | list[str] | tuple = (),
                 extra_inputs: tuple[str, ...] | list[str] = (), stop: bool = True):
        if order not in ORDERS:
            raise ValueError(f"ReplayNode: order must be one of {list(ORDERS)}, got {order!r}")
        if min(ticks_before, ticks_after) < 0 or tick_interval_s < 0:
            raise ValueError("ReplayNode: tick counts and tick_interval_s must be >= 0")
        pairs = list(inputs.items()) if isinstance(inputs, Mapping) else list(inputs)
        self.order = order
        self.ticks_before, self.tick_each, self.ticks_after = int(ticks_before), bool(tick_each), int(ticks_after)
        self.tick_id = tick_id
        self.tick_interval_s = float(tick_interval_s)
        self.stop = stop
        self._schemas: dict[str, str | None] = dict(outputs) if isinstance(outputs, Mapping) else \
            {o: None for o in outputs}
        self._messages: list[tuple[str, pa.Array, dict[str, Any]]] = []
        keyed = []
        for k, (input_id, source) in enumerate(pairs):
            for n, (value, meta) in enumerate(_replay_source(input_id, source)):
                stamp = meta.get("stamp_ns")
                if order == "stamp" and (isinstance(stamp, bool) or not isinstance(stamp, (int, np.integer))):
                    raise MessageError(f"ReplayNode: input {input_id!r} message {n} has no integer stamp_ns to "
                                       f"order by (use order='file')")
                keyed.append(((int(stamp), k, n) if order == "stamp" else (k, n), (input_id, value, meta)))
        keyed.sort(key=lambda e: e[0])
        self._messages = [m for _, m in keyed]
        ids = list(dict.fromkeys([i for i, _ in pairs]))
        config = {i: {"source": f"replay/{i}"} for i in ids}
        if self.ticks_before or self.tick_each or self.ticks_after:
            config[tick_id] = {"source": "dora/timer/replay"}
        for i in extra_inputs:
            config.setdefault(i, {"source": f"replay/{i}"})
        self._config = {"inputs": config, "outputs": list(self._schemas)}
        self.sent: list[tuple[str, pa.Array, dict[str, Any]]] = []
        self.events_sent = 0
        self._events: Iterator[dict[str, Any]] | None = None
        self._last_tick_s: float | None = None

    # --- what the node reads ------------------------------------------------------------------
    @property
    def input_messages(self) -> list[tuple[str, pa.Array, dict[str, Any]]]:
        """The replayed messages in the order they are delivered: (input_id, value, metadata)."""
        return list(self._messages)

    def _tick(self) -> dict[str, Any]:
        if self.tick_interval_s > 0 and self._last_tick_s is not None:
            wait = self.tick_interval_s - (time.monotonic() - self._last_tick_s)
            if wait > 0:
                time.sleep(wait)
        self._last_tick_s = time.monotonic()
        return {"type": "INPUT", "id": self.tick_id, "value": pa.array([], pa.null()), "metadata": {}}

    def _generate(self) -> Iterator[dict[str, Any]]:
        for _ in range(self.ticks_before):
            yield self._tick()
        for input_id, value, meta in self._messages:
            if self.tick_each:
                yield self._tick()
            yield {"type": "INPUT", "id": input_id, "value": value, "metadata": dict(meta)}
        for _ in range(self.ticks_after):
            yield self._tick()
        if self.stop:
            yield {"type": "STOP", "id": None, "value": None, "metadata": {}}

    def next(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event, or None when the replay is over (as ``dora.Node.next`` when all inputs closed)."""
        if self._events is None:
            self._events = self._generate()
        event = next(self._events, None)
        if event is not None:
            self.events_sent += 1
        return event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            event = self.next()
            if event is None:
                return
            yield event

    def node_config(self) -> dict[str, Any]:
        return {"inputs": {k: dict(v) for k, v in self._config["inputs"].items()},
                "outputs": list(self._config["outputs"])}

    # --- what the node sends ------------------------------------------------------------------
    def send_output(self, output_id: str, value: Any, metadata: Mapping[str, Any] | None = None) -> None:
        if self._schemas and output_id not in self._schemas:
            raise ValueError(f"ReplayNode: output {output_id!r} is not declared (outputs: {list(self._schemas)})")
        if isinstance(value, pa.ChunkedArray):
            value = value.combine_chunks()
        if isinstance(value, pa.Array) and pa.types.is_primitive(value.type) and not value.null_count:
            value = pa.array(value.to_numpy(zero_copy_only=False).copy())  # the node may reuse its buffer
        self.sent.append((output_id, value, dict(metadata or {})))

    def output_ids(self) -> list[str]:
        """The output ids the node sent on, in the order of their first message."""
        return list(dict.fromkeys(o for o, _, _ in self.sent))

    def raw(self, output_id: str) -> list[tuple[Any, dict[str, Any]]]:
        """(value, metadata) of every message sent on ``output_id``, in order, undecoded."""
        return [(v, m) for o, v, m in self.sent if o == output_id]

    def schema_of(self, output_id: str) -> str:
        schema = self._schemas.get(output_id)
        if schema is None:
            schema = OUTPUT_SCHEMAS.get(output_id, output_id)
        return schema

    def messages(self, output_id: str) -> list[Message]:
        """Every message sent on ``output_id``, decoded and validated with its schema."""
        schema = self.schema_of(output_id)
        out = []
        for n, (value, meta) in enumerate(self.raw(output_id)):
            try:
                out.append(decode(schema, value, meta))
            except MessageError as e:
                raise MessageError(f"output {output_id!r} message {n}: {e}") from None
        return out


def _replay_source(input_id: str, source: Any) -> Iterator[tuple[pa.Array, dict[str, Any]]]:
    if isinstance(source, (str, Path)):
        for value, meta, _name in iter_messages(source):
            yield value, meta
        return
    for n, item in enumerate(source):
        if isinstance(item, Message):
            yield encode(item.name, np.array(item.data), **item.meta)
        elif isinstance(item, tuple) and len(item) == 2:
            value, meta = item
            yield value, dict(meta or {})
        else:
            raise TypeError(f"ReplayNode: input {input_id!r} item {n}: expected a Message or (value, metadata), "
                            f"got {type(item).__name__}")
