"""The two-machine flow (``dataflow.two-machines.yml``) on this machine, and what its link costs.

* :func:`cluster_flow` writes the copy of the flow a cluster starts: dora 1.1 resolves a node's relative
  path against its daemon's working folder, so every node path (and file setting) is made absolute, for
  the checkout on the robot computer and the one on the GPU host (``so101-deploy cluster-flow``).
* :func:`loopback_run` runs the flow under :class:`~so101_deploy.core.cluster.LocalCluster` (a
  coordinator and daemons ``robot`` and ``gpu`` on 127.0.0.1) with the generated video as camera, the
  software STS3215 bus as arm and the given models on the CPU; the integration test and the benchmark
  use it.
* :func:`bench_link` (``so101-deploy two-machines bench``): bytes per second over the link, JPEG
  encode/decode, the added latency per hop and capture -> goal p50/p90, two daemons on loopback against
  the same graph under ``dora run`` on one machine, into ``bench.json``/``bench.md``.
* :func:`jpeg_effect` (``so101-deploy two-machines jpeg``): what JPEG does to the 84x84 observation --
  the mask and the disparity of a decoded frame against those of the raw frame (equal seg pixels,
  disparity correlation), with the fixture models and with the simulator's oracle on rendered frames.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import yaml

from so101_deploy.core.cluster import LocalCluster, wait_for
from so101_deploy.core.dataflow import DataflowError, add_flows_argument, flow_file, load, node_script, prepare, \
    run_dataflow

FLOW = "dataflow.two-machines.yml"
MACHINES = ("robot", "gpu")
DEFAULT_QUALITIES = (50, 70, 80, 90, 95)
CALIBRATION = Path(__file__).resolve().parent.parent / "data" / "calibration_so101_example.json"


# --- the copy a cluster starts -------------------------------------------------------------------

def cluster_flow(src: Path, out: Path, roots: Mapping[str, Path]) -> Path:
    """Write ``src`` with each node's path (and relative file settings) made absolute under the
    checkout of the machine it is deployed on (``roots[machine]``, the folder holding the flow on that
    machine).  A node without ``deploy.machine``, or with a machine not in ``roots``, is an error."""
    df = load(src)
    for node in df.get("nodes", []):
        machine = (node.get("deploy") or {}).get("machine")
        if machine not in roots:
            raise DataflowError(f"{src.name}: node {node.get('id')!r} is deployed on {machine!r}; expected one of "
                                f"{sorted(roots)} (deploy: {{machine: ...}})")
        root = Path(roots[machine])
        path = str(node.get("path", ""))
        if path and not os.path.isabs(path) and not path.startswith("dora"):
            node["path"] = str(root / path)
        if node.get("env"):
            # relative file settings (checkpoints/..., calibration/..., shared/...) are relative to the
            # checkout on that machine, not to the daemon's working folder
            node["env"] = {k: (str(root / v) if _relative_file(v) else v) for k, v in node["env"].items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(df, sort_keys=False))
    return out


def _relative_file(value: Any) -> bool:
    v = str(value)
    return ("/" in v or v.endswith((".yml", ".json", ".pt", ".pth", ".ckpt"))) and not v.startswith(("/", "~", "$"))


# --- one run on loopback -------------------------------------------------------------------------

@dataclass
class LoopbackRun:
    cluster: LocalCluster
    name: str
    flow: Path
    bus_log: Path
    out_dir: Path

    def torque_enabled(self) -> bool:
        return _bus_writes(self.bus_log, "Torque_Enable", 1)

    def servo_log(self) -> str:
        return self.cluster.node_log("robot", "servo")


def graph_env(models: Mapping[str, Path], out_dir: Path, video: Path, link: Path, jpeg_quality: int,
              servo: Mapping[str, str] | None = None, device: str = "cpu") -> dict[str, dict[str, str]]:
    """Per-node settings for a loopback run: the generated video, the software bus, ``models``; on the CPU
    onnx with depth at 266 (the flow's own settings are for a real GPU host), on cuda torch, depth 518 fp16."""
    if device not in ("cpu", "cuda"):
        raise DataflowError(f"device {device!r}: expected 'cpu' or 'cuda'")
    onnx = str(out_dir.parent / "onnx")
    cpu = device == "cpu"
    return {
        "camera": {"SO101_CAMERA": str(video), "SO101_CAMERA_LOOP": "true",
                   "SO101_CAMERA_JPEG_QUALITY": str(jpeg_quality)},
        "seg": {"SO101_SEG_CHECKPOINT": str(models["seg"]), "SO101_SEG_BACKEND": "onnx" if cpu else "torch",
                "SO101_DEVICE": device, "SO101_ONNX_CACHE": onnx, **({"SO101_THREADS": "1"} if cpu else {})},
        "depth": {"SO101_DEPTH_MODEL": str(models["depth"]), "SO101_DEPTH_BACKEND": "onnx" if cpu else "torch",
                  "SO101_DEPTH_INPUT_SIZE": "266" if cpu else "518", "SO101_DEPTH_FP16": str(not cpu).lower(),
                  "SO101_DEVICE": device, "SO101_ONNX_CACHE": onnx, **({"SO101_THREADS": "2"} if cpu else {})},
        "policy": {"SO101_POLICY_CHECKPOINT": str(models["policy"]), "SO101_DEVICE": device,
                   "SO101_POLICY_BACKEND": "onnx" if cpu else "torch"},
        # a loaded 2-core CPU runs the GPU side too: capture -> action may pass the flow's 1 s on its own
        "controller": {"SO101_CALIBRATION": str(CALIBRATION), "SO101_MAX_ACTION_AGE_S": "10" if cpu else "1"},
        "servo": {"SO101_PORT": str(link), "SO101_CALIBRATION": str(CALIBRATION), **(servo or {})},
        "estop": {"SO101_ESTOP_FILE": str(out_dir / "so101.estop")},  # never a stray /tmp file
    }


def monitor_node(flows: str | Path | None, out_dir: Path, machine: str | None = "robot") -> dict[str, Any]:
    """The monitor, on the robot computer: capture stamp and goal receipt on the same clock."""
    node = {"id": "monitor", "path": str(node_script("monitor", flows)),
            "env": {"SO101_MONITOR_DIR": str(out_dir / "monitor")},
            "inputs": {"goal": "controller/goal"}}  # robot-side only: it ends with the robot side
    if machine:
        node["deploy"] = {"machine": machine}
    return node


@contextlib.contextmanager
def emulated_bus(out_dir: Path) -> Iterator[tuple[Path, Path]]:
    """The software STS3215 bus on a pty, in its own process group, stopped by its pid."""
    link, log = out_dir / "ttySO101", out_dir / "bus_writes.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "so101_deploy.tools.cli", "emulate-bus", "--link", str(link),
                             "--calibration", str(CALIBRATION), "--log", str(log)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: link.exists() or proc.poll() is not None, 60, f"the software servo bus at {link}")
        if proc.poll() is not None:
            raise DataflowError(f"the software servo bus exited with {proc.returncode}")
        yield link, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)  # it waits for the servo node's torque release
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def loopback_run(models: Mapping[str, Path], out_dir: Path, jpeg_quality: int = 90,
                 servo: Mapping[str, str] | None = None, monitor: bool = True,
                 flows: str | Path | None = None, video_frames: int = 90, device: str = "cpu") -> Iterator[LoopbackRun]:
    """``dataflow.two-machines.yml`` started on a coordinator with daemons ``robot`` and ``gpu`` on
    127.0.0.1; yields once ``dora start`` returned.  Everything is stopped on exit."""
    from so101_deploy.sim.synthetic import write_video  # noqa: PLC0415

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = write_video(out_dir / "camera.mp4", frames=video_frames)
    with emulated_bus(out_dir) as (link, bus_log):
        env = graph_env(models, out_dir, video, link, jpeg_quality, servo, device)
        extra = [monitor_node(flows, out_dir)] if monitor else []
        flow = prepare(flow_file(FLOW, flows), out_dir / "dataflow.two-machines.loopback.yml", env=env,
                       extra_nodes=extra)
        with LocalCluster(MACHINES, out_dir / "cluster") as cluster:
            name = f"so101-two-{os.getpid()}-{int(time.time())}"
            cluster.start_dataflow(flow, name)
            yield LoopbackRun(cluster, name, flow, bus_log, out_dir)


