"""``so101-deploy bench``: how fast the pipeline runs on this machine, against the hand-off's pipeline.

Three parts, in one run, on the same machine:

1. **stages**: per-node latency of the real-size architectures (random weights; latency does not
   depend on the weights): seg and depth (torch and onnxruntime; depth at 518 and 266 px), the
   policy, the observation builder and one controller step.
2. **hand-off pipeline as written**: the sequential loop of the hand-off document, one frame at a
   time: seg (torch) -> Depth Anything at 518 px (torch) -> its normalisation/crop/resize ->
   policy, with no overlap.  Its rate is 1 / (time per iteration).
3. **this project's graph**: the real-robot ``dataflow.yml`` itself, with only the camera source
   (the generated video at 30 fps) and the serial port (the software STS3215 bus) swapped, run for
   a fixed time under ``dora run`` with the monitor node attached.  The control rate (goals per
   second that carry a new camera frame) and the capture-to-goal latency come from the monitor's
   report.

The ratio of 3 to 2 is the figure the design targets (>= 3x on a 2-core CPU).  Results are written
as JSON and Markdown; nothing here is asserted by a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from so101_deploy.core.dataflow import (DataflowError, SessionMemory, add_flows_argument, flow_file, node_script,
                                        prepare, run_dataflow)
from so101_deploy.tools.perception_bench import time_call

CAMERA_FPS = 30.0  # dataflow.yml's SO101_CAMERA_FPS; the generated video plays at this rate
HANDOFF_DEPTH_SIZE = 518  # Depth Anything V2's own input size, as the hand-off runs it


MODEL_NODES = frozenset({"seg", "depth", "policy"})
BUS_NAME = "software bus"  # the emulated STS3215 bus (a real arm's bus costs the computer nothing)
BENCH_ONLY = frozenset({"monitor", BUS_NAME})


def _frames(n: int = 8) -> list[np.ndarray]:
    from so101_deploy.sim.synthetic import render_frame  # noqa: PLC0415

    return [render_frame(i) for i in range(n)]


# --- real-size model files ------------------------------------------------------------------------

def real_size_models(folder: Path) -> dict[str, Path]:
    """Real-size architectures with random weights in the real file formats (cached in ``folder``)."""
    from so101_deploy.tools.fixtures import write_fixture_snapshots, write_seg_checkpoint  # noqa: PLC0415
    from so101_deploy.tools.perception_bench import _real_size_depth_folder  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    seg = folder / "seg" / "best.ckpt"
    if not seg.exists():
        write_seg_checkpoint(seg, img_hw=(480, 640))
    depth = folder / "depth_v2_small_hf"
    if not (depth / "model.safetensors").exists():
        depth.mkdir(parents=True, exist_ok=True)
        _real_size_depth_folder(depth)
    policy = Path(write_fixture_snapshots(folder / "policy")["policy_snapshot"])  # the real DrQ-v2 size already
    return {"seg": seg, "depth": depth, "policy": policy}


# --- 1. stages ------------------------------------------------------------------------------------

def bench_stages(models: dict[str, Path], device: str, threads: int | None, runs: int,
                 onnx_cache: Path) -> dict[str, Any]:
    from so101_deploy.tools.perception_bench import bench_perception  # noqa: PLC0415
    from so101_deploy.policy.drqv2 import PolicyRunner  # noqa: PLC0415

    backends = ("torch", "onnx") if device == "cpu" else ("torch",)
    out = bench_perception(seg_checkpoint=models["seg"], depth_model=models["depth"], backends=backends,
                           depth_sizes=(518, 266), device=device, threads=threads, runs=runs,
                           depth_runs=max(2, runs // 2), fp16=device == "cuda", onnx_cache_dir=onnx_cache)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 2, 84, 84)).astype(np.float32)
    low = rng.standard_normal((3, 18)).astype(np.float32)
    out["policy"] = {}
    for backend in ("torch", "onnx"):
        pol = PolicyRunner.load(models["policy"], device=device if backend == "torch" else "cpu", backend=backend)
        out["policy"][backend] = time_call(lambda: pol.act(rgb, low), runs * 4)
    out["observation"] = _bench_observation(runs * 4)
    out["controller"] = _bench_controller(runs * 4)
    return out


def _bench_observation(runs: int) -> dict[str, float]:
    from so101_deploy.policy.observation import build_frame  # noqa: PLC0415

    rng = np.random.default_rng(1)
    mask = rng.integers(0, 6, (480, 640), dtype=np.uint8)
    disp = rng.random((480, 640), dtype=np.float32)
    return time_call(lambda: build_frame(mask, disp), runs)


def _bench_controller(runs: int) -> dict[str, float]:
    from so101_deploy.arm.controller import CartesianController  # noqa: PLC0415
    from so101_deploy.arm.kinematics import Kinematics  # noqa: PLC0415

    kin = Kinematics()
    ctl = CartesianController(kin)
    q = np.array([0.0, -0.5, 0.8, 1.2, 1.57, 0.5])
    ctl.reset(q)
    a = np.array([0.3, -0.2, 0.1, 0.0], np.float32)
    return time_call(lambda: ctl.step(a, q), runs)


# --- 2. the hand-off pipeline as written ----------------------------------------------------------

def handoff_preprocess(seg_mask: np.ndarray, disparity: np.ndarray, frames: list) -> np.ndarray:
    """Steps 4-9 of the hand-off, as written there (including its /255; kept only for timing)."""
    import cv2  # noqa: PLC0415

    d = (disparity - disparity.min()) / (disparity.max() - disparity.min() + 1e-6)
    d = (d * 255).astype(np.uint8)
    h, w = 480, 640
    x0 = (w - h) // 2
    seg_c = cv2.resize(seg_mask[:, x0:x0 + h], (84, 84), interpolation=cv2.INTER_NEAREST)
    d_c = cv2.resize(d[:, x0:x0 + h], (84, 84), interpolation=cv2.INTER_LINEAR)
    frames.append(np.stack([seg_c, d_c], axis=0))
    while len(frames) < 3:
        frames.append(frames[-1])
    del frames[:-3]
    return np.concatenate(frames[-3:], axis=0).astype(np.float32) / 255.0


def bench_handoff(models: dict[str, Path], device: str, threads: int | None, iterations: int) -> dict[str, Any]:
    from so101_deploy.perception.depth import DepthModel  # noqa: PLC0415
    from so101_deploy.policy.drqv2 import PolicyRunner  # noqa: PLC0415
    from so101_deploy.perception.seg import SegModel  # noqa: PLC0415

    seg = SegModel.load(models["seg"], device=device, backend="torch", threads=threads)
    depth = DepthModel.load(models["depth"], device=device, backend="torch", input_size=518, threads=threads)
    pol = PolicyRunner.load(models["policy"], device=device, backend="torch")
    frames = _frames(4)
    stack: list = []
    low = np.zeros((3, 18), np.float32)

    def one(i: int) -> None:
        bgr = frames[i % len(frames)]
        obs = handoff_preprocess(seg.predict(bgr), depth.predict(bgr), stack)
        pol.act(obs.reshape(3, 2, 84, 84) * 255.0, low)  # its (6,84,84)/255 tensor, shaped for the actor

    frame_index = iter(range(10**9))
    st = time_call(lambda: one(next(frame_index)), iterations, warmup=1)
    st["rate_hz"] = round(1000.0 / st["mean_ms"], 3)
    return st


# --- 3. this project's graph ----------------------------------------------------------------------

def bench_graph(models: dict[str, Path], device: str, seconds: float, out_dir: Path,
                seg_backend: str, depth_backend: str, depth_size: int,
                bus_log: Path | None = None, flows: str | Path | None = None,
                until_torque_s: float | None = None,
                node_env: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Run ``dataflow.yml`` itself with the generated video as camera and the software bus as arm;
    ``bus_log`` keeps every register write the servo node made (the integration tests read it).
    ``until_torque_s``: stop that long after the servo node first enabled torque (needs ``bus_log``),
    ``seconds`` being then only the deadline -- for tests that must not depend on start-up time."""
    from so101_deploy.sim.synthetic import write_video  # noqa: PLC0415

    src, monitor_script = flow_file("dataflow.yml", flows), node_script("monitor", flows)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = write_video(out_dir / "camera.mp4", frames=90)
    link = out_dir / "ttySO101"
    calibration = Path(__file__).parent.parent / "data" / "calibration_so101_example.json"
    bus_cmd = [sys.executable, "-m", "so101_deploy.tools.cli", "emulate-bus", "--link", str(link),
               "--calibration", str(calibration)] + (["--log", str(bus_log)] if bus_log else [])
    bus = subprocess.Popen(bus_cmd, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if link.exists():
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the software servo bus did not come up")
        # on a CPU, depth (the slow one) gets both cores' threads, seg one: seg finishes early
        seg_threads = {"SO101_THREADS": "1"} if device == "cpu" else {}
        depth_threads = {"SO101_THREADS": "2"} if device == "cpu" else {}
        env = {
            "camera": {"SO101_CAMERA": str(video), "SO101_CAMERA_LOOP": "true"},
            "seg": {"SO101_SEG_CHECKPOINT": str(models["seg"]), "SO101_SEG_BACKEND": seg_backend,
                    "SO101_DEVICE": device, "SO101_ONNX_CACHE": str(out_dir.parent / "onnx"), **seg_threads},
            "depth": {"SO101_DEPTH_MODEL": str(models["depth"]), "SO101_DEPTH_BACKEND": depth_backend,
                      "SO101_DEPTH_INPUT_SIZE": str(depth_size), "SO101_DEPTH_FP16": str(device == "cuda").lower(),
                      "SO101_DEVICE": device, "SO101_ONNX_CACHE": str(out_dir.parent / "onnx"), **depth_threads},
            "policy": {"SO101_POLICY_CHECKPOINT": str(models["policy"]), "SO101_DEVICE": device,
                       "SO101_ONNX_CACHE": str(out_dir.parent / "onnx"),
                       "SO101_POLICY_BACKEND": "onnx" if device == "cpu" else "torch"},
            "controller": {"SO101_CALIBRATION": str(calibration)},
            "servo": {"SO101_PORT": str(link), "SO101_CALIBRATION": str(calibration)},
            "estop": {"SO101_ESTOP_FILE": str(out_dir / "so101.estop")},  # never a stray /tmp file
        }
        for node_id, values in (node_env or {}).items():  # --graph-env: settings to compare
            env.setdefault(node_id, {}).update(values)
        # joint_state: the servo's write of each goal (the end of a frame's timeline); only the newest matters
        monitor = {"id": "monitor", "path": str(monitor_script),
                   "env": {"SO101_MONITOR_DIR": str(out_dir / "monitor")},
                   "inputs": {"goal": "controller/goal", "action": "policy/action",
                              "joint_state": {"source": "servo/joint_state", "queue_size": 1}}}
        flow = prepare(src, out_dir / "dataflow.bench.yml", env=env, extra_nodes=[monitor])
        until = (lambda log: _torque_enabled(bus_log)) if until_torque_s is not None else None
        memory = SessionMemory(extra={bus.pid: BUS_NAME})
        launched_unix_s = time.time()
        res = run_dataflow(flow, seconds, log_path=out_dir / "dora.log", grace_s=120, until=until,
                           linger_s=until_torque_s or 0.0, memory=memory)
    finally:
        os.killpg(bus.pid, signal.SIGTERM)
        bus.wait(timeout=10)
    report_path = out_dir / "monitor" / "report.json"
    if not report_path.exists():
        raise RuntimeError(f"the graph wrote no monitor report (see {out_dir / 'dora.log'})")
    rep = json.loads(report_path.read_text())
    # a goal carries the frame id of the camera frame it was computed from; count new frames only
    # control rate = how often a goal computed from a NEW camera frame reaches the arm (held or
    # repeated goals between frames do not count); measured from the first to the last such goal
    first = rep.get("first_goal_unix_s")
    peak = memory.stop()
    return {"returncode": res.returncode, "seconds": seconds, "report": rep,
            "control_rate_hz": round(rep["new_frame_goal_rate_hz"], 3),
            "depth_size": depth_size,
            # dora run -> the first goal reaching the monitor (model loading, ONNX sessions, first frames)
            "startup_s": round(first - launched_unix_s, 2) if first is not None else None,
            "peak_rss_mb": peak,
            "peak_rss_mb_total": round(sum(v for k, v in peak.items() if k != "monitor"), 1),
            # RSS counts the shared libraries in full in every node; PSS splits them: its sum is the real total
            "peak_pss_mb": memory.peak_pss_mb,
            "peak_pss_mb_total": round(sum(v for k, v in memory.peak_pss_mb.items() if k != "monitor"), 1),
            # where the CPU goes once goals flow (model loading and exports left out): % of one core each
            "cpu_percent": memory.cpu_percent(first),
            "peak_rss_mb_max_lean": max((v for k, v in peak.items() if k not in MODEL_NODES | {"monitor"}),
                                        default=None),
            "timeline_ms": rep.get("timeline_ms") or {}}


def _torque_enabled(bus_log: Path) -> bool:
    """The servo node enabled torque: the first goal computed from an action reached the arm."""
    if not bus_log.exists():
        return False
    rows = (json.loads(line) for line in bus_log.read_text().splitlines() if line.endswith("}"))
    return any(r["name"] == "Torque_Enable" and r["value"] == 1 for r in rows)


# --- command --------------------------------------------------------------------------------------

def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="artifacts/bench", help="folder for results and cached model files")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--runs", type=int, default=6, help="timed runs per stage")
    p.add_argument("--handoff-iterations", type=int, default=4)
    p.add_argument("--seconds", type=float, default=60.0, help="how long the graph runs")
    p.add_argument("--seg-backend", choices=("torch", "onnx"), default=None)
    p.add_argument("--depth-backend", choices=("torch", "onnx"), default=None)
    p.add_argument("--depth-size", type=int, default=None, help="depth input size in the graph (default: 266 on "
                                                                    "CPU, 518 on CUDA)")
    p.add_argument("--skip", action="append", default=[], choices=("stages", "handoff", "graph", "same-size"),
                   help="same-size: the second graph run at the hand-off's depth size 518 (CPU only)")
    p.add_argument("--int8-depth", action="store_true",
                   help="also quantize depth to static int8 (quantize-depth, on generated frames) and run the graph "
                        "with it, when it agrees with fp32")
    p.add_argument("--graph-env", action="append", default=[], metavar="NODE:KEY=VALUE",
                   help="a setting for one node of the benchmarked graph (repeatable), e.g. depth:SO101_THREADS=2")
    p.add_argument("--two-machines", action="store_true", help="also run dataflow.two-machines.yml with two daemons "
                   "on loopback against one machine (so101_deploy.tools.two_machines.bench_link)")
    add_flows_argument(p)


