"""Recorded Arrow messages: the committed recording of a real run, the recorder node's logic, broken
recordings, and recordings that survive a killed recorder.  This is the pattern node tests follow: read
recorded messages, feed them to the node's logic, assert on what comes out."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from so101_deploy.core.messages import SCHEMAS, MessageError, encode
from so101_deploy.core.node import SettingError
from so101_deploy.core.recording import (RecordingCutWarning, Recorder, ReplayNode, TopicWriter, iter_messages,
                                         read_messages, read_recording)
from so101_deploy.tools.replay import summarize
from so101_deploy.sim.synthetic import read_frame_index, render_frame

from conftest import estop_recorder_flow

REPO_ROOT = Path(__file__).resolve().parent.parent


def _recorder_node():
    spec = importlib.util.spec_from_file_location("recorder_main", REPO_ROOT / "nodes" / "recorder" / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the committed recording --------------------------------------------------------------------

def test_committed_camera_recording_holds_the_generated_frames(camera_recording):
    messages = read_messages(camera_recording)  # validated against the image schema on the way
    assert [m.frame_id for m in messages] == [0, 1, 2]
    stamps = [m.stamp_ns for m in messages]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    for i, m in enumerate(messages):
        assert (m.meta["height"], m.meta["width"], m.meta["encoding"]) == (480, 640, "bgr8")
        np.testing.assert_array_equal(m.data, render_frame(i))  # lossless source: exact pixels


def test_committed_recordings_stay_small():
    sizes = {p.name: p.stat().st_size for p in (REPO_ROOT / "tests/data/recordings/camera_replay").iterdir()}
    assert 0 < sum(sizes.values()) < 100_000, sizes


def test_replay_summary_of_the_committed_recording(camera_recording):
    messages = read_messages(camera_recording)
    s = summarize(messages, video_frames=3)
    assert (s.frames, s.first_frame_id, s.last_frame_id, s.gaps, s.out_of_order) == (3, 0, 2, 0, 0)
    assert s.video_order_ok
    assert 20 < s.rate_hz < 40  # recorded from a 30 fps camera node


def test_replay_summary_reports_gaps_and_reordering(camera_recording):
    a, b, c = read_messages(camera_recording)
    s = summarize([a, c], video_frames=3)
    assert s.gaps == 1 and not s.video_order_ok
    s = summarize([b, a, c], video_frames=3)
    assert s.out_of_order == 1 and not s.video_order_ok
    with pytest.raises(ValueError, match="no image messages"):
        summarize([], video_frames=3)


# --- the recorder node's logic ------------------------------------------------------------------

def test_recorded_messages_round_trip_through_a_recorder(camera_recording, tmp_path):
    messages = read_messages(camera_recording)
    with Recorder(tmp_path / "rec") as rec:
        for m in messages:
            rec.record_message("image", m)
        mask = np.zeros((480, 640), np.uint8)
        rec.record("mask", "seg_mask", *encode("seg_mask", mask, frame_id=0, stamp_ns=1, classes="real6"))
    back = read_recording(tmp_path / "rec")
    assert sorted(back) == ["image", "mask"]
    for m, r in zip(messages, back["image"]):
        np.testing.assert_array_equal(m.data, r.data)
        assert r.meta == m.meta
    assert read_frame_index(back["image"][2].data) == 2
    assert back["mask"][0].meta["classes"] == "real6"


def test_record_types_setting():
    parse = _recorder_node().parse_record_types
    assert parse("", ["image", "seg_mask"]) == {"image": "image", "seg_mask": "seg_mask"}
    assert parse("mask=seg_mask, cam = image", ["cam", "mask"]) == {"cam": "image", "mask": "seg_mask"}
    with pytest.raises(SettingError) as info:
        parse("", ["cam"])
    assert str(info.value) == ("recorder: input 'cam' is not a message schema name; add cam=<schema> to "
                               f"SO101_RECORD_TYPES (schemas: {sorted(SCHEMAS)})")
    with pytest.raises(SettingError, match=r"SO101_RECORD_TYPES 'cam=picture': unknown schema 'picture'"):
        parse("cam=picture", ["cam"])
    with pytest.raises(SettingError, match=r"item 'cam' must look like input_id=schema"):
        parse("cam", ["cam"])
    with pytest.raises(SettingError, match=r"names \['other'\], which are not inputs of this node"):
        parse("other=image", ["image"])


# --- broken recordings --------------------------------------------------------------------------

def test_missing_recording(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"recording {tmp_path / 'none.arrow'} does not exist"):
        read_messages(tmp_path / "none.arrow")
    with pytest.raises(FileNotFoundError, match="recording folder .* does not exist"):
        read_recording(tmp_path / "nothing")


def test_a_file_that_is_not_a_recording(tmp_path):
    bad = tmp_path / "image.arrow"
    bad.write_bytes(b"not arrow at all, but long enough to hold an IPC message header" * 10)
    with pytest.raises(MessageError, match=f"recording {bad}: not an Arrow IPC stream or file"):
        read_messages(bad)


def test_recording_without_schema_name(tmp_path):
    path = tmp_path / "x.arrow"
    with pa.ipc.new_file(str(path), pa.schema([("value", pa.uint8())])) as w:
        w.write_batch(pa.record_batch([pa.array([1], pa.uint8())], names=["value"]))
    with pytest.raises(MessageError, match="does not name its message schema"):
        read_messages(path)


def test_recorded_message_that_breaks_its_schema_is_refused_on_read(tmp_path):
    # TopicWriter writes what it is given; reading validates again, so a bad file cannot pass silently
    w = TopicWriter(tmp_path / "disparity.arrow", "disparity")
    d = np.ones(6, np.float32)
    d[3] = np.nan
    w.write(pa.array(d), {"encoding": "32FC1", "frame_id": 0, "stamp_ns": 0, "height": 2, "width": 3})
    w.close()
    with pytest.raises(MessageError) as info:
        read_messages(tmp_path / "disparity.arrow")
    assert str(info.value) == "disparity.data: expected finite values, got 1 NaN/inf (first at index (1, 0))"


def test_recorded_message_with_missing_metadata_is_refused(tmp_path):
    path = tmp_path / "image.arrow"
    schema = pa.schema([("value", pa.uint8())], metadata={"message": "image"})
    with pa.ipc.new_file(str(path), schema) as w:
        w.write_batch(pa.record_batch([pa.array(np.zeros(12, np.uint8))], names=["value"]),
                      custom_metadata={"meta": json.dumps({"encoding": "bgr8", "height": 2, "width": 2})})
    with pytest.raises(MessageError) as info:
        read_messages(path)
    assert str(info.value) == ("image.metadata: missing ['frame_id', 'stamp_ns']; a image message needs "
                               "['encoding', 'frame_id', 'stamp_ns', 'height', 'width']")


# --- recordings that survive a killed recorder ----------------------------------------------------------

class FakeClock:
    """A monotonic clock the test moves by hand (the writers' flush timing)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _image(i: int, shape=(16, 16, 3)):
    """Image message i: random pixels (so zstd cannot shrink them much), frame_id i, stamp_ns i."""
    data = np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8)
    return encode("image", data, frame_id=i, stamp_ns=i)


