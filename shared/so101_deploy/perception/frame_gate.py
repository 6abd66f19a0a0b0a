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

SETTINGS = (
    Setting("SO101_GATE_TIMEOUT_S", "float", 2.0, "pass the next frame anyway when an answer has not come "
            "back after this long", min=0.05, max=60.0),
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
    timeout_s: float = 2.0
    counters: GateCounters = field(default_factory=GateCounters)
    _newest: Message | None = None
    _in_flight: int | None = None  # frame_id passed and not yet answered by both models
    _in_flight_since_s: float = 0.0
    _answered: set = field(default_factory=set)

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
        if {"mask", "disparity"} <= self._answered:
            self.counters.completed += 1
            self._in_flight = None
            return self._release(now_s)
        return None

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
        self.counters.passed += 1
        return msg
