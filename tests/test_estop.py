"""The file e-stop: states, fail-safe reading, and the node under dora."""

import numpy as np
import pytest

from so101_deploy.core.dataflow import run_dataflow
from so101_deploy.arm.estop import CLEAR, HOLD, RELEASE, EstopFile
from so101_deploy.core.recording import read_messages
from conftest import estop_recorder_flow, recorded_count



def test_states(tmp_path):
    f = tmp_path / "so101.estop"
    sw = EstopFile(f)
    assert sw.state() == CLEAR
    f.write_text("")
    assert sw.state() == HOLD
    f.write_text("release\n")
    assert sw.state() == RELEASE
    f.write_text("garbage")
    assert sw.state() == HOLD  # anything unexpected holds


def test_directory_in_place_of_file_holds(tmp_path):
    (tmp_path / "so101.estop").mkdir()
    assert EstopFile(tmp_path / "so101.estop").state() == HOLD


@pytest.mark.integration
def test_estop_node_publishes_file_state(tmp_path):
    flow = estop_recorder_flow(tmp_path, tmp_path / "rec")
    # until 5 messages are recorded (a deadline, not a window: start-up may be slow on a loaded machine)
    res = run_dataflow(flow, 120, until=lambda log: recorded_count(tmp_path / "rec" / "estop.arrow") >= 5,
                       linger_s=0.3)
    assert res.condition_met, res.log[-2000:]
    assert res.returncode == 0, res.log[-2000:]
    msgs = read_messages(tmp_path / "rec" / "estop.arrow")
    assert len(msgs) >= 3
    assert all(int(m.data[0]) == RELEASE for m in msgs)
    assert [m.frame_id for m in msgs] == list(range(len(msgs)))
    assert np.all(np.diff([m.stamp_ns for m in msgs]) > 0)
