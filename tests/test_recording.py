"""Recorded Arrow messages: the committed recording of a real run, the recorder node's logic, and
broken recordings.  This is the pattern node tests follow: read recorded messages, feed them to
the node's logic, assert on what comes out."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from so101_deploy.core.messages import SCHEMAS, MessageError, encode
from so101_deploy.core.node import SettingError
from so101_deploy.core.recording import Recorder, TopicWriter, read_messages, read_recording
from so101_deploy.tools.replay import summarize
from so101_deploy.sim.synthetic import read_frame_index, render_frame

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


def test_corrupt_recording(tmp_path, camera_recording):
    bad = tmp_path / "image.arrow"
    bad.write_bytes(camera_recording.read_bytes()[:5000])  # a recorder killed mid-write
    with pytest.raises(MessageError, match=f"recording {bad}: not an Arrow IPC file"):
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
