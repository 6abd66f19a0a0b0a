"""The software STS3215 bus, driven by the real scservo_sdk through its pty (and as a CLI process)."""

import json
import os
import signal
import subprocess
import time

import pytest
import scservo_sdk as scs
import serial

from so101_deploy.arm import sts3215 as sts
from so101_deploy.arm.calibration import Calibration
from so101_deploy.arm.emulator import EmulatedBus
from so101_deploy.arm.sdk_port import PortHandler

CAL = Calibration.example()


def sdk_port(path) -> PortHandler:
    """The SDK's port handler as the servo bus uses it (no busy poll, which would starve the in-process
    bus of the GIL) with a 300 ms reply window: these are protocol tests, not tests of the machine's load
    (the stock 34 ms window is missed on a loaded 2-core box)."""
    port = PortHandler(str(path))
    port.reply_window_ms = 300.0
    return port


@pytest.fixture
def make_bus(tmp_path):
    """Start an EmulatedBus (kwargs as the constructor) and an SDK port on it; both closed afterwards."""
    started = []

    def make(**kwargs):
        kwargs.setdefault("calibration", CAL)
        bus = EmulatedBus(tmp_path / f"tty{len(started)}", log_path=tmp_path / "writes.jsonl", **kwargs).start()
        port = sdk_port(bus.path)
        assert port.openPort()
        started.append((bus, port))
        return bus, port, scs.PacketHandler(0)

    yield make
    for bus, port in started:
        port.closePort()
        bus.stop()


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ping_answers_model_777_and_absent_ids_time_out(make_bus):
    bus, port, ph = make_bus()
    for i in range(1, 7):
        assert ph.ping(port, i) == (777, scs.COMM_SUCCESS, 0)
    assert ph.ping(port, 7)[1] == scs.COMM_RX_TIMEOUT


def test_present_position_is_mid_range_and_homing_offset_frame(make_bus):
    bus, port, ph = make_bus()
    pos, result, _ = ph.read2ByteTxRx(port, 1, 56)
    assert result == scs.COMM_SUCCESS
    assert pos == round((758 + 3300) / 2)
    encoder = bus.servos[1].encoder
    assert pos == round((encoder - (-710)) % 4096)  # present = (encoder - Homing_Offset) mod 4096
    # a new offset moves Present_Position, not the joint (EEPROM write, Lock 0 so it persists)
    assert ph.write1ByteTxRx(port, 1, 55, 0) == (scs.COMM_SUCCESS, 0)
    assert ph.write2ByteTxRx(port, 1, 31, sts.encode_sign_magnitude(-10, 11)) == (scs.COMM_SUCCESS, 0)
    assert ph.read2ByteTxRx(port, 1, 56)[0] == round((encoder + 10) % 4096)


def test_sync_read_replies_in_the_order_of_the_id_list(make_bus):
    bus, port, ph = make_bus()
    group = scs.GroupSyncRead(port, ph, 56, 2)
    for i in (6, 4, 2, 1, 3, 5):  # not sorted: the SDK needs the replies in exactly this order
        group.addParam(i)
    assert group.txRxPacket() == scs.COMM_SUCCESS
    expect = {m.id: round((m.range_min + m.range_max) / 2) for m in CAL.motors}
    assert {i: group.getData(i, 56, 2) for i in range(1, 7)} == expect


def test_no_echo_and_one_reply_per_request(make_bus):
    bus, _, _ = make_bus()
    with serial.Serial(bus.path, 1_000_000, timeout=0.2) as ser:
        ser.write(sts.instruction(2, sts.READ, [56, 2]))
        time.sleep(0.05)
        got = ser.read(100)
        ser.write(sts.instruction(sts.BROADCAST_ID, sts.SYNC_WRITE, [42, 2, 2] + sts.to_bytes(2100, 2)))
        time.sleep(0.05)
        assert ser.read(100) == b""  # broadcast: no reply
    pkts = sts.parse_packets(got)
    assert len(pkts) == 1 and pkts[0].servo_id == 2 and pkts[0].checksum_ok and pkts[0].code == 0


