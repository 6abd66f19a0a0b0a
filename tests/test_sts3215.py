"""STS3215 control table, sign-magnitude fields and packets, checked against bytes captured from
the real scservo_sdk (research report section 2) and against the SDK's own helpers."""

import pytest
import scservo_sdk as scs
from hypothesis import given
from hypothesis import strategies as st

from so101_deploy.arm import sts3215 as sts


def test_addresses_match_the_stock_table():
    expect = {"Model_Number": (3, 2), "ID": (5, 1), "Homing_Offset": (31, 2), "Torque_Enable": (40, 1),
              "Goal_Position": (42, 2), "Lock": (55, 1), "Present_Position": (56, 2), "Present_Load": (60, 2),
              "Status": (65, 1), "Maximum_Acceleration": (85, 1)}
    for name, (addr, size) in expect.items():
        reg = sts.register(name)
        assert (reg.address, reg.size) == (addr, size), name
    assert sts.REGISTERS["Model_Number"].default == 777
    with pytest.raises(KeyError, match="unknown STS3215 register"):
        sts.register("Goal_Pos")


@pytest.mark.parametrize("value,bit,raw", [(-710, 11, 0x800 | 710), (2047, 11, 2047), (-1, 15, 0x8001),
                                           (0, 15, 0), (-1000, 10, 0x400 | 1000)])
def test_sign_magnitude_known_values(value, bit, raw):
    assert sts.encode_sign_magnitude(value, bit) == raw
    assert sts.decode_sign_magnitude(raw, bit) == value


@given(st.sampled_from([10, 11, 15]), st.data())
def test_sign_magnitude_round_trip_and_sdk_agreement(bit, data):
    value = data.draw(st.integers(-(2 ** bit - 1), 2 ** bit - 1))
    raw = sts.encode_sign_magnitude(value, bit)
    assert 0 <= raw < 2 ** (bit + 1)
    assert sts.decode_sign_magnitude(raw, bit) == value
    assert scs.SCS_TOHOST(raw, bit) == value  # the SDK's own decoder agrees


def test_sign_magnitude_overflow_is_an_error():
    with pytest.raises(ValueError, match="exceeds 2047"):
        sts.encode_sign_magnitude(2048, 11)
    with pytest.raises(ValueError, match="does not fit"):
        sts.encode_value(sts.register("Torque_Limit"), 70000)


@pytest.mark.parametrize("built,captured", [
    (sts.instruction(1, sts.PING), "FF FF 01 02 01 FB"),
    (sts.instruction(1, sts.READ, [3, 2]), "FF FF 01 04 02 03 02 F3"),
    (sts.status(1, 0, [0x09, 0x03]), "FF FF 01 04 00 09 03 EE"),
    (sts.status(1, 0, [0x00, 0x08]), "FF FF 01 04 00 00 08 F2"),
    (sts.instruction(1, sts.WRITE, [42] + sts.to_bytes(1000, 2)), "FF FF 01 05 03 2A E8 03 E1"),
    (sts.instruction(sts.BROADCAST_ID, sts.SYNC_READ, [56, 2, 1, 2, 3, 4, 5, 6]),
     "FF FF FE 0A 82 38 02 01 02 03 04 05 06 26"),
    (sts.instruction(sts.BROADCAST_ID, sts.PING), "FF FF FE 02 01 FE"),
])
def test_packets_equal_bytes_captured_from_the_sdk(built, captured):
    assert built == bytes.fromhex(captured)


def test_status_refuses_error_bytes_the_sdk_rejects():
    with pytest.raises(ValueError, match="0x7F"):
        sts.status(1, 0x80)


def test_reader_reassembles_chunks_skips_garbage_and_flags_bad_checksums():
    good = sts.status(3, sts.ERR_OVERLOAD, [1, 2, 3])
    bad = bytearray(sts.instruction(2, sts.PING))
    bad[-1] ^= 0xFF
    stream = b"\x00\x13\xff" + good + bytes(bad) + sts.instruction(5, sts.READ, [56, 2])
    reader = sts.PacketReader()
    packets = []
    for b in stream:  # one byte at a time, as a slow serial port delivers them
        packets += list(reader.feed(bytes([b])))
    assert [(p.servo_id, p.code, p.params, p.checksum_ok) for p in packets] == [
        (3, sts.ERR_OVERLOAD, b"\x01\x02\x03", True), (2, sts.PING, b"", False), (5, sts.READ, b"\x38\x02", True)]
    assert packets[0].raw == good
    assert reader.pending() == 0


def test_reader_drops_a_header_with_an_impossible_length():
    pkts = sts.parse_packets(b"\xff\xff\x01\x01" + sts.instruction(1, sts.PING))
    assert [(p.servo_id, p.code, p.checksum_ok) for p in pkts] == [(1, sts.PING, True)]
