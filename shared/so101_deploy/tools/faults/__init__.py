"""``so101-deploy faults``: the fault matrix, run for real, written to ``docs/faults.md``.

Every scenario is a real ``dora run`` against the software servo bus (:mod:`so101_deploy.arm.emulator`,
the same bus ``so101-deploy emulate-bus`` serves, through the real ``scservo_sdk``).  A scenario injects
one fault (``kill -9`` of a node, of ``dora run`` itself, an e-stop file, a sagging arm, a bad setting)
and judges what happened from what the arm was told: the bus's JSONL log of every register write
(``Torque_Enable``, ``Goal_Position``), the servo node's ``joint_state`` (its safe state), the exit codes
and the run's log.  Each returns an :class:`Outcome`: fault, expected, observed, time to the safe state,
pass/fail (and the failed checks).  ``tests/test_faults.py`` runs the same functions, one test each.

Two flows:

* **light** (the arm side of ``dataflow.yml``): its ``estop``, ``controller`` and ``servo`` nodes as the
  file has them (inputs, queues, timers), with ``tests/nodes/action_source.py`` in place of the policy
  (Cartesian actions, as the policy sends them) -- for every fault of the arm side;
* **full**: ``dataflow.yml`` itself with the fixture weights and the generated video as camera (as
  ``so101-deploy bench`` runs it) -- where perception is part of the fault (kill policy/seg/depth,
  camera restart, a node failing at start).

Waiting is always for a condition, with a deadline (never a fixed window), so the matrix passes on a
loaded machine too (``--hog`` runs it with two busy-looping processes on the side).  ``dora run`` starts
as a session leader; its nodes (each in a process group of its own under dora 1.1) are found in its
session by their script path, and every process a scenario starts is stopped by pid or process group
when the scenario ends, also after ``dora run`` itself was killed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Callable


# The matrix in modules: runtime (processes, the bus and its log, dora run) <- flows (the two flows, the
# checks, the registry) <- states (a scenario per safe state) and scenarios (a scenario per fault).  The
# names below are the package's interface (the tests and scripts/bench_estop.py use them).
from so101_deploy.tools.faults import scenarios, states  # noqa: F401  (importing them registers their scenarios)
from so101_deploy.tools.faults.flows import SCENARIOS, Context, _repo, _touch, changes, check_park  # noqa: F401
from so101_deploy.tools.faults.flows import check_torque_released_last, freeze_latency, light_flow  # noqa: F401
from so101_deploy.tools.faults.runtime import (CAL, DEADLINE_UP_S, HOLD_S, IDS, PARK_AFTER_S,  # noqa: F401
                                               PARK_SPEED_RAD_S, RAD_PER_STEP, REST_POSE_RAD, Bus, BusLog, DoraRun,
                                               Outcome, ScenarioError, StateLog, _serve_bus, cpu_hog, wait_for)
from so101_deploy.tools.faults.scenarios import FREEZE_BOUND_S, KNOWN_ISSUES, known_issue  # noqa: F401

# --- command --------------------------------------------------------------------------------------

def run_matrix(root: Path, only: list[str] | None = None,
               report: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    ctx = Context(root)
    names = only or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"faults: unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
    outcomes = []
    for name in names:
        o = SCENARIOS[name](ctx)
        o.folder = str(root / name)
        o.known_issue = known_issue(o)
        outcomes.append(o)
        if report is not None:
            report(o)
    return outcomes


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="run only this scenario (repeatable); names: " + ", ".join(SCENARIOS))
    p.add_argument("--out", default="docs/faults.md", help="the Markdown table to write (default %(default)s)")
    p.add_argument("--work", default="artifacts/faults", help="folder for the runs' logs and bus write logs")
    p.add_argument("--hog", action="store_true", help="run with two busy-looping processes (a saturated CPU)")


def run(args: argparse.Namespace) -> int:
    try:
        _repo()  # the test nodes live in the source checkout's tests/nodes/
    except ScenarioError as e:
        print(f"faults: error: {e}")
        return 2
    root = Path(args.work).resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(f"[faults] {len(args.only or SCENARIOS)} scenario(s), work folder {root}", flush=True)
    hog = cpu_hog() if args.hog else contextlib.nullcontext()
    with hog:
        outcomes = run_matrix(root, args.only, report=lambda o: print(o.summary(), flush=True))
    write_markdown(Path(args.out), outcomes, hog=args.hog)
    print(f"[faults] {sum(o.passed for o in outcomes)}/{len(outcomes)} passed; wrote {args.out}")
    return 0 if all(o.passed or o.known_issue for o in outcomes) else 1


def write_markdown(path: Path, outcomes: list[Outcome], hog: bool = False) -> None:
    """The matrix table; a previous file's rows of scenarios not run now are kept, and so is everything
    after the table (e.g. the e-stop latency section)."""
    rows = {}
    tail = ""
    if path.exists():
        text = path.read_text()
        rows = _parse_rows(text)
        marker = "\n## "
        i = text.find(marker, text.find(TABLE_HEADER) if TABLE_HEADER in text else 0)
        tail = text[i:] if i >= 0 else ""
    load = " (with two busy-looping processes saturating both cores)" if hog else ""
    for o in outcomes:
        t = "-" if o.time_to_safe_s is None else f"{o.time_to_safe_s:.2f} s ({o.time_what})"
        result = "pass" if o.passed else (("known issue (xfail): " + o.known_issue + ". Failed: " if o.known_issue
                                           else "FAIL: ") + "; ".join(f.splitlines()[0] for f in o.failures))
        rows[o.name] = "| " + " | ".join(_cell(x) for x in (f"`{o.name}`", o.fault, o.expected, o.observed, t,
                                                              result)) + " |"
    order = [n for n in SCENARIOS if n in rows]  # rows of scenarios that no longer exist are dropped
    head = (f"# Fault matrix\n\nWritten by `so101-deploy faults` (shared/so101_deploy/tools/faults/); the same "
            f"scenarios are the integration tests in tests/test_faults.py.  Each row is a real `dora run` against "
            f"the software STS3215 bus; \"observed\" comes from the bus's log of every register write, the servo "
            f"node's joint_state, the exit codes and the run's log.  Servo settings of the scenarios (short, to be "
            f"fast): SO101_HOLD_S {HOLD_S}, SO101_PARK_AFTER_S {PARK_AFTER_S}, SO101_PARK_SPEED_RAD_S "
            f"{PARK_SPEED_RAD_S}, SO101_REST_POSE_RAD {','.join(str(v) for v in REST_POSE_RAD)} (near the start pose), "
            f"SO101_SERVO_REPLY_WINDOW_MS 120; the rest as in dataflow.yml.  `so101-deploy faults --only NAME` "
            f"reruns one row.  Last run: {time.strftime('%Y-%m-%d %H:%M')}{load}, {os.cpu_count()} CPUs.\n\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + TABLE_HEADER + "\n".join(rows[n] for n in order) + "\n" + tail)


TABLE_HEADER = ("| scenario | fault | expected | observed | time to safe state | result |\n"
                "|---|---|---|---|---|---|\n")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _parse_rows(text: str) -> dict[str, str]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            rows[line[3:line.index("`", 3)]] = line
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-bus"]:
        return _serve_bus(*argv[1:4])
    p = argparse.ArgumentParser(prog="so101-deploy faults")
    configure_parser(p)
    return run(p.parse_args(argv))