def test_torque_on_holds_position_and_goals_move_at_bounded_speed(make_bus):
    bus, port, ph = make_bus(max_speed_sps=2000)
    start = ph.read2ByteTxRx(port, 2, 56)[0]
    ph.write2ByteTxRx(port, 2, 42, start + 600)  # torque off: the register changes, the joint does not
    time.sleep(0.1)
    assert ph.read2ByteTxRx(port, 2, 56)[0] == start
    ph.write1ByteTxRx(port, 2, 40, 1)  # torque on must hold, never jump to the stale Goal_Position
    time.sleep(0.1)
    assert ph.read2ByteTxRx(port, 2, 56)[0] == start
    assert bus.goal_steps()[2] == start and bus.torque_enabled()[2]
    t0 = time.monotonic()
    ph.write2ByteTxRx(port, 2, 42, start + 600)
    time.sleep(0.1)
    moved = ph.read2ByteTxRx(port, 2, 56)[0] - start
    assert 0 < moved <= 2000 * (time.monotonic() - t0) + 2
    time.sleep(0.4)
    assert ph.read2ByteTxRx(port, 2, 56)[0] == start + 600
    ph.write2ByteTxRx(port, 2, 42, 4000)  # beyond Max_Position_Limit (3210): the servo clamps
    time.sleep(0.6)
    assert ph.read2ByteTxRx(port, 2, 56)[0] == 3210


def test_lock_gates_persistence_and_read_only_writes_are_ignored(make_bus):
    bus, port, ph = make_bus()
    s = bus.servos[3]
    ph.write1ByteTxRx(port, 3, 21, 16)  # P_Coefficient with Lock = 1 (power-on): live, not persisted
    assert s.get("P_Coefficient") == 16 and s.persisted_eeprom[21] == 32
    ph.write1ByteTxRx(port, 3, 55, 0)
    ph.write1ByteTxRx(port, 3, 22, 20)
    assert s.persisted_eeprom[21] == 16 and s.persisted_eeprom[22] == 20
    before = ph.read2ByteTxRx(port, 3, 56)[0]
    assert ph.write2ByteTxRx(port, 3, 56, 100) == (scs.COMM_SUCCESS, 0)  # acknowledged, ignored
    assert ph.read2ByteTxRx(port, 3, 56)[0] == before


def test_response_status_level_0_answers_only_ping_and_read(make_bus):
    bus, port, ph = make_bus()
    ph.write1ByteTxRx(port, 4, 8, 0)
    assert ph.write1ByteTxRx(port, 4, 21, 10)[0] == scs.COMM_RX_TIMEOUT  # no status packet...
    assert ph.read1ByteTxRx(port, 4, 21) == (10, scs.COMM_SUCCESS, 0)  # ...but the write was applied
    assert ph.ping(port, 4)[1] == scs.COMM_SUCCESS


def test_reg_write_waits_for_action(make_bus):
    bus, port, ph = make_bus()
    ph.write1ByteTxRx(port, 5, 40, 1)
    start = ph.read2ByteTxRx(port, 5, 56)[0]
    assert ph.regWriteTxRx(port, 5, 42, 2, sts.to_bytes(start + 300, 2)) == (scs.COMM_SUCCESS, 0)
    assert ph.read1ByteTxRx(port, 5, 64)[0] == 1  # pending flag
    time.sleep(0.05)
    assert ph.read2ByteTxRx(port, 5, 56)[0] == start
    ph.action(port, scs.BROADCAST_ID)  # broadcast ACTION: applied, no reply
    time.sleep(0.3)
    assert ph.read2ByteTxRx(port, 5, 56)[0] == start + 300
    assert ph.read1ByteTxRx(port, 5, 64)[0] == 0


def test_log_has_every_accepted_write_decoded(make_bus, tmp_path):
    bus, port, ph = make_bus()
    ph.write1ByteTxRx(port, 1, 40, 1)
    group = scs.GroupSyncWrite(port, ph, 42, 2)
    group.addParam(1, sts.to_bytes(2100, 2))
    group.addParam(6, sts.to_bytes(2500, 2))
    assert group.txPacket() == scs.COMM_SUCCESS
    ph.write1ByteTxRx(port, 2, 55, 0)
    ph.write2ByteTxRx(port, 2, 31, sts.encode_sign_magnitude(-300, 11))
    ph.write2ByteTxRx(port, 2, 56, 5)  # read-only: not accepted, not logged
    time.sleep(0.05)
    rows = [(r["id"], r["name"], r["value"], r["inst"]) for r in read_log(tmp_path / "writes.jsonl")]
    assert rows == [(1, "Torque_Enable", 1, "write"), (1, "Goal_Position", 2100, "sync_write"),
                    (6, "Goal_Position", 2500, "sync_write"), (2, "Lock", 0, "write"),
                    (2, "Homing_Offset", -300, "write")]