def _read_quietly(path) -> tuple[list, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        messages = read_messages(path)
    return messages, caught


def test_a_closed_recording_is_an_arrow_ipc_stream_plain_pyarrow_reads(tmp_path):
    path = tmp_path / "image.arrow"
    w = TopicWriter(path, "image")
    for i in range(3):
        w.write(*_image(i))
    w.close()
    assert path.read_bytes()[-8:] == b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the end-of-stream marker
    reader = pa.ipc.open_stream(str(path))
    assert reader.schema.metadata[b"message"] == b"image"
    batch, custom = reader.read_next_batch_with_custom_metadata()
    assert json.loads(custom[b"meta"])["frame_id"] == 0 and batch.num_rows == 16 * 16 * 3
    assert sum(1 for _ in reader) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a closed recording reads without any warning
        assert [m.frame_id for m in read_messages(path)] == [0, 1, 2]


def test_a_copy_taken_mid_write_holds_every_flushed_message(tmp_path):
    clock = FakeClock()
    path, copy = tmp_path / "image.arrow", tmp_path / "copy.arrow"
    w = TopicWriter(path, "image", flush_interval_s=1.0, clock=clock)

    def flushed_ids() -> list[int]:
        shutil.copyfile(path, copy)  # what a reader sees if the writer dies now
        messages, caught = _read_quietly(copy)
        assert caught and all(issubclass(c.category, RecordingCutWarning) for c in caught)
        return [m.frame_id for m in messages]

    w.write(*_image(0))  # the first message is flushed at once (the schema with it)
    for i in range(1, 8):  # 0.875 s more: buffered (clock steps that floats hold exactly)
        clock.t += 0.125
        w.write(*_image(i))
    assert (w.flushed, w.pending) == (1, 7)
    assert flushed_ids() == [0]
    clock.t += 0.125  # 1 s after the last flush: this message flushes all
    w.write(*_image(8))
    assert w.pending == 0 and flushed_ids() == list(range(9))
    clock.t += 0.25
    w.write(*_image(9))  # then the topic goes quiet
    assert flushed_ids() == list(range(9))
    clock.t += 0.625
    assert not w.flush_due()  # 0.875 s since the last flush
    clock.t += 0.125
    assert w.flush_due() and flushed_ids() == list(range(10))
    clock.t += 5
    assert not w.flush_due()  # nothing waits
    w.write(*_image(10))  # after a quiet spell a message goes out at once
    assert flushed_ids() == list(range(11))
    w.close()
    messages, caught = _read_quietly(path)
    assert [m.frame_id for m in messages] == list(range(11)) and not caught


def test_recorder_flush_due_flushes_the_quiet_topics(tmp_path):
    clock = FakeClock()
    rec = Recorder(tmp_path / "rec", flush_interval_s=0.5, clock=clock)
    rec.record("image", "image", *_image(0))
    rec.record("other", "image", *_image(0))
    clock.t += 0.125
    rec.record("image", "image", *_image(1))
    rec.record("other", "image", *_image(1))
    clock.t += 0.25
    rec.record("other", "image", *_image(2))
    assert rec.flush_due() == []
    clock.t += 0.125
    assert rec.flush_due() == ["image", "other"]
    assert rec.flush_due() == []
    assert [m.frame_id for m in _read_quietly(tmp_path / "rec" / "other.arrow")[0]] == [0, 1, 2]
    rec.close()


def test_a_stream_cut_anywhere_reads_every_complete_message_before_the_cut(tmp_path):
    path = tmp_path / "image.arrow"
    # every write flushed: the file size after each write is where that message ends
    w = TopicWriter(path, "image", flush_interval_s=0)
    shapes = [(16, 16, 3), (120, 160, 3), (8, 8, 3), (480, 640, 3), (16, 16, 3), (240, 320, 3), (4, 4, 3)]
    ends = []
    for i, shape in enumerate(shapes):
        w.write(*_image(i, shape))
        ends.append(path.stat().st_size)
    w.close()
    data = path.read_bytes()
    assert len(data) == ends[-1] + 8  # + the end-of-stream marker
    with pa.OSFile(str(path)) as f:
        pa.ipc.open_stream(f)
        schema_end = f.tell()
    rng = random.Random(0)
    cuts = sorted({0, 1, 3, 4, 7, 8, ends[0] - 1, len(data) - 1, len(data) - 4}
                  | {e + d for e in ends for d in (-1, 0, 1)} | {rng.randrange(len(data)) for _ in range(150)})
    cut_path = tmp_path / "cut.arrow"
    for cut in cuts:
        cut_path.write_bytes(data[:cut])
        messages, caught = _read_quietly(cut_path)  # never raises
        want = sum(1 for e in ends if e <= cut)
        assert [m.frame_id for m in messages] == list(range(want)), cut
        for m in messages:
            np.testing.assert_array_equal(m.data, np.random.default_rng(m.frame_id).integers(
                0, 256, shapes[m.frame_id], dtype=np.uint8))
        assert len(caught) == 1 and caught[0].category is RecordingCutWarning, (cut, caught)
        text = str(caught[0].message)
        assert text.startswith(f"recording {cut_path}: ")
        if cut < schema_end:
            assert "cut off before its schema was complete" in text
        elif cut in ends or cut == schema_end:
            assert f"no end-of-stream marker after message {want}" in text
        else:
            assert f"cut off in message {want}," in text


def test_an_old_ipc_file_reads_too_also_cut_off(tmp_path, camera_recording):
    # the committed recordings are IPC files (footer at the end): read whole, or cut before their footer
    data = camera_recording.read_bytes()
    assert data[:6] == b"ARROW1"
    whole = [m.frame_id for m in read_messages(camera_recording)]
    assert whole == [0, 1, 2]
    cut_path = tmp_path / "image.arrow"
    counts = []
    for cut in list(range(0, 12)) + list(range(12, len(data), 97)):
        cut_path.write_bytes(data[:cut])
        messages, caught = _read_quietly(cut_path)
        assert [m.frame_id for m in messages] == whole[:len(messages)], cut
        if len(messages) < 3:
            assert len(caught) == 1 and caught[0].category is RecordingCutWarning, cut
        else:  # cut after its end-of-stream marker, in the footer: complete, no warning
            assert not caught, cut
        counts.append(len(messages))
    assert counts == sorted(counts) and counts[-1] == 3


def test_an_empty_recording_file_is_a_warning_and_no_messages(tmp_path):
    path = tmp_path / "image.arrow"
    path.write_bytes(b"")  # a recorder killed before its first flush
    with pytest.warns(RecordingCutWarning, match="cut off before its schema was complete"):
        assert read_messages(path) == []
    with pytest.warns(RecordingCutWarning):
        assert list(iter_messages(path)) == []


def test_recorder_node_flushes_on_its_tick_and_does_not_record_it(tmp_path, camera_recording):
    node_module = _recorder_node()
    assert node_module.SPEC.inputs == {"tick": None} and node_module.SPEC.optional == {"tick"}
    node = ReplayNode([("image", camera_recording)], tick_each=True, ticks_after=2)
    assert node_module.main(node=node, env={"SO101_RECORD_DIR": str(tmp_path / "rec")}) == 0
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["image.arrow"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [m.frame_id for m in read_messages(tmp_path / "rec" / "image.arrow")] == [0, 1, 2]


# --- kill -9 of the recorder under dora ------------------------------------------------------------------

def _session_processes(sid: int) -> dict[int, str]:
    """pid -> command line of every live process in session ``sid`` (from /proc).  ``dora run`` started with
    ``start_new_session`` leads its session; dora 1.1 starts each node in a process group of its own, but
    in that session."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, session, ...
            if int(fields[3]) != sid or fields[0] == "Z":
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


def _wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _estop_flow(tmp_path: Path, record_dir: Path) -> Path:
    """The estop node (small messages on a 50 ms timer) into a recorder with its flush tick: nothing but the
    time-based flushes puts them in the file (they never fill the write buffer in a few seconds)."""
    return estop_recorder_flow(tmp_path, record_dir, flush_tick_ms=250)


@pytest.mark.integration
@pytest.mark.parametrize("source", ["camera", "estop"])
def test_kill_9_of_the_recorder_loses_at_most_the_last_second(source, repo_root, venv_bin, generated_video,
                                                              tmp_path):
    """`dora run` of the replay flow (generated video -> camera -> recorder; frames of tens of kilobytes) or
    of the estop node into a recorder (messages of a few hundred bytes), `kill -9` of the recorder after
    3 s of recording: every frame it got up to a second before the kill reads back."""
    record_dir = tmp_path / "recording"
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    if source == "camera":
        flow, topic = repo_root / "dataflow.replay.yml", "image"
        env.update(SO101_REPLAY_VIDEO=str(generated_video), SO101_REPLAY_RECORD_DIR=str(record_dir),
                   SO101_REPLAY_MAX_FRAMES="0")
    else:
        flow, topic = _estop_flow(tmp_path, record_dir), "estop"
    recording = record_dir / f"{topic}.arrow"
    log_path = tmp_path / "dora.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(venv_bin / "dora"), "run", str(flow), "--stop-after", "120s"],
                                cwd=str(flow.parent), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def recorder_pid():
            pids = [pid for pid, cmd in _session_processes(proc.pid).items() if "nodes/recorder/main.py" in cmd]
            assert len(pids) <= 1, pids
            return pids[0] if pids else None

        pid = _wait_for(recorder_pid, 90, f"the recorder process\n{log_path.read_text()[-2000:]}")

        def recorded() -> int:
            if not recording.exists():
                return 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RecordingCutWarning)
                return sum(1 for _ in iter_messages(recording))

        _wait_for(recorded, 90, f"the first recorded message in {recording}\n{log_path.read_text()[-2000:]}")
        first_seen = time.monotonic()
        _wait_for(lambda: time.monotonic() - first_seen >= 3.0, 10, "3 s of recording")
        assert recorder_pid() == pid, "the recorder restarted"
        kill_ns = time.time_ns()
        os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: pid not in _session_processes(proc.pid), 10, f"the recorder (pid {pid}) to die")
    finally:  # dora and its nodes, each by its pid
        for left in [proc.pid, *_session_processes(proc.pid)]:
            try:
                os.kill(left, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    with pytest.warns(RecordingCutWarning) as caught:  # killed: cut off mid-message, or at least no end marker
        messages = read_messages(recording)
    n = len(messages)
    assert [m.frame_id for m in messages] == list(range(n))  # the sender's ids: none missing
    stamps = np.array([m.stamp_ns for m in messages])  # when the sender made them (time.time_ns)
    recorded_s = (kill_ns - stamps[0]) / 1e9
    lost_s = (kill_ns - stamps[-1]) / 1e9
    rate = (n - 1) / ((stamps[-1] - stamps[0]) / 1e9)
    size = recording.stat().st_size
    print(f"{source}: kill -9 after {recorded_s:.2f} s of messages: {n} read back ({rate:.1f}/s, {size} bytes), "
          f"the last sent {lost_s:.2f} s before the kill; {caught[0].message}")
    assert recorded_s >= 3.0
    # every message the recorder got up to 1 s before the kill is there, the later ones may be lost.  A message
    # reaches the recorder a little after its stamp: 0.3 s allowed for that on a busy machine
    assert lost_s < 1.0 + 0.3, f"the last {lost_s:.2f} s before the kill are lost"
    assert n >= (recorded_s - 1.3) * rate
