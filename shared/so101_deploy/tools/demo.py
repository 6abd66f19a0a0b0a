"""``so101-deploy demo``: the main job on a default that needs no robot, no camera and no downloads.

It runs the full graph on the simulated SO-101 (``dataflow.sim.yml``: MuJoCo arm and wrist camera
-> learned seg + depth -> observation -> policy -> controller -> sim arm), with the project's
fixture weights (random, in the real checkpoint formats), headless, for a bounded time, with the
monitor node attached.  It leaves, in ``--out``:

* ``report.md`` / ``report.json``: frames, control rate, end-to-end latency, safety events;
* ``wrist_view.mp4`` and ``wrist_view_still.png``: wrist view | mask | disparity, side by side;
* ``dora.log``: what every node printed;
* ``view.rrd``: the rerun live view of the run (``--view save``, the default; ``--view serve`` shows it live
  in a browser instead, ``--view spawn`` in the desktop viewer).

``--flow`` picks a sibling dataflow: ``oracle`` (the simulator's own seg/depth, as in training),
``scripted`` (a privileged scripted policy that grasps and lifts the cube), ``bus`` (the real servo
node driving the simulated arm through the software STS3215 bus).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from so101_deploy.core.dataflow import (DataflowError, add_flows_argument, flow_file, load, node_script, prepare, run_dataflow,
                                        source_checkout)

FLOWS = {
    "sim": "dataflow.sim.yml",
    "oracle": "dataflow.sim-oracle.yml",
    "scripted": "dataflow.sim-scripted.yml",
    "bus": "dataflow.sim-bus.yml",
}

# what the monitor listens to, by the node that makes it (first one present in the flow wins)
MONITOR_SOURCES = {
    "image": ("sim_arm/image", "camera/image"),
    "mask": ("seg/mask", "sim_arm/mask"),
    "disparity": ("depth/disparity", "sim_arm/disparity"),
    "action": ("policy/action", "scripted_policy/action"),
    "goal": ("controller/goal",),
    "joint_state": ("sim_arm/joint_state", "servo/joint_state"),
}


def monitor_node(flow: dict, out_dir: Path, fps: float, script: Path) -> dict:
    outputs = {f"{n['id']}/{o}" for n in flow["nodes"] for o in n.get("outputs", [])}
    inputs = {}
    for iid, candidates in MONITOR_SOURCES.items():
        src = next((c for c in candidates if c in outputs), None)
        if src:
            inputs[iid] = {"source": src, "queue_size": 2 if iid in ("image", "mask", "disparity") else 16}
    return {"id": "monitor", "path": str(script),
            "env": {"SO101_MONITOR_DIR": str(out_dir), "SO101_MONITOR_FPS": str(fps)}, "inputs": inputs}


# what the rerun viewer listens to (first one present in the flow wins); its queues drop the oldest, so it
# never holds anything up: a slow viewer just shows fewer frames
VIEW_SOURCES = {**MONITOR_SOURCES, "observation": ("observation/observation",), "estop": ("estop/estop",)}
VIEW_MODES = ("save", "serve", "spawn", "none")
HEAVY = ("image", "mask", "disparity", "observation")  # only the newest; the small ones keep up to 10


def viewer_node(flow: dict, out_dir: Path, mode: str, script: Path, web_port: int = 9090) -> dict:
    """The viewer node's block for ``flow``: what ``dataflow.*.yml`` users add by hand (README, Live view)."""
    outputs = {f"{n['id']}/{o}" for n in flow["nodes"] for o in n.get("outputs", [])}
    inputs = {}
    for iid, candidates in VIEW_SOURCES.items():
        src = next((c for c in candidates if c in outputs), None)
        if src:
            inputs[iid] = {"source": src, "queue_size": 1 if iid in HEAVY else 10}
    env = {"SO101_VIEW_MODE": mode, "SO101_VIEW_RRD": str(out_dir / "view.rrd"), "SO101_VIEW_WEB_PORT": str(web_port)}
    return {"id": "viewer", "path": str(script), "env": env, "inputs": inputs}


def ensure_fixtures(folder: Path) -> dict[str, Path]:
    from so101_deploy.tools.fixtures import write_fixtures  # noqa: PLC0415

    marker = folder / "fixtures.json"
    if marker.exists():
        return {k: Path(v) for k, v in json.loads(marker.read_text()).items()}
    paths = write_fixtures(folder)
    marker.write_text(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return paths


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flow", choices=sorted(FLOWS), default="sim", help="which simulated dataflow (default: sim)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the graph runs (default 60)")
    p.add_argument("--out", default="artifacts/demo", help="where the report and video go")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate written into the video")
    p.add_argument("--view", choices=VIEW_MODES, default="save",
                   help="the rerun live view: save OUT/view.rrd (default; open it with `rerun OUT/view.rrd`), "
                        "serve the web viewer on --view-port, spawn the desktop viewer, or none")
    p.add_argument("--view-port", type=int, default=9090, help="the web viewer's port with --view serve")
    add_flows_argument(p)


def workspace() -> Path:
    """Where ``artifacts/`` (the fixture weights) goes: the checkout, or the current folder when installed."""
    return source_checkout() or Path.cwd()


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    try:
        src = flow_file(FLOWS[args.flow], args.flows)
        monitor = node_script("monitor", args.flows)
        viewer = node_script("viewer", args.flows) if args.view != "none" else None
    except DataflowError as e:
        print(f"demo: error: {e}")
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = workspace()
    print(f"[demo] flow {src}", flush=True)
    print(f"[demo] fixture weights in {work / 'artifacts' / 'fixtures'}", flush=True)
    ensure_fixtures(work / "artifacts" / "fixtures")
    flow = load(src)
    # the oracle flow normally skips rendering the RGB view (the policy does not need it); the
    # demo's video shows it beside the oracle mask and disparity
    env = {"sim_arm": {"SO101_SIM_CAMERA": "true"}} if args.flow == "oracle" else None
    # the flows name the fixtures as artifacts/fixtures/...: found next to the flows, else in `work`
    extra = [monitor_node(flow, out, args.fps, monitor)]
    if viewer is not None:
        extra.append(viewer_node(flow, out, args.view, viewer, args.view_port))
    prepared = prepare(src, out / f"{src.stem}.demo.yml", env=env, search=(work,), extra_nodes=extra)
    print(f"[demo] dora run {src.name} for {args.seconds:.0f} s (headless, MUJOCO_GL={os.environ['MUJOCO_GL']})",
          flush=True)
    res = run_dataflow(prepared, args.seconds, log_path=out / "dora.log")
    report = out / "report.md"
    if not report.exists():
        print(f"[demo] FAILED: no report was written (dora exit {res.returncode}); see {out / 'dora.log'}")
        print("\n".join(res.log.splitlines()[-30:]))
        return 1
    print(report.read_text())
    print(f"[demo] video: {out / 'wrist_view.mp4'}  still: {out / 'wrist_view_still.png'}  log: {out / 'dora.log'}")
    if args.view == "save":
        print(f"[demo] live view recording: {out / 'view.rrd'} (open it with `rerun {out / 'view.rrd'}`)")
    return 0 if res.returncode == 0 else 1
