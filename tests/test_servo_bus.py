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
        b = ServoBus(emu.path, CAL, write_retries=1, reply_window_ms=120)  # a loaded box: healthy ones answer
        with pytest.raises(ServoBusError, match=r"no answer from elbow_flex \(id 3\), gripper \(id 6\) after 2 "
                                                r"tries \(last: \[TxRxResult\] There is no status packet!\)"):
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


# --- status bits and start-up retries ----------------------------------------------------------------

def test_every_status_bit_is_decoded_by_name():
    from so101_deploy.arm.servo_bus import STATUS_BITS, decode_status

    # the reference's bit numbers (the SDK's ERRBIT_* agree on voltage 1, angle 2, overheat 4, overload 32)
    assert STATUS_BITS == {"voltage": 0x01, "angle": 0x02, "overheat": 0x04, "current": 0x08, "overload": 0x20}
    assert decode_status(0) == []
    assert decode_status(0x2D) == ["voltage", "overheat", "current", "overload"]
    assert decode_status(0x50) == ["bit4", "bit6"]  # reserved bits are still reported


def test_status_bits_of_each_servo_are_in_the_reading(emu, bus):
    emu.set_faults(status_bits={3: 0x04, 2: 0x01 | 0x08, 4: 0x02}, overload_ids={6})
    reading = bus.read()
    assert reading.ok
    assert reading.status_errors == {2: ["voltage", "current"], 3: ["overheat"], 4: ["angle"], 6: ["overload"]}
    assert reading.overload_ids == [6]
    emu.set_faults(status_bits={}, overload_ids=())
    assert bus.read().status_errors == {}
    with pytest.raises(ValueError, match="0..0x7[fF]"):
        emu.set_faults(status_bits={1: 0x80})  # the SDK drops replies with bit 7: never injected


def test_an_exception_inside_the_sdks_ping_is_a_failed_try(emu):
    b = ServoBus(emu.path, CAL, reply_window_ms=120)
    real_ping, calls = b._ph.ping, []

    def flaky_ping(port, servo_id):  # what a stale reply does to scservo_sdk 1.0.0's ping (data_read[0])
        calls.append(servo_id)
        if servo_id == 2 and calls.count(2) <= 2:
            raise IndexError("list index out of range")
        return real_ping(port, servo_id)

    b._ph.ping = flaky_ping
    b.connect()  # retried with a backoff: connects
    try:
        assert calls.count(2) == 3 and b.errors["sdk_error"] == 2
    finally:
        b.close(release_torque=False)

    def broken_ping(port, servo_id):
        raise IndexError("list index out of range")

    b2 = ServoBus(emu.path, CAL, reply_window_ms=120, write_retries=2)
    b2._ph.ping = broken_ping
    with pytest.raises(ServoBusError, match=r"no answer from .* after 3 tries \(last: IndexError inside "
                                            r"scservo_sdk: list index out of range\)"):
        b2.connect()
    assert not b2.is_open


def test_configure_writes_are_retried(emu, bus, monkeypatch):
    import scservo_sdk as scs

    real_write, lost = bus._ph.write1ByteTxRx, []

    def flaky_write(port, servo_id, address, value):  # Lock=1 lost twice on id 4, then an SDK exception
        if servo_id == 4 and address == 55 and value == 1 and len(lost) < 3:
            lost.append(address)
            if len(lost) == 3:
                raise IndexError("list index out of range")
            return scs.COMM_RX_TIMEOUT, 0
        return real_write(port, servo_id, address, value)

    monkeypatch.setattr(bus._ph, "write1ByteTxRx", flaky_write)
    bus.configure()
    assert len(lost) == 3 and emu.register(4, "Lock") == 1
    assert bus.errors["write_failed"] == 2 and bus.errors["sdk_error"] == 1
    bus.write_retries = 1
    lost.clear()
    with pytest.raises(ServoBusError, match=r"write Lock=1 not acknowledged after 2 tries: \[TxRxResult\]"):
        bus.configure()
