"""``so101-deploy emulate-bus``: a software bus of STS3215 servos on a pty that scservo_sdk and LeRobot talk to.

Serves :class:`so101_deploy.arm.emulator.EmulatedBus` at ``--link`` (a symlink to the pty, what
``SO101_PORT`` points at) until SIGINT/SIGTERM: six servos (ids 1-6) by default, ``--ids 1`` for one
factory servo (LeRobot's ``lerobot-setup-motors``), with the fault-injection flags of the emulator.
Exit code 2 when the bus cannot be set up (bad calibration, the link path is a real file).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading

from so101_deploy.arm import sts3215 as sts
from so101_deploy.arm.emulator import DEFAULT_IDS, DEFAULT_MAX_SPEED_SPS, EmulatedBus


def _ids(text: str) -> set[int]:
    try:
        out = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected servo ids like 3 or 3,6, got {text!r}") from None
    if not all(0 <= i <= sts.MAX_SERVO_ID for i in out):
        raise argparse.ArgumentTypeError(f"servo ids must be 0..{sts.MAX_SERVO_ID}, got {text!r}")
    return out


def _id_list(text: str) -> list[int]:
    ids = _ids(text)
    if not ids:
        raise argparse.ArgumentTypeError(f"expected at least one servo id, got {text!r}")
    return sorted(ids)


def _rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return v


def _speed(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive speed in steps/s, got {text!r}")
    return v


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--link", required=True, help="path of the symlink to the pty (what SO101_PORT points at), "
                                                      "e.g. /tmp/ttySO101")
    parser.add_argument("--ids", type=_id_list, default=list(DEFAULT_IDS),
                        help="ids of the emulated servos (default 1,2,3,4,5,6); --ids 1: one factory servo, for "
                             "LeRobot's lerobot-setup-motors")
    parser.add_argument("--log", help="append one JSON line per accepted register write to this file")
    parser.add_argument("--calibration", help="LeRobot calibration JSON: homing offsets and range limits are "
                                              "'in the servos', the arm starts at mid-range (0 rad)")
    parser.add_argument("--speed", type=_speed, default=DEFAULT_MAX_SPEED_SPS,
                        help="max joint speed in steps/s (4096 steps per turn; default %(default)s)")
    parser.add_argument("--drop-rate", type=_rate, default=0.0, help="probability that a reply is lost")
    parser.add_argument("--corrupt-rate", type=_rate, default=0.0, help="probability of a bad reply checksum")
    parser.add_argument("--silent-id", type=_ids, default=set(), help="servo id(s) that never answer, e.g. 3 or 3,6")
    parser.add_argument("--overload-id", type=_ids, default=set(),
                        help="servo id(s) reporting the overload bit (Status bit 5) and high Present_Load")
    parser.add_argument("--voltage-id", type=_ids, default=set(),
                        help="servo id(s) reporting the input-voltage error (Status bit 0, Present_Voltage low)")
    parser.add_argument("--angle-id", type=_ids, default=set(),
                        help="servo id(s) reporting the angle-sensor error (Status bit 1)")
    parser.add_argument("--overheat-id", type=_ids, default=set(),
                        help="servo id(s) reporting the overheat error (Status bit 2, Present_Temperature high)")
    parser.add_argument("--faults-after", type=float, default=0.0,
                        help="seconds after start before the faults begin (default 0: from the start)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault randomness")


def status_bits(args: argparse.Namespace) -> dict[int, int]:
    """{id: Status bits} from --voltage-id / --angle-id / --overheat-id."""
    bits: dict[int, int] = {}
    for ids, bit in ((args.voltage_id, sts.ERR_VOLTAGE), (args.angle_id, sts.ERR_ANGLE),
                     (args.overheat_id, sts.ERR_OVERHEAT)):
        for i in ids:
            bits[i] = bits.get(i, 0) | bit
    return bits


def run(args: argparse.Namespace) -> int:
    try:
        bus = EmulatedBus(args.link, calibration=args.calibration, ids=args.ids, max_speed_sps=args.speed,
                          drop_rate=args.drop_rate, corrupt_rate=args.corrupt_rate, silent_ids=args.silent_id,
                          overload_ids=args.overload_id, status_bits=status_bits(args), seed=args.seed,
                          faults_after_s=args.faults_after, log_path=args.log)
    except (ValueError, OSError) as e:  # CalibrationError is a ValueError
        print(f"emulate-bus: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        bus.start()
    except OSError as e:  # the link path is a real file, or its folder is not writable
        print(f"emulate-bus: cannot link the bus at {args.link}: {e}", file=sys.stderr)
        bus.stop()
        return 2
    try:
        print(f"emulate-bus: {len(bus.servos)} STS3215 (ids {sorted(bus.servos)}) on {bus.port}, linked at "
              f"{bus.link_path}; each answers at its Baud_Rate's speed (LeRobot's table, 1 Mbps from the factory)"
              f"{'' if bus.port_baudrate() else ' -- NOT CHECKED: the pty speed cannot be read here'}; Ctrl-C to stop",
              flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        bus.stop()
        print(f"emulate-bus: stopped ({bus.counters})", file=sys.stderr, flush=True)
    return 0