def _bus_writes(log: Path, name: str, value: int | None = None) -> bool:
    if not log.exists():
        return False
    for line in log.read_text().splitlines():
        if not line.endswith("}"):
            continue
        row = json.loads(line)
        if row["name"] == name and (value is None or row["value"] == value):
            return True
    return False


def action_hop(log_text: str) -> dict[str, Any] | None:
    """The controller's ``action hop ms: {...}`` line (its last one), parsed."""
    found = re.findall(r"action hop ms: (\{.*\})", log_text)
    return json.loads(found[-1]) if found else None


def link_stats(log_text: str) -> dict[str, Any] | None:
    """The frame gate's ``link stats: {...}`` line (its last one), parsed."""
    found = re.findall(r"link stats: (\{.*\})", log_text)
    return json.loads(found[-1]) if found else None


# --- the benchmark: two daemons on loopback vs one machine ----------------------------------------

def bench_link(models: Mapping[str, Path], out: Path, seconds: float, jpeg_quality: int,
               flows: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Run the two-machine flow for ``seconds`` after the first goal reached the arm, then the same graph
    with raw frames under ``dora run`` on one machine, and report both."""
    result: dict[str, Any] = {"seconds": seconds, "jpeg_quality": jpeg_quality, "device": device}
    two_dir = out / "two_machines"
    with loopback_run(models, two_dir, jpeg_quality=jpeg_quality, flows=flows, device=device) as run:
        wait_for(run.torque_enabled, 600, "the first goal to reach the arm (torque on)", poll_s=0.5)
        time.sleep(seconds)  # the measurement window itself, not a wait for a condition
        run.cluster.stop_dataflow(run.name, timeout_s=120)
        wait_for(lambda: (two_dir / "monitor" / "report.json").exists(), 120, "the monitor's report")
        wait_for(lambda: "action hop ms:" in run.cluster.node_log("robot", "controller"), 60,
                 "the controller's stop line")
        gate_log = run.cluster.node_log("gpu", "frame_gate")
        ctl_log = run.cluster.node_log("robot", "controller")
    result["two_machines"] = {"report": json.loads((two_dir / "monitor" / "report.json").read_text()),
                              "link": link_stats(gate_log), "action_hop_ms": action_hop(ctl_log)}
    # the same graph on one machine, raw frames, under `dora run` (no deploy sections there)
    one_dir = out / "one_machine"
    one_dir.mkdir(parents=True, exist_ok=True)
    from so101_deploy.sim.synthetic import write_video  # noqa: PLC0415

    video = write_video(one_dir / "camera.mp4", frames=90)
    with emulated_bus(one_dir) as (link, bus_log):
        env = graph_env(models, one_dir, video, link, 0, device=device)
        flow = prepare(flow_file(FLOW, flows), one_dir / "dataflow.one-machine.yml", env=env,
                       extra_nodes=[monitor_node(flows, one_dir, machine=None)])
        df = load(flow)
        for node in df["nodes"]:
            node.pop("deploy", None)
        flow.write_text(yaml.safe_dump(df, sort_keys=False))
        res = run_dataflow(flow, 600, log_path=one_dir / "dora.log", grace_s=120,
                           until=lambda _log: _bus_writes(bus_log, "Torque_Enable", 1), linger_s=seconds)
    result["one_machine"] = {"report": json.loads((one_dir / "monitor" / "report.json").read_text()),
                             "link": link_stats(res.log), "action_hop_ms": action_hop(res.log),
                             "returncode": res.returncode}
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    (out / "bench.md").write_text(render_bench(result))
    return result


def _lat(rep: dict[str, Any]) -> dict[str, float]:
    return rep.get("new_frame_latency_ms") or {}


def render_bench(r: dict[str, Any]) -> str:
    two, one = r["two_machines"], r["one_machine"]
    tl, ol = two["link"] or {}, one["link"] or {}
    lat2, lat1 = _lat(two["report"]), _lat(one["report"])

    def p(d: dict | None, k: str) -> str:
        return "n/a" if not d or d.get(k) is None else f"{d[k]:.1f}"

    lines = [f"# two machines on loopback vs one machine ({r['seconds']:.0f} s each after the first goal, "
             f"{r.get('device', 'cpu')})", "",
             "| | two daemons (robot + gpu), JPEG q{} | one machine, `dora run`, raw bgr8 |".format(r["jpeg_quality"]),
             "|---|---|---|",
             f"| camera frames into the gate per s | {tl.get('frames_per_s', 'n/a')} | {ol.get('frames_per_s', 'n/a')} |",
             f"| bytes per frame | {tl.get('bytes_per_frame', 'n/a')} | {ol.get('bytes_per_frame', 'n/a')} |",
             f"| image bytes per s (robot -> gpu) | {tl.get('bytes_per_s', 'n/a')} | {ol.get('bytes_per_s', 'n/a')} |",
             f"| JPEG encode ms p50 (camera) | {p(tl.get('encode_ms'), 'p50')} | - |",
             f"| JPEG decode ms p50 (gate) | {p(tl.get('decode_ms'), 'p50')} | - |",
             f"| capture -> gate ms p50 / p90 | {p(tl.get('capture_to_gate_ms'), 'p50')} / "
             f"{p(tl.get('capture_to_gate_ms'), 'p90')} | {p(ol.get('capture_to_gate_ms'), 'p50')} / "
             f"{p(ol.get('capture_to_gate_ms'), 'p90')} |",
             f"| policy -> controller ms p50 / p90 | {p(two.get('action_hop_ms'), 'p50')} / "
             f"{p(two.get('action_hop_ms'), 'p90')} | {p(one.get('action_hop_ms'), 'p50')} / "
             f"{p(one.get('action_hop_ms'), 'p90')} |",
             f"| new camera frames reaching the arm (Hz) | {two['report']['new_frame_goal_rate_hz']:.2f} | "
             f"{one['report']['new_frame_goal_rate_hz']:.2f} |",
             f"| capture -> goal ms p50 / p90 | {p(lat2, 'p50')} / {p(lat2, 'p90')} | {p(lat1, 'p50')} / "
             f"{p(lat1, 'p90')} |", ""]
    return "\n".join(lines) + "\n"


# --- what JPEG does to the observation ------------------------------------------------------------

def _jpeg_roundtrip(bgr: np.ndarray, quality: int) -> tuple[np.ndarray, int, float, float]:
    from so101_deploy.core.messages import decode, encode_jpeg_image  # noqa: PLC0415

    arr, meta = encode_jpeg_image(bgr, quality, frame_id=0, stamp_ns=0)
    msg = decode("image", arr, meta)
    return np.array(msg.data), int(meta["jpeg_bytes"]), float(meta["encode_ms"]), float(msg.meta["decode_ms"])


def _obs84(mask: np.ndarray, disparity: np.ndarray, classes: str = "real6") -> tuple[np.ndarray, np.ndarray]:
    from so101_deploy.policy.observation import build_frame  # noqa: PLC0415

    frame = build_frame(mask, disparity, classes)
    return np.asarray(frame[0]), np.asarray(frame[1])


def _compare(pairs: list[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]) -> dict[str, float]:
    """Raw vs decoded (mask, disparity) pairs -> equal seg pixels of the 84x84 observation and the
    correlation of its disparity channel, plus the same at full resolution."""
    seg84, disp84, seg_full, disp_full = [], [], [], []
    for (m0, d0), (m1, d1) in pairs:
        s0, q0 = _obs84(m0, d0)
        s1, q1 = _obs84(m1, d1)
        seg84.append(float(np.mean(s0 == s1)))
        seg_full.append(float(np.mean(m0 == m1)))
        disp84.append(_corr(q0, q1))
        disp_full.append(_corr(d0, d1))
    return {"seg_equal_84": round(float(np.mean(seg84)), 5), "seg_equal_84_min": round(float(np.min(seg84)), 5),
            "disp_corr_84": round(float(np.mean(disp84)), 5), "disp_corr_84_min": round(float(np.min(disp84)), 5),
            "seg_equal_full": round(float(np.mean(seg_full)), 5), "disp_corr_full": round(float(np.mean(disp_full)), 5)}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def jpeg_effect(qualities: tuple[int, ...], frames: list[np.ndarray], models: Mapping[str, Path] | None,
                oracle_frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None, device: str = "cpu",
                depth_size: int = 266) -> dict[str, Any]:
    """Per quality: bytes per frame, encode/decode ms, and the observation effect with the models
    (``models``: seg, depth; the fixture weights or real checkpoints) and with the oracle.

    ``oracle_frames``: (bgr, sim mask, sim disparity) triples rendered by the simulator (see
    :func:`_oracle_effect`: the oracle reads the scene, not the pixels, so it is the ground truth that a
    pixel-based segmenter is compared on)."""
    seg = depth = None
    if models is not None:
        from so101_deploy.perception.depth import DepthModel  # noqa: PLC0415
        from so101_deploy.perception.seg import SegModel  # noqa: PLC0415

        seg = SegModel.load(models["seg"], device=device, backend="torch")
        depth = DepthModel.load(models["depth"], device=device, backend="torch", input_size=depth_size)
    out: dict[str, Any] = {"frames": len(frames), "qualities": {}}
    raw_results = [(seg.predict(f), depth.predict(f)) for f in frames] if seg is not None else None
    out["raw_bytes_per_frame"] = int(frames[0].nbytes)
    for q in qualities:
        row: dict[str, Any] = {}
        decoded, sizes, enc, dec = [], [], [], []
        for f in frames:
            img, n, e, d = _jpeg_roundtrip(f, q)
            decoded.append(img)
            sizes.append(n)
            enc.append(e)
            dec.append(d)
        row.update(bytes_per_frame=int(np.mean(sizes)), mb_per_s_at_30fps=round(np.mean(sizes) * 30 / 1e6, 3),
                   encode_ms_p50=round(float(np.median(enc)), 3), decode_ms_p50=round(float(np.median(dec)), 3),
                   psnr_db=round(float(np.mean([_psnr(a, b) for a, b in zip(frames, decoded)])), 2))
        if raw_results is not None:
            pairs = [(r, (seg.predict(img), depth.predict(img))) for r, img in zip(raw_results, decoded)]
            row["models"] = _compare(pairs)
        if oracle_frames:
            row["oracle"] = _oracle_effect(oracle_frames, q)
        out["qualities"][q] = row
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _oracle_effect(oracle_frames, quality: int) -> dict[str, float]:
    """On frames the simulator rendered, with the oracle's exact mask as ground truth: a colour
    segmenter (each pixel -> the sim class of the nearest per-class mean colour, the means taken on the
    raw frame under the oracle's mask) labels the raw and the decoded frame; the fraction of equal labels
    in the 84x84 observation says how much class evidence JPEG moves, and the mean absolute pixel error
    on the cube and the fingers (the classes the policy needs) how much the frame itself changed."""
    names = ("other", "floor", "cube", "static_finger", "moving_finger")
    equal84, err = [], {}
    for bgr, mask, disp in oracle_frames:
        img, *_ = _jpeg_roundtrip(bgr, quality)
        present = [c for c in range(len(names)) if (mask == c).any()]
        means = np.stack([bgr[mask == c].reshape(-1, 3).mean(axis=0) for c in present])

        def label(x: np.ndarray) -> np.ndarray:
            d = ((x.reshape(-1, 1, 3).astype(np.float32) - means[None].astype(np.float32)) ** 2).sum(axis=2)
            return np.asarray(present, np.uint8)[d.argmin(axis=1)].reshape(mask.shape)

        s_raw, _ = _obs84(label(bgr), disp, "sim5")
        s_dec, _ = _obs84(label(img), disp, "sim5")
        equal84.append(float(np.mean(s_raw == s_dec)))
        diff = np.abs(img.astype(np.int16) - bgr.astype(np.int16)).mean(axis=2)
        for c in present:
            err.setdefault(names[c], []).append(float(diff[mask == c].mean()))
    return {"colour_seg_equal_84": round(float(np.mean(equal84)), 5),
            **{f"abs_err_{k}": round(float(np.mean(v)), 3) for k, v in err.items()}}


def oracle_frames(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` wrist frames of the simulated scene (one reset per frame, seeds ``seed..seed+n-1``: the cube
    moves) with the oracle's mask (sim 5 classes) and disparity at full size."""
    from so101_deploy.sim.oracle import OracleSeg, disparity_from_depth  # noqa: PLC0415
    from so101_deploy.sim.sim_arm import SimArm  # noqa: PLC0415

    sim = SimArm()
    oseg = OracleSeg(sim.model)
    out = []
    try:
        for i in range(n):
            sim.reset(seed + i)
            out.append((sim.render_rgb_bgr(), oseg.classes(sim.render_seg()), disparity_from_depth(sim.render_depth_m())))
    finally:
        sim.close()
    return out


def render_jpeg(r: dict[str, Any]) -> str:
    lines = [f"# JPEG over the link: what it costs and what it changes ({r['frames']} rendered sim frames, "
             f"models: {r.get('models_label', 'n/a')})", "",
             "| quality | bytes/frame | MB/s at 30 fps | encode ms p50 | decode ms p50 | PSNR dB | models: equal seg px "
             "(84x84) | models: disparity corr (84x84) | oracle: colour-seg equal px (84x84) | oracle: cube abs err |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| raw bgr8 | {r['raw_bytes_per_frame']} | {r['raw_bytes_per_frame'] * 30 / 1e6:.1f} | - | - | - | 1 | 1 | 1 | 0 |"]
    for q, row in r["qualities"].items():
        m, o = row.get("models") or {}, row.get("oracle") or {}
        lines.append(f"| {q} | {row['bytes_per_frame']} | {row['mb_per_s_at_30fps']} | {row['encode_ms_p50']} | "
                     f"{row['decode_ms_p50']} | {row['psnr_db']} | {m.get('seg_equal_84', 'n/a')} | "
                     f"{m.get('disp_corr_84', 'n/a')} | {o.get('colour_seg_equal_84', 'n/a')} | "
                     f"{o.get('abs_err_cube', 'n/a')} |")
    return "\n".join(lines) + "\n"


# --- command --------------------------------------------------------------------------------------

def configure_parser(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    f = sub.add_parser("flow", help="write the copy of dataflow.two-machines.yml a cluster starts (absolute paths "
                                    "per machine)")
    f.add_argument("--robot-root", required=True, help="the checkout's folder on the robot computer")
    f.add_argument("--gpu-root", default=None, help="the checkout's folder on the GPU host (default: --robot-root)")
    f.add_argument("-o", "--out", default="dataflow.two-machines.cluster.yml")
    add_flows_argument(f)
    j = sub.add_parser("jpeg", help="bytes, encode/decode time and the effect on the observation per JPEG quality")
    j.add_argument("--qualities", default=",".join(map(str, DEFAULT_QUALITIES)))
    j.add_argument("--frames", type=int, default=6, help="simulator frames rendered (one cube placement each)")
    j.add_argument("--seg", default=None, help="seg checkpoint (default: real-size architectures, random weights)")
    j.add_argument("--depth", default=None, help="depth model folder or .pth (with --seg)")
    j.add_argument("--depth-size", type=int, default=266)
    j.add_argument("--noise", type=float, default=0.0, help="add Gaussian sensor noise of this sigma (grey levels) "
                                                             "to the rendered frames: real cameras compress worse")
    j.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    j.add_argument("--out", default="artifacts/two-machines")
    b = sub.add_parser("bench", help="two daemons on loopback vs one machine: link bytes/s, per-hop latency, "
                                     "capture -> goal")
    b.add_argument("--seconds", type=float, default=30.0, help="measured window after the first goal, per run")
    b.add_argument("--jpeg-quality", type=int, default=None, help="default: the flow's SO101_CAMERA_JPEG_QUALITY")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    b.add_argument("--real-size", action="store_true", help="real-size seg/depth/policy architectures (random "
                                                                "weights) instead of the small fixture models")
    b.add_argument("--out", default="artifacts/two-machines")
    add_flows_argument(b)


def bench_models(out: Path, real_size: bool) -> dict[str, Path]:
    """The fixture models (small: the link and dora's path are measured, not the models), or the real-size
    architectures with random weights (what the models cost on this machine)."""
    if real_size:
        from so101_deploy.tools.bench import real_size_models  # noqa: PLC0415

        return real_size_models(out / "models")
    from so101_deploy.tools.fixtures import write_fixtures  # noqa: PLC0415

    fx = write_fixtures(out / "fixtures")
    return {"seg": fx["seg_checkpoint"], "depth": fx["depth_hf_dir"], "policy": fx["policy_snapshot"]}


def flow_quality(flows: str | Path | None) -> int:
    df = load(flow_file(FLOW, flows))
    cam = next(n for n in df["nodes"] if n["id"] == "camera")
    return int((cam.get("env") or {}).get("SO101_CAMERA_JPEG_QUALITY", 0))


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "flow":
            robot = Path(args.robot_root).expanduser()
            gpu = Path(args.gpu_root).expanduser() if args.gpu_root else robot
            for name, root in (("--robot-root", robot), ("--gpu-root", gpu)):
                if not root.is_absolute():
                    print(f"two-machines flow: error: {name} {root}: expected an absolute path (the folder on that "
                          f"machine)")
                    return 2
            out = cluster_flow(flow_file(FLOW, args.flows), Path(args.out), {"robot": robot, "gpu": gpu})
            print(f"wrote {out}: start it with `dora start {out} --coordinator-addr <robot-ip>`")
            return 0
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        if args.action == "jpeg":
            try:
                qualities = tuple(int(q) for q in args.qualities.split(","))
            except ValueError:
                print(f"two-machines jpeg: error: --qualities {args.qualities!r}: expected comma-separated ints 1-100")
                return 2
            if args.seg or args.depth:
                if not (args.seg and args.depth):
                    print("two-machines jpeg: error: --seg and --depth go together")
                    return 2
                models, label = {"seg": Path(args.seg), "depth": Path(args.depth)}, "given checkpoints"
            else:
                from so101_deploy.tools.bench import real_size_models  # noqa: PLC0415

                models, label = real_size_models(out / "models"), "real-size architectures, random weights"
            sim = oracle_frames(args.frames)
            if args.noise > 0:
                rng = np.random.default_rng(0)
                sim = [(np.clip(f + rng.normal(0, args.noise, f.shape), 0, 255).astype(np.uint8), m, d) for f, m, d in sim]
            res = jpeg_effect(qualities, [f for f, _, _ in sim], models, sim, device=args.device,
                              depth_size=args.depth_size)
            res["models_label"] = f"{label}, depth at {args.depth_size}" + (f"; sensor noise sigma {args.noise:g}"
                                                                               if args.noise > 0 else "")
            (out / "jpeg.json").write_text(json.dumps(res, indent=2))
            (out / "jpeg.md").write_text(render_jpeg(res))
            print(render_jpeg(res))
            return 0
        quality = args.jpeg_quality if args.jpeg_quality is not None else flow_quality(args.flows)
        res = bench_link(bench_models(out, args.real_size), out / "bench", args.seconds, quality, flows=args.flows,
                         device=args.device)
        print(render_bench(res))
        return 0
    except DataflowError as e:
        print(f"two-machines {args.action}: error: {e}")
        return 2