def test_faults_drop_corrupt_silent_overload(make_bus):
    bus, port, ph = make_bus(drop_rate=1.0)
    assert ph.read2ByteTxRx(port, 1, 56)[1] == scs.COMM_RX_TIMEOUT
    bus.set_faults(drop_rate=0.0, corrupt_rate=1.0)
    assert ph.read2ByteTxRx(port, 1, 56)[1] == scs.COMM_RX_CORRUPT
    bus.set_faults(corrupt_rate=0.0, silent_ids={3}, overload_ids={6})
    assert ph.ping(port, 3)[1] == scs.COMM_RX_TIMEOUT
    ph.write1ByteTxRx(port, 3, 40, 1)  # a silent servo does not act either
    assert not bus.torque_enabled()[3]
    value, result, error = ph.read2ByteTxRx(port, 6, 60)
    assert result == scs.COMM_SUCCESS and error == scs.ERRBIT_OVERLOAD
    assert sts.decode_sign_magnitude(value, 10) == 1000
    assert ph.read1ByteTxRx(port, 6, 65)[0] & 0x20
    assert ph.read1ByteTxRx(port, 5, 65) == (0, scs.COMM_SUCCESS, 0)


def test_faults_are_seeded_and_can_start_late(make_bus):
    def pattern(seed):
        bus, port, ph = make_bus(drop_rate=0.5, seed=seed)
        return [ph.ping(port, 1)[1] for _ in range(12)]

    assert pattern(7) == pattern(7)
    bus, port, ph = make_bus(silent_ids={2}, faults_after_s=0.3)
    assert ph.ping(port, 2)[1] == scs.COMM_SUCCESS
    time.sleep(0.35)
    assert ph.ping(port, 2)[1] == scs.COMM_RX_TIMEOUT


def test_external_motion_api_for_a_simulator(make_bus):
    bus, port, ph = make_bus(external_motion=True)
    ph.write1ByteTxRx(port, 1, 40, 1)
    ph.write2ByteTxRx(port, 1, 42, 2500)
    time.sleep(0.1)
    assert bus.goal_steps()[1] == 2500
    assert ph.read2ByteTxRx(port, 1, 56)[0] == 2029  # nobody moved it: the simulator is the physics
    bus.set_present_steps({1: 2400})
    assert ph.read2ByteTxRx(port, 1, 56)[0] == 2400
    assert bus.torque_enabled() == {1: True, 2: False, 3: False, 4: False, 5: False, 6: False}


def test_an_id_write_is_answered_from_the_old_id(make_bus, tmp_path):
    bus, port, ph = make_bus(calibration=None, ids=(1,))
    # the SDK waits for a status packet from the id it wrote to: a reply from the new id would time out
    assert ph.write1ByteTxRx(port, 1, sts.REGISTERS["ID"].address, 6) == (scs.COMM_SUCCESS, 0)
    assert ph.ping(port, 6) == (777, scs.COMM_SUCCESS, 0)
    assert ph.ping(port, 1)[1] == scs.COMM_RX_TIMEOUT
    assert bus.servos[1].id == 6  # keys stay the servos' ids at start
    assert [(r["id"], r["name"], r["value"]) for r in read_log(tmp_path / "writes.jsonl")] == [(1, "ID", 6)]


def test_a_servo_answers_only_at_the_speed_of_its_baud_rate_register(make_bus):
    bus, port, ph = make_bus(calibration=None, ids=(1, 2))
    assert ph.ping(port, 1)[1] == scs.COMM_SUCCESS and bus.baud_check and bus.port_baudrate() == 1_000_000
    # Baud_Rate 2 (250 kbps, a non-standard tty rate) on servo 1: the reply still comes at 1 Mbps
    assert ph.write1ByteTxRx(port, 1, sts.REGISTERS["Baud_Rate"].address, 2) == (scs.COMM_SUCCESS, 0)
    assert ph.ping(port, 1)[1] == scs.COMM_RX_TIMEOUT  # at 1 Mbps it hears nothing...
    assert ph.write1ByteTxRx(port, 1, 21, 10)[0] == scs.COMM_RX_TIMEOUT
    assert bus.servos[1].get("P_Coefficient") == 32  # ...and does nothing
    assert ph.ping(port, 2)[1] == scs.COMM_SUCCESS
    assert port.setBaudRate(250_000) and bus.port_baudrate() == 250_000
    assert ph.ping(port, 1)[1] == scs.COMM_SUCCESS
    assert ph.ping(port, 2)[1] == scs.COMM_RX_TIMEOUT
    # LeRobot's table: index 5 is 57600 (Feetech's own says 76800)
    assert ph.write1ByteTxRx(port, 1, sts.REGISTERS["Baud_Rate"].address, 5) == (scs.COMM_SUCCESS, 0)
    assert port.setBaudRate(57_600)
    assert ph.ping(port, 1)[1] == scs.COMM_SUCCESS
    assert bus.counters["wrong_baud"] >= 3
    assert port.setBaudRate(9600)  # a speed no servo has
    assert ph.ping(port, 1)[1] == scs.COMM_RX_TIMEOUT