def bench_int8_graph(models: dict[str, Path], args: argparse.Namespace, out: Path, seg_backend: str,
                     depth_size: int, node_env: dict[str, dict[str, str]]) -> dict[str, Any]:
    """quantize-depth on generated frames, then the graph with SO101_DEPTH_INT8=true if it was accepted;
    likewise at the hand-off's depth size (518) unless same-size is skipped."""
    from dataclasses import asdict  # noqa: PLC0415

    from so101_deploy.sim.synthetic import write_image_folder  # noqa: PLC0415
    from so101_deploy.tools.quantize import QuantizationRejected, quantize_depth, read_frames  # noqa: PLC0415

    write_image_folder(out / "int8_frames", frames=12, seed=5)
    frames = read_frames(out / "int8_frames")
    env = {**node_env, "depth": {**node_env.get("depth", {}), "SO101_DEPTH_INT8": "true"}}
    sizes = [("", depth_size)]
    if depth_size != HANDOFF_DEPTH_SIZE and "same-size" not in args.skip:
        sizes.append(("_same_size", HANDOFF_DEPTH_SIZE))
    result: dict[str, Any] = {}
    for suffix, size in sizes:
        print(f"[bench] quantizing depth at {size} to static int8 ...", flush=True)
        try:
            report = asdict(quantize_depth(models["depth"], frames, size, out / "onnx", threads=2))
        except QuantizationRejected as e:
            result[f"int8_quantization{suffix}"] = {"accepted": False, "reason": str(e)}
            continue
        print(f"[bench] dataflow.yml with int8 depth at {size} for {args.seconds:.0f} s ...", flush=True)
        result[f"int8_quantization{suffix}"] = report
        result[f"graph_int8{suffix}"] = bench_graph(models, "cpu", args.seconds, out / f"graph_int8_{size}",
                                                    seg_backend, "onnx", size, flows=args.flows, node_env=env)
    return result


