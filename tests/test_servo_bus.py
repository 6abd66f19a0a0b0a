"""ServoBus (scservo_sdk client) against the software bus: handshake, LeRobot configuration,
reads with retries and fault accounting, goals in radians, torque."""

import time

import numpy as np
import pytest

from so101_deploy.arm.calibration import Calibration
from so101_deploy.arm.emulator import EmulatedBus
from so101_deploy.arm.servo_bus import ServoBus, ServoBusError

CAL = Calibration.example()


@pytest.fixture
def emu(tmp_path):
    bus = EmulatedBus(tmp_path / "ttySO101", calibration=CAL, log_path=tmp_path / "writes.jsonl").start()
    yield bus
    bus.stop()


@pytest.fixture
def bus(emu):
    b = ServoBus(emu.path, CAL, reply_window_ms=120)  # generous: the test box is loaded
    b.connect()
    yield b
    b.close()


def test_configure_writes_lerobots_values_with_torque_off(emu, bus):
    emu.servos[2].set("Phase", 12 | 0x10)  # multi-turn feedback on: configure must clear it
    bus.configure()
    for i in range(1, 7):
        assert emu.register(i, "Return_Delay_Time") == 0
        assert emu.register(i, "Acceleration") == 254 and emu.register(i, "Maximum_Acceleration") == 254
        assert (emu.register(i, "P_Coefficient"), emu.register(i, "I_Coefficient"),
                emu.register(i, "D_Coefficient")) == (16, 0, 32)
        assert emu.register(i, "Torque_Enable") == 0 and emu.register(i, "Lock") == 1
        assert emu.servos[i].persisted_eeprom[21] == 16  # written with Lock 0: persisted
    assert emu.register(2, "Phase") == 12
    assert (emu.register(6, "Max_Torque_Limit"), emu.register(6, "Protection_Current"),
            emu.register(6, "Overload_Torque")) == (500, 250, 25)
    assert emu.register(5, "Max_Torque_Limit") == 1000


def test_read_goal_and_torque_in_radians(emu, bus):
    reading = bus.read()
    assert reading.ok and reading.attempts == 1 and reading.read_ms > 0
    assert np.allclose(reading.positions_rad[:5], 0.0, atol=1e-3)
    bus.write_goal_steps(reading.steps)
    assert bus.set_torque(True) == []
    assert all(emu.torque_enabled().values())
    goal = reading.positions_rad + np.array([0.2, -0.2, 0.1, -0.1, 0.3, 0.2])
    steps = bus.write_goal_rad(goal)
    deadline = time.monotonic() + 2.0  # SYNC_WRITE has no reply: wait until the bus has taken it
    while emu.goal_steps() != dict(zip(range(1, 7), steps.tolist())) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert emu.goal_steps() == dict(zip(range(1, 7), steps.tolist()))
    time.sleep(0.4)
    assert np.allclose(bus.read_positions_rad(), goal, atol=2e-3)
    assert bus.set_torque(False) == []
    assert not any(emu.torque_enabled().values())


def test_goal_steps_outside_the_encoder_range_are_refused(bus):
    with pytest.raises(ServoBusError, match="0..4095"):
        bus.write_goal_steps(np.array([0, 0, 0, 0, 0, 5000]))


def test_handshake_names_missing_servos(tmp_path):
    with EmulatedBus(tmp_path / "tty", calibration=CAL, silent_ids={3, 6}) as emu:
        b = ServoBus(emu.path, CAL, write_retries=0)
        with pytest.raises(ServoBusError, match=r"no answer from elbow_flex \(id 3\), gripper \(id 6\)"):
            b.connect()
        assert not b.is_open


def test_missing_port_is_a_clear_error(tmp_path):
    with pytest.raises(ServoBusError, match="cannot open servo bus port .*emulate-bus"):
        ServoBus(str(tmp_path / "ttyACM9"), CAL).connect()


def test_dropped_and_corrupt_replies_are_retried_and_counted(emu, bus):
    emu.set_faults(drop_rate=0.1, corrupt_rate=0.1)
    readings = [bus.read() for _ in range(25)]
    assert bus.errors["read_timeout"] > 0 and bus.errors["read_corrupt"] > 0
    assert sum(r.ok for r in readings) >= 15  # retries of only the missing servos recover most reads
    assert all(r.failed_attempts <= r.attempts <= 3 for r in readings)
    emu.set_faults(drop_rate=0.0, corrupt_rate=0.0)
    assert bus.read().ok


def test_a_silent_servo_is_reported_skipped_and_taken_back(emu, bus):
    bus.read()
    emu.set_faults(silent_ids={3})
    readings = [bus.read() for _ in range(bus.absent_after + 1)]
    assert all(r.missing_ids == [3] for r in readings)
    assert all(r.fresh.tolist() == [True, True, False, True, True, True] for r in readings)
    # after absent_after reads it is left out of the sync read: no timeout spent on it any more
    assert readings[-1].attempts == 1 and readings[-1].failed_attempts == 0
    emu.set_faults(silent_ids=())
    time.sleep(bus.probe_interval_s + 0.05)
    assert bus.read().ok


def test_overload_bit_is_surfaced(emu, bus):
    emu.set_faults(overload_ids={6})
    reading = bus.read()
    assert reading.ok and reading.overload_ids == [6]
    assert reading.load[5] == 1000


def test_an_unplugged_bus_is_a_clear_error_and_release_reports_it(emu, bus):
    assert bus.read().ok
    emu.stop()  # the adapter disappears
    with pytest.raises(ServoBusError, match="port does not work any more"):
        bus.read()
    with pytest.raises(ServoBusError, match="port does not work any more"):
        bus.write_goal_steps(np.full(6, 2048))
    assert bus.close() == [1, 2, 3, 4, 5, 6]  # release could not be confirmed; no exception