def test_operating_modes_other_than_position_are_rejected(make_bus, tmp_path):
    bus, port, ph = make_bus()
    mode = sts.REGISTERS["Operating_Mode"].address
    assert ph.write1ByteTxRx(port, 2, mode, 1) == (scs.COMM_SUCCESS, 0)  # acknowledged, as every write is
    assert ph.read1ByteTxRx(port, 2, mode) == (0, scs.COMM_SUCCESS, 0)  # but still position mode
    assert ph.write1ByteTxRx(port, 2, mode, 0) == (scs.COMM_SUCCESS, 0)
    rows = read_log(tmp_path / "writes.jsonl")
    assert rows[0]["name"] == "Operating_Mode" and rows[0]["value"] == 1
    assert "Operating_Mode 1 (velocity) is not modelled" in rows[0]["rejected"]
    assert rows[1]["value"] == 0 and "rejected" not in rows[1]
    assert bus.counters["rejected"] == 1


def test_reset_restores_factory_eeprom_but_keeps_the_id(make_bus, tmp_path):
    bus, port, ph = make_bus()
    s = bus.servos[4]
    ph.write1ByteTxRx(port, 4, 55, 0)
    ph.write1ByteTxRx(port, 4, 21, 16)
    ph.write1ByteTxRx(port, 4, 40, 1)
    assert s.get("Homing_Offset") == 96 and s.get("Min_Position_Limit") == 905
    txpacket = list(sts.instruction(4, sts.RESET))
    assert ph.txRxPacket(port, txpacket)[1:] == (scs.COMM_SUCCESS, 0)  # answered
    assert (s.id, s.get("Homing_Offset"), s.get("Min_Position_Limit"), s.get("Max_Position_Limit")) == (4, 0, 0, 4095)
    assert s.get("P_Coefficient") == 32 and s.get("Return_Delay_Time") == 250
    assert s.persisted_eeprom == bytes(s.mem[:sts.EEPROM_END])  # written to flash whatever Lock says
    assert not bus.torque_enabled()[4]
    reset = {r["name"]: r["value"] for r in read_log(tmp_path / "writes.jsonl") if r["inst"] == "reset"}
    assert reset == {"Min_Position_Limit": 0, "Max_Position_Limit": 4095, "P_Coefficient": 32,
                     "Homing_Offset": 0, "Torque_Enable": 0}
    assert ph.ping(port, 4)[1] == scs.COMM_SUCCESS


def test_return_delay_time_delays_the_reply():
    bus = EmulatedBus(calibration=CAL)  # not started: the protocol alone
    ping = sts.parse_packets(sts.instruction(3, sts.PING))[0]
    reply, delay = bus._handle(ping, None)
    assert sts.parse_packets(reply)[0].servo_id == 3 and delay == pytest.approx(250 * 2e-6)  # factory: 0.5 ms
    bus._handle(sts.parse_packets(sts.instruction(3, sts.WRITE, [7, 0]))[0], None)  # LeRobot writes 0
    assert bus._handle(ping, None)[1] == 0.0
    sync = sts.parse_packets(sts.instruction(sts.BROADCAST_ID, sts.SYNC_READ, [56, 2, 1, 3]))[0]
    assert bus._handle(sync, None)[1] == pytest.approx(250 * 2e-6)  # the first responder's delay