def parse_graph_env(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        node_id, sep, kv = item.partition(":")
        key, eq, value = kv.partition("=")
        if not sep or not eq or not node_id or not key.startswith("SO101_"):
            raise ValueError(f"--graph-env {item!r}: expected NODE:SO101_KEY=VALUE, e.g. depth:SO101_THREADS=2")
        out.setdefault(node_id, {})[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    if "graph" not in args.skip:
        try:  # before minutes of stage timings: a wrong --flows is a one-line error now
            flow_file("dataflow.yml", args.flows), node_script("monitor", args.flows)
        except DataflowError as e:
            print(f"bench: error: {e}")
            return 2
    try:
        node_env = parse_graph_env(args.graph_env)
    except ValueError as e:
        print(f"bench: error: {e}")
        return 2
    import torch  # noqa: PLC0415

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    threads = 2 if args.device == "cpu" else None
    if threads:
        torch.set_num_threads(threads)
    cpu = args.device == "cpu"
    seg_backend = args.seg_backend or ("onnx" if cpu else "torch")
    depth_backend = args.depth_backend or ("onnx" if cpu else "torch")
    depth_size = args.depth_size or (266 if cpu else 518)
    models = real_size_models(out / "models")
    result: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                                          "processor": platform.processor() or platform.machine(),
                                          "torch": torch.__version__, "device": args.device,
                                          "gpu": torch.cuda.get_device_name(0) if not cpu else None},
                              "command": "so101-deploy bench " + " ".join(sys.argv[2:] if len(sys.argv) > 1 else []),
                              "graph_settings": {"seg_backend": seg_backend, "depth_backend": depth_backend,
                                                 "depth_size": depth_size, "node_env": node_env}}
    if "stages" not in args.skip:
        print("[bench] stages ...", flush=True)
        result["stages"] = bench_stages(models, args.device, threads, args.runs, out / "onnx")
    if "handoff" not in args.skip:
        print("[bench] hand-off pipeline, sequential, depth at 518 ...", flush=True)
        result["handoff"] = bench_handoff(models, args.device, threads, args.handoff_iterations)
        print(f"[bench] hand-off: {result['handoff']['rate_hz']} Hz", flush=True)
    if "graph" not in args.skip:
        print(f"[bench] dataflow.yml for {args.seconds:.0f} s ...", flush=True)
        result["graph"] = bench_graph(models, args.device, args.seconds, out / "graph", seg_backend,
                                      depth_backend, depth_size, flows=args.flows, node_env=node_env)
        print(f"[bench] graph: {result['graph']['control_rate_hz']} Hz", flush=True)
        if depth_size != HANDOFF_DEPTH_SIZE and "same-size" not in args.skip:
            # the same graph at the hand-off's own depth size: the speed-up that is not the smaller input
            print(f"[bench] dataflow.yml with depth at {HANDOFF_DEPTH_SIZE} for {args.seconds:.0f} s ...", flush=True)
            result["graph_same_size"] = bench_graph(models, args.device, args.seconds, out / "graph_518", seg_backend,
                                                    depth_backend, HANDOFF_DEPTH_SIZE, flows=args.flows,
                                                    node_env=node_env)
    if args.two_machines:
        from so101_deploy.tools.two_machines import bench_link, flow_quality  # noqa: PLC0415

        print(f"[bench] dataflow.two-machines.yml, two daemons on loopback vs one machine, {args.seconds:.0f} s each ...",
              flush=True)
        result["two_machines"] = bench_link(models, out / "two_machines", args.seconds, flow_quality(args.flows),
                                            flows=args.flows, device=args.device)
    if args.int8_depth and args.device == "cpu" and "graph" not in args.skip:
        result.update(bench_int8_graph(models, args, out, seg_backend, depth_size, node_env))
    if "handoff" in result and result["handoff"]["rate_hz"] > 0:
        for key, ratio in (("graph", "speedup_vs_handoff"), ("graph_same_size", "speedup_same_size_vs_handoff"),
                           ("graph_int8", "speedup_int8_vs_handoff"),
                           ("graph_int8_same_size", "speedup_int8_same_size_vs_handoff")):
            if key in result:
                result[ratio] = round(result[key]["control_rate_hz"] / result["handoff"]["rate_hz"], 2)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    (out / "bench.md").write_text(render_markdown(result))
    print(render_markdown(result))
    return 0


