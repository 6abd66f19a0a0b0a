"""The frame gate: seg and depth must look at the *same* camera frames.

The observation pairs a mask and a disparity of one ``frame_id``.  If seg and depth each took the
newest camera frame on their own, the faster one (seg) would run ahead and the two would almost
never work on the same frame: few pairs, most work thrown away (measured: 0.5 Hz instead of ~3 Hz
on a 2-core CPU).  The gate passes one frame at a time to both: the newest camera frame, as soon as
the mask and the disparity of the previous one have come back (or after a timeout, counted).  The
rate is then set by the slower model, and no frame is half-processed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from so101_deploy.core.messages import Message
from so101_deploy.core.settings import Setting

ORDERS = ("parallel", "seg_first")

SETTINGS = (
    Setting("SO101_GATE_TIMEOUT_S", "float", 2.0, "pass the next frame anyway when an answer has not come "
            "back after this long", min=0.05, max=60.0),
    Setting("SO101_GATE_ORDER", "choice", "parallel", "parallel: seg and depth get the frame at once (on a GPU, or "
            "with cores to spare); seg_first: depth gets it (output depth_image) when seg's mask is back, so the "
            "two never share the CPU cores", choices=ORDERS),
)


@dataclass
class GateCounters:
    passed: int = 0
    completed: int = 0
    timed_out: int = 0
    skipped: int = 0  # camera frames replaced by a newer one while the pipeline was busy

    def as_meta(self) -> dict[str, int]:
        return {f"gate_{k}": int(v) for k, v in self.__dict__.items()}


@dataclass
class FrameGate:
    """``order="seg_first"``: the frame goes to seg first and to depth (:meth:`take_depth`) when its mask is
    back.  On a CPU the two models then each get every core in turn instead of slowing each other down (two
    thread pools on two cores); the frame's latency is seg + depth either way."""
    timeout_s: float = 2.0
    order: str = "parallel"
    counters: GateCounters = field(default_factory=GateCounters)
    _for_depth: Message | None = None  # seg_first: the frame in flight, until depth may have it
    _depth_ready: Message | None = None
    _newest: Message | None = None
    _in_flight: int | None = None  # frame_id passed and not yet answered by both models
    _in_flight_since_s: float = 0.0
    _answered: set = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"frame gate order {self.order!r}: expected one of {list(ORDERS)}")

    def on_image(self, msg: Message, now_s: float) -> Message | None:
        """A camera frame: pass it at once when the pipeline is idle, else keep it as the newest."""
        if self._newest is not None:
            self.counters.skipped += 1
        self._newest = msg
        return self._release(now_s) if self._in_flight is None else None

    def on_result(self, kind: str, frame_id: int, now_s: float) -> Message | None:
        """A mask or a disparity came back; when both of the frame in flight are back, pass the next."""
        if self._in_flight is None or frame_id != self._in_flight:
            return None
        self._answered.add(kind)
        if kind == "mask" and self._for_depth is not None:
            self._depth_ready, self._for_depth = self._for_depth, None
        if {"mask", "disparity"} <= self._answered:
            self.counters.completed += 1
            self._in_flight = None
            return self._release(now_s)
        return None

    def take_depth(self) -> Message | None:
        """seg_first: the frame depth may work on now (once per frame), else None."""
        msg, self._depth_ready = self._depth_ready, None
        return msg

    def on_tick(self, now_s: float) -> Message | None:
        """A model that never answers (dropped frame, crash) must not stall the arm's perception."""
        if self._in_flight is not None and now_s - self._in_flight_since_s > self.timeout_s:
            self.counters.timed_out += 1
            self._in_flight = None
            return self._release(now_s)
        return None

    def _release(self, now_s: float) -> Message | None:
        msg, self._newest = self._newest, None
        if msg is None:
            return None
        self._in_flight = msg.frame_id
        self._in_flight_since_s = now_s
        self._answered = set()
        self._for_depth = msg if self.order == "seg_first" else None
        self._depth_ready = None
        self.counters.passed += 1
        return msg


@dataclass
class LinkStats:
    """What the camera frames cost on their way to the gate, from their metadata: the payload size, the
    JPEG encode (camera side) and decode (here) times, and capture -> arrival here.

    The gate is the first node on the GPU machine in ``dataflow.two-machines.yml``; capture -> arrival
    compares the camera machine's wall clock (``stamp_ns``) with this one's, so it is a one-way link
    latency only when both clocks agree (one machine, or clocks kept in step by chrony/PTP);
    docs/two-machines.md says how the cross-machine figures are taken."""

    frames: int = 0
    payload_bytes: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    arrival_ms: list = field(default_factory=list)
    encode_ms: list = field(default_factory=list)
    decode_ms: list = field(default_factory=list)

    def add(self, msg: Message, now_ns: int) -> None:
        self.frames += 1
        meta = msg.meta
        self.payload_bytes += int(meta.get("jpeg_bytes", msg.data.nbytes))
        self.first_ns = now_ns if self.first_ns is None else self.first_ns
        self.last_ns = now_ns
        self.arrival_ms.append((now_ns - msg.stamp_ns) / 1e6)
        for key, values in (("encode_ms", self.encode_ms), ("decode_ms", self.decode_ms)):
            if key in meta:
                values.append(float(meta[key]))

    def summary(self) -> dict:
        import numpy as np  # noqa: PLC0415

        def pct(v: list) -> dict | None:
            return None if not v else {"p50": round(float(np.percentile(v, 50)), 3),
                                       "p90": round(float(np.percentile(v, 90)), 3), "n": len(v)}

        span_s = (self.last_ns - self.first_ns) / 1e9 if self.frames > 1 else 0.0
        return {"frames": self.frames, "payload_bytes": self.payload_bytes,
                "bytes_per_frame": round(self.payload_bytes / self.frames) if self.frames else 0,
                "frames_per_s": round((self.frames - 1) / span_s, 3) if span_s > 0 else 0.0,
                "bytes_per_s": round(self.payload_bytes * (self.frames - 1) / self.frames / span_s) if span_s > 0 else 0,
                "capture_to_gate_ms": pct(self.arrival_ms), "encode_ms": pct(self.encode_ms),
                "decode_ms": pct(self.decode_ms)}