def test_injected_status_bits_reach_every_reply(make_bus):
    bus, port, ph = make_bus(status_bits={2: sts.ERR_OVERHEAT | sts.ERR_ANGLE})
    value, result, error = ph.read1ByteTxRx(port, 2, sts.REGISTERS["Present_Temperature"].address)
    assert result == scs.COMM_SUCCESS and error == 0x06 and value == 75  # over Max_Temperature_Limit (70)
    assert ph.getRxPacketError(error) == "[RxPacketError] Angle sen error!"
    bus.set_faults(status_bits={3: sts.ERR_VOLTAGE})
    assert ph.ping(port, 2) == (777, scs.COMM_SUCCESS, 0)
    value, _, error = ph.read1ByteTxRx(port, 3, sts.REGISTERS["Present_Voltage"].address)
    assert error == sts.ERR_VOLTAGE and value == 35  # under Min_Voltage_Limit (40 = 4.0 V)
    bus.set_faults(status_bits={6: sts.ERR_OVERLOAD})  # the overload bit here = overload_ids
    assert ph.read2ByteTxRx(port, 6, 60)[2] == sts.ERR_OVERLOAD
    with pytest.raises(ValueError, match="0..0x7f"):
        bus.set_faults(status_bits={1: 0x80})


@pytest.mark.integration
def test_cli_process_links_answers_and_cleans_up(tmp_path, venv_bin):
    link = tmp_path / "ttySO101"
    link.symlink_to("/nonexistent/stale")  # a stale link from a crashed run is replaced
    proc = subprocess.Popen([str(venv_bin / "so101-deploy"), "emulate-bus", "--link", str(link), "--overload-id", "6"],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()  # printed once the bus is served
        assert banner.startswith("emulate-bus: 6 STS3215") and link.is_symlink() and os.path.exists(link), banner
        port = sdk_port(link)
        assert port.openPort()
        ph = scs.PacketHandler(0)
        assert [ph.ping(port, i)[:2] for i in range(1, 7)] == [(777, scs.COMM_SUCCESS)] * 6
        assert ph.ping(port, 6)[2] == scs.ERRBIT_OVERLOAD
        port.closePort()
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not link.exists() and not link.is_symlink()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.integration
def test_cli_one_factory_servo_with_injected_errors(tmp_path, venv_bin):
    link = tmp_path / "ttySetup"
    proc = subprocess.Popen([str(venv_bin / "so101-deploy"), "emulate-bus", "--link", str(link), "--ids", "1",
                             "--overheat-id", "1", "--voltage-id", "1", "--log", str(tmp_path / "w.jsonl")],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()
        assert banner.startswith("emulate-bus: 1 STS3215 (ids [1])"), banner
        port = sdk_port(link)
        assert port.openPort()
        ph = scs.PacketHandler(0)
        assert ph.ping(port, 1) == (777, scs.COMM_SUCCESS, sts.ERR_OVERHEAT | sts.ERR_VOLTAGE)
        assert ph.ping(port, 2)[1] == scs.COMM_RX_TIMEOUT
        port.closePort()
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_cli_error_flags_make_status_bits():
    import argparse

    from so101_deploy.tools import emulate_bus

    parser = argparse.ArgumentParser()
    emulate_bus.configure_parser(parser)
    args = parser.parse_args(["--link", "/tmp/x", "--ids", "1", "--voltage-id", "1,3", "--angle-id", "3",
                              "--overheat-id", "6"])
    assert args.ids == [1]
    assert emulate_bus.status_bits(args) == {1: 0x01, 3: 0x03, 6: 0x04}
    assert parser.parse_args(["--link", "/tmp/x"]).ids == [1, 2, 3, 4, 5, 6]


def test_cli_rejects_bad_fault_options(venv_bin, tmp_path):
    out = subprocess.run([str(venv_bin / "so101-deploy"), "emulate-bus", "--link", str(tmp_path / "t"),
                          "--drop-rate", "1.5"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "probability in [0, 1]" in out.stderr


def test_cli_refuses_to_replace_a_real_file_and_a_bad_calibration(venv_bin, tmp_path):
    real = tmp_path / "ttyACM0"
    real.write_text("not a link")
    out = subprocess.run([str(venv_bin / "so101-deploy"), "emulate-bus", "--link", str(real)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "is not a symlink" in out.stderr and real.read_text() == "not a link"
    out = subprocess.run([str(venv_bin / "so101-deploy"), "emulate-bus", "--link", str(tmp_path / "t"),
                          "--calibration", str(tmp_path / "none.json")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not found" in out.stderr