def render_markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"# so101-deploy bench ({m['device']}{', ' + m['gpu'] if m.get('gpu') else ''}; "
             f"{m['cpu_count']} CPUs; torch {m['torch']})", ""]
    if r.get("command"):
        lines += [f"Made with `{r['command'].strip()}`; graph settings {r['graph_settings']}.", ""]
    st = r.get("stages")
    if st:
        lines += ["| stage | backend | input | p50 ms | min ms |", "|---|---|---|---|---|"]
        for b, s in st.get("seg", {}).items():
            lines.append(f"| seg 640x480 frame | {b} | {s.get('input', '')} | {s['p50_ms']} | {s['min_ms']} |")
        for size, per in st.get("depth", {}).items():
            for b, s in per.items():
                lines.append(f"| depth {size} | {b} | {s.get('input', '')} | {s['p50_ms']} | {s['min_ms']} |")
        for b, s in st.get("policy", {}).items():
            lines.append(f"| policy | {b} | 3x2x84x84 + 3x18 | {s['p50_ms']} | {s['min_ms']} |")
        lines.append(f"| observation (1 frame) | numpy/OpenCV | 640x480 | {st['observation']['p50_ms']} | "
                     f"{st['observation']['min_ms']} |")
        lines.append(f"| controller (IK step) | mujoco | - | {st['controller']['p50_ms']} | {st['controller']['min_ms']} |")
        lines.append("")
    if "handoff" in r:
        h = r["handoff"]
        lines.append(f"- hand-off pipeline as written (sequential, depth 518, torch): {h['p50_ms']} ms per "
                     f"iteration, **{h['rate_hz']} Hz**")
    if "graph" in r:
        g = r["graph"]
        gs = r["graph_settings"]
        lines.append(f"- this project's dataflow.yml (seg {gs['seg_backend']}, depth {gs['depth_backend']} at "
                     f"{gs['depth_size']}): **{g['control_rate_hz']} Hz** of goals from new camera frames; "
                     f"capture-to-goal latency {_p50_p90(g)}")
    if "graph_same_size" in r:
        g = r["graph_same_size"]
        lines.append(f"- the same graph with depth at {g['depth_size']} (the hand-off's size): **{g['control_rate_hz']} Hz**; "
                     f"capture-to-goal {_p50_p90(g)}; **{r.get('speedup_same_size_vs_handoff', 'n/a')}x** the hand-off "
                     f"pipeline")
    if "two_machines" in r:
        from so101_deploy.tools.two_machines import render_bench  # noqa: PLC0415

        lines += ["", render_bench(r["two_machines"])]
    if "speedup_vs_handoff" in r:
        note = ""
        if "graph" in r and r["graph"]["control_rate_hz"] >= 0.9 * CAMERA_FPS:
            note = (f" (the graph runs at the camera's {CAMERA_FPS:.0f} fps, its ceiling; the hand-off loop "
                    f"was timed in-process without a camera)")
        lines.append(f"- speed-up over the hand-off pipeline: **{r['speedup_vs_handoff']}x**{note}")
    for suffix in ("", "_same_size"):
        q = r.get(f"int8_quantization{suffix}")
        if not q:
            continue
        if q.get("accepted"):
            g = r[f"graph_int8{suffix}"]
            lines.append(f"- with static int8 depth at {g['depth_size']} (`quantize-depth`: its 84x84 disparity "
                         f"observation correlates {q['correlation_min']} (worst of {q['check_frames']} held-out "
                         f"frames) with fp32's; {q['int8_ms']} ms vs {q['fp32_ms']} ms per frame alone): "
                         f"**{g['control_rate_hz']} Hz**, capture-to-goal {_p50_p90(g)}; "
                         f"**{r.get(f'speedup_int8{suffix}_vs_handoff', 'n/a')}x** the hand-off pipeline")
        else:
            lines.append(f"- static int8 depth: {q['reason']}")
    for key, label in (("graph", ""), ("graph_same_size", " (the hand-off's size)"), ("graph_int8", ", int8"),
                       ("graph_int8_same_size", ", int8 (the hand-off's size)")):
        if key in r:
            lines += graph_details(r[key], label)
    return "\n".join(lines) + "\n"


def _p50_p90(g: dict[str, Any]) -> str:
    """A graph run's capture-to-goal latency of new frames, as the report writes it."""
    lat = g["report"].get("new_frame_latency_ms") or {}
    return f"p50 {lat.get('p50', float('nan')):.0f} ms, p90 {lat.get('p90', float('nan')):.0f} ms"


def graph_details(g: dict[str, Any], label: str = "") -> list[str]:
    """Start-up, memory per node and the timeline of one frame, for one graph run."""
    from so101_deploy.tools.monitor import timeline_table  # noqa: PLC0415

    lines = ["", f"### Graph run, depth at {g['depth_size']}{label}", "",
             f"- start-up, `dora run` -> first goal: {g['startup_s']} s",
             f"- peak resident memory of the graph (monitor excluded): {g.get('peak_pss_mb_total', 'n/a')} MB PSS "
             f"(shared pages split among the nodes that map them: what the graph takes), "
             f"{g['peak_rss_mb_total']} MB as a sum of RSS (every node counting the shared libraries in full); "
             f"largest node without a model: {g['peak_rss_mb_max_lean']} MB RSS", "",
             "| node | peak RSS MB | peak PSS MB | CPU, % of one core |", "|---|---|---|---|"]
    pss, cpu = g.get("peak_pss_mb") or {}, g.get("cpu_percent") or {}
    lines += [f"| {k} | {v} | {pss.get(k, 'n/a')} | {cpu.get(k, 'n/a')} |" for k, v in g["peak_rss_mb"].items()]
    lines += [f"| {k} | - | - | {v} |" for k, v in cpu.items() if k not in g["peak_rss_mb"]]
    if cpu:
        models = sum(v for k, v in cpu.items() if k in MODEL_NODES)
        tools = sum(v for k, v in cpu.items() if k in BENCH_ONLY)
        rest = sum(cpu.values()) - models - tools
        lines += ["", f"CPU once goals flow, in % of one core: the models (seg, depth, policy) {models:.0f} %, "
                      f"the rest of the graph (dora, camera, gate, observation, controller, servo, e-stop) "
                      f"{rest:.0f} %, the bench's own monitor and software bus {tools:.0f} %."]
    return lines + timeline_table(g.get("timeline_ms") or {})
