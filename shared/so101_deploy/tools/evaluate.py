"""``so101-deploy evaluate``: a checkpoint (or the scripted policy) on training's lift task in the simulator,
through this project's own graph under ``dora run``, before the real arm moves.

Each configuration is one ``dora run`` of a sim flow in lockstep (frame -> action -> control step(s) ->
frame, as training): ``dataflow.sim-oracle.yml`` (the simulator's own mask and disparity, as training fed
the policy), ``dataflow.sim.yml`` (the learned seg and depth on rendered frames) or
``dataflow.sim-scripted.yml`` (the privileged scripted policy).  The sim arm runs N seeded episodes with
training's reset, 200-step limit and success rule, and writes one JSON line per episode; this command
summarises them: success rate with its 95 % Wilson interval, lift height and time to grasp per episode,
a video per episode, ``report.json`` and ``summary.md``.

Deployment conditions are knobs (so101_deploy.sim.evaluation, so101_deploy.sim.variation): ``--latency``
(control steps of 20 ms between a frame and its goal), ``--action-every`` (a new action every m steps),
``--noise`` (oracle perception noise), ``--vary`` (camera pose, lighting, cube colour and size per episode).
``--sweep KNOB=V1,V2,...`` runs one configuration per value and adds a table and ``sweep.png``;
``--preset cpu`` sets latency and rate from this machine's benchmark (``so101-deploy bench``).
Exit code 0 when every configuration finished its episodes, 1 when one did not, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import median
from typing import Any

from so101_deploy.core.dataflow import DataflowError, add_flows_argument, flow_file, prepare, run_dataflow
from so101_deploy.sim.evaluation import CONTROL_DT_S, FINISHED_LINE, read_jsonl, wilson_interval
from so101_deploy.sim.sim_arm import EPISODE_STEPS
from so101_deploy.sim.variation import known_knobs, parse_variation

FLOWS = {"oracle": "dataflow.sim-oracle.yml", "learned": "dataflow.sim.yml", "scripted": "dataflow.sim-scripted.yml"}
KNOBS = ("latency", "action_every", "noise")  # plus every SceneVariation field
BENCH_MD_LINE = re.compile(r"this project's dataflow\.yml[^\n]*?\*\*([0-9.]+) Hz\*\*[^\n]*?capture-to-goal latency "
                           r"p50 ([0-9.]+) ms")


@dataclass(frozen=True)
class Knobs:
    latency: int = 0  # control steps between a frame and its goal
    action_every: int = 1  # a new action every N control steps
    noise: float = 0.0  # oracle perception noise (fraction)
    variation: dict = field(default_factory=dict)  # SceneVariation field -> amplitude

    def label(self) -> str:
        parts = [f"latency={self.latency}", f"action_every={self.action_every}"]
        if self.noise:
            parts.append(f"noise={self.noise:g}")
        parts += [f"{k}={v:g}" for k, v in sorted(self.variation.items()) if v]
        return ",".join(parts)

    def with_value(self, knob: str, value: float) -> "Knobs":
        if knob in KNOBS:
            return replace(self, **{knob: value})
        return replace(self, variation={**self.variation, knob: value})

    def sim_env(self) -> dict[str, str]:
        env = {"SO101_SIM_LATENCY_STEPS": str(self.latency), "SO101_SIM_ACTION_EVERY": str(self.action_every),
               "SO101_SIM_PERCEPTION_NOISE": repr(float(self.noise))}
        spec = ",".join(f"{k}={v!r}" for k, v in sorted(self.variation.items()) if v)
        if spec:
            env["SO101_SIM_VARIATION"] = spec
        return env


def parse_knob_value(knob: str, text: str) -> float | int:
    """One value of a knob, checked against what the sim accepts."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{knob}: expected a number, got {text!r}") from None
    if knob in ("latency", "action_every"):
        if value != int(value) or value < (1 if knob == "action_every" else 0):
            raise ValueError(f"{knob}: expected an integer number of 20 ms control steps "
                             f"(>= {1 if knob == 'action_every' else 0}), got {text!r}")
        return int(value)
    if knob == "noise" and not 0.0 <= value <= 1.0:
        raise ValueError(f"noise: expected a fraction in [0, 1], got {text!r}")
    if knob not in KNOBS:
        parse_variation(f"{knob}={value!r}")  # raises naming the known fields
    return value


def parse_sweep(text: str) -> tuple[str, list]:
    """``latency=0,1,2,4`` -> ("latency", [0, 1, 2, 4])."""
    knob, sep, values = text.partition("=")
    knob = knob.strip()
    known = KNOBS + tuple(known_knobs())
    if not sep or knob not in known:
        raise ValueError(f"--sweep: expected KNOB=V1,V2,... with KNOB one of {', '.join(known)}; got {text!r}")
    vals = [parse_knob_value(knob, v.strip()) for v in values.split(",") if v.strip()]
    if not vals:
        raise ValueError(f"--sweep {knob}: no values")
    return knob, vals


def cpu_preset(bench_json: Path | None = None, bench_md: Path | None = None) -> tuple[Knobs, str]:
    """Latency and control rate of this project's graph as ``so101-deploy bench`` measured them: the
    capture-to-goal p50 in 20 ms steps and a new action every round(50 Hz / rate) steps."""
    rate = p50 = None
    source = None
    if bench_json is not None and bench_json.exists():
        g = json.loads(bench_json.read_text()).get("graph") or {}
        rate = g.get("control_rate_hz")
        p50 = ((g.get("report") or {}).get("new_frame_latency_ms") or {}).get("p50")
        source = str(bench_json)
    if (rate is None or p50 is None) and bench_md is not None and bench_md.exists():
        m = BENCH_MD_LINE.search(bench_md.read_text())
        if m:
            rate, p50, source = float(m.group(1)), float(m.group(2)), str(bench_md)
    if not rate or p50 is None or not (math.isfinite(rate) and math.isfinite(p50)):
        raise ValueError(f"--preset cpu: no graph rate and latency in {bench_json} or {bench_md}; run "
                         f"`so101-deploy bench` first (or pass --bench-json)")
    knobs = Knobs(latency=max(0, round(p50 / 1000 / CONTROL_DT_S)), action_every=max(1, round(1 / CONTROL_DT_S / rate)))
    note = (f"preset cpu from {source}: {rate:g} Hz of new-frame goals -> a new action every {knobs.action_every} "
            f"steps; capture-to-goal p50 {p50:g} ms -> latency {knobs.latency} steps")
    return knobs, note


def summarise(rows: list[dict], wall_s: float | None = None) -> dict[str, Any]:
    n = len(rows)
    wins = sum(bool(r["success"]) for r in rows)
    lo, hi = wilson_interval(wins, n)
    grasp = [r["time_to_grasp_s"] for r in rows if r.get("time_to_grasp_s") is not None]
    lift = [r["lift_height_m"] for r in rows]
    policy_steps = sum(r.get("policy_steps", 0) for r in rows)
    episode_wall = sum(r.get("wall_s", 0.0) for r in rows)
    return {"episodes": n, "successes": wins, "success_rate": round(wins / n, 4) if n else None,
            "ci95": [round(lo, 4), round(hi, 4)],
            "mean_lift_height_m": round(sum(lift) / n, 4) if n else None,
            "median_time_to_grasp_s": round(median(grasp), 3) if grasp else None, "grasped": len(grasp),
            "policy_steps": policy_steps,
            "policy_steps_per_s": round(policy_steps / episode_wall, 2) if episode_wall > 0 else None,
            "control_steps_per_s": round(sum(r["steps"] for r in rows) / episode_wall, 2) if episode_wall > 0 else None,
            "wall_s": round(wall_s, 1) if wall_s is not None else None}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="a training snapshot (.pt), 'scripted' (the privileged scripted "
                   "lift) or 'fixture' (the project's random-weight snapshot: runs the harness, does not lift)")
    p.add_argument("--episodes", type=int, default=10, help="seeded episodes per configuration (default 10)")
    p.add_argument("--perception", choices=("oracle", "learned"), default="oracle",
                   help="oracle: the simulator's mask and disparity, as training; learned: seg + depth on rendered frames")
    p.add_argument("--episode-steps", type=int, default=EPISODE_STEPS,
                   help=f"control steps per episode (default {EPISODE_STEPS}, training's; fewer only for a quick check "
                        f"of the harness: success figures are then not training's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (then +1 per episode)")
    p.add_argument("--latency", type=int, default=None, help="control steps (20 ms) from a frame to its goal (default 0)")
    p.add_argument("--action-every", type=int, default=None, help="a new action every N control steps (default 1: 50 Hz)")
    p.add_argument("--noise", type=float, default=None, help="oracle perception noise, a fraction (default 0)")
    p.add_argument("--vary", default="", help="scene variation per episode, e.g. camera_pos_m=0.005,light_frac=0.3")
    p.add_argument("--sweep", default=None, metavar="KNOB=V1,V2,...", help="one configuration per value, e.g. latency=0,1,2,4")
    p.add_argument("--preset", choices=("cpu",), default=None,
                   help="cpu: latency and control rate of this machine's CPU graph from the bench report")
    p.add_argument("--bench-json", type=Path, default=None,
                   help="the bench.json of `so101-deploy bench` (default: artifacts/bench/bench.json, else docs/bench-cpu.md)")
    p.add_argument("--seg-checkpoint", default=None, help="learned perception: the seg checkpoint (default: fixture)")
    p.add_argument("--depth-model", default=None, help="learned perception: the depth model folder (default: fixture)")
    p.add_argument("--out", default="artifacts/evaluate", help="where reports, videos and logs go")
    p.add_argument("--no-video", action="store_true", help="no video per episode (saves ~10 %% of the time)")
    p.add_argument("--timeout-s", type=float, default=None,
                   help="the longest one configuration may run (default: 60 s + 0.25 s per control step, x4 for learned)")
    add_flows_argument(p)


@dataclass
class Plan:
    flow: Path
    policy: str
    policy_sha256: str | None
    perception: str
    configs: list[Knobs]
    sweep_knob: str | None
    notes: list[str]


def make_plan(args: argparse.Namespace) -> Plan:
    """Everything checked before anything runs: a wrong argument is one line now, not after minutes."""
    from so101_deploy.tools.demo import ensure_fixtures, workspace  # noqa: PLC0415

    if args.episodes < 1:
        raise ValueError("--episodes: expected >= 1")
    if args.episode_steps < 1:
        raise ValueError("--episode-steps: expected >= 1 control steps")
    notes = []
    if args.episode_steps != EPISODE_STEPS:
        notes.append(f"episodes of {args.episode_steps} control steps, not training's {EPISODE_STEPS}: a check of the "
                     f"harness, not training's success rate")
    base = Knobs()
    if args.preset == "cpu":
        work = workspace()
        bench_json = args.bench_json or (work / "artifacts" / "bench" / "bench.json")
        base, note = cpu_preset(bench_json, (work / "docs" / "bench-cpu.md"))
        notes.append(note)
    if args.latency is not None:
        base = base.with_value("latency", parse_knob_value("latency", str(args.latency)))
    if args.action_every is not None:
        base = base.with_value("action_every", parse_knob_value("action_every", str(args.action_every)))
    if args.noise is not None:
        base = base.with_value("noise", parse_knob_value("noise", str(args.noise)))
    if args.vary:
        base = replace(base, variation={k: v for k, v in parse_variation(args.vary).as_dict().items() if v})
    sweep_knob, configs = None, [base]
    if args.sweep:
        sweep_knob, values = parse_sweep(args.sweep)
        configs = [base.with_value(sweep_knob, v) for v in values]
    policy = args.policy
    if policy == "scripted":
        if args.perception == "learned":
            raise ValueError("--policy scripted reads the cube position from the simulator; --perception applies "
                             "to a checkpoint (use --policy CHECKPOINT or fixture)")
        if any(c.noise for c in configs):
            raise ValueError("--noise perturbs the oracle's mask and disparity, which the scripted policy does not see")
        flow, sha = FLOWS["scripted"], None
    else:
        if policy == "fixture":
            paths = ensure_fixtures(workspace() / "artifacts" / "fixtures")
            policy = str(paths["policy_snapshot"])
        ckpt = Path(policy).expanduser().resolve()
        if not ckpt.is_file():
            raise ValueError(f"--policy: expected a training snapshot file, 'scripted' or 'fixture'; no file {ckpt}")
        policy, sha = str(ckpt), file_sha256(ckpt)
        if args.perception == "learned" and any(c.noise for c in configs):
            raise ValueError("--noise perturbs the oracle's mask and disparity; the learned perception has its own errors")
        flow = FLOWS[args.perception]
    return Plan(flow_file(flow, args.flows), policy, sha, "privileged" if args.policy == "scripted" else args.perception,
                configs, sweep_knob, notes)


def node_env(plan: Plan, knobs: Knobs, args: argparse.Namespace, run_dir: Path) -> dict[str, dict[str, str]]:
    from so101_deploy.tools.demo import ensure_fixtures, workspace  # noqa: PLC0415

    sim = {"SO101_SIM_SEED": str(args.seed), "SO101_SIM_EPISODES": str(args.episodes),
           "SO101_SIM_EPISODE_STEPS": str(args.episode_steps), "SO101_SIM_STEP_ON": "goal",
           "SO101_SIM_RENDER_EVERY": "1", "SO101_SIM_REPORT": str(run_dir / "episodes.jsonl"),
           # a stalled lockstep loop re-sends its frame after max(this, 4 x the median cycle); the flows'
           # backpressure keeps messages from being lost, and a re-send (the policy and controller see one
           # frame twice) makes an episode differ from its rerun, so only a real stall should cause one
           "SO101_SIM_RESEND_S": "2.0", **knobs.sim_env()}
    if not args.no_video:
        sim["SO101_SIM_VIDEO_DIR"] = str(run_dir / "videos")
    # lockstep: the safety filter's slow start and watchdog count simulated time (reproducible episodes; a
    # slow step is not a stalled robot)
    env = {"sim_arm": sim, "controller": {"SO101_WATCHDOG_S": "10.0", "SO101_CLOCK": "sim"}}
    if plan.policy != "scripted":
        env["policy"] = {"SO101_POLICY_CHECKPOINT": plan.policy}
    if plan.perception == "learned":
        fx = ensure_fixtures(workspace() / "artifacts" / "fixtures")
        env["seg"] = {"SO101_SEG_CHECKPOINT": args.seg_checkpoint or str(fx["seg_checkpoint"])}
        env["depth"] = {"SO101_DEPTH_MODEL": args.depth_model or str(fx["depth_hf_dir"])}
    return env


def run_config(plan: Plan, knobs: Knobs, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    from so101_deploy.tools.demo import workspace  # noqa: PLC0415

    run_dir.mkdir(parents=True, exist_ok=True)
    report = run_dir / "episodes.jsonl"
    report.unlink(missing_ok=True)  # a rerun into the same folder starts over
    flow = prepare(plan.flow, run_dir / "flow.yml", env=node_env(plan, knobs, args, run_dir), search=(workspace(),))
    # a floor of 4 control steps per second (the fast renderer does ~10x that), x4 for learned perception on a CPU
    timeout = args.timeout_s or (60 + args.episodes * args.episode_steps / 4) * (4 if plan.perception == "learned" else 1)
    t0 = time.monotonic()
    res = run_dataflow(flow, timeout, log_path=run_dir / "dora.log", until=lambda log: FINISHED_LINE in log,
                       linger_s=0.5)
    wall = time.monotonic() - t0
    rows = read_jsonl(report)
    if len(rows) < args.episodes:  # say why here, not only in the log file
        errors = [ln for ln in res.log.splitlines() if re.search(r"\] error: |Error: |did not stop", ln)]
        for ln in errors[-5:]:
            print(f"[evaluate]   {ln.strip()[:300]}", flush=True)
    return {"knobs": {"latency": knobs.latency, "action_every": knobs.action_every, "noise": knobs.noise,
                      "variation": knobs.variation},
            "label": knobs.label(), "complete": len(rows) >= args.episodes, "dora_returncode": res.returncode,
            "log": str(run_dir / "dora.log"), "summary": summarise(rows, wall), "episodes": rows}


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# Evaluation in the simulator", "",
             f"- command: `{report['command']}`",
             f"- policy: `{report['policy']}`" + (f" (sha256 {report['policy_sha256'][:16]}...)"
                                                  if report.get("policy_sha256") else ""),
             f"- perception: {report['perception']}; flow `{Path(report['flow']).name}` in lockstep; "
             f"{report['episodes']} episodes per configuration, seeds {report['seed']}..{report['seed'] + report['episodes'] - 1}",
             f"- task: training's lift (reset stage 3, {report['episode_steps']} control steps of 20 ms, success = grasped and "
             f"cube above 0.08 m for 10 steps); commit {report.get('commit') or 'unknown'}"]
    lines += [f"- {n}" for n in report.get("notes", [])]
    lines += ["", "| configuration | success | 95 % CI | mean lift m | median time to grasp s | policy steps/s | wall s |",
              "|---|---|---|---|---|---|---|"]
    for c in report["configs"]:
        s = c["summary"]
        rate = f"{s['successes']}/{s['episodes']}" + ("" if c["complete"] else " (INCOMPLETE)")
        lines.append(f"| {c['label']} | {rate} | {s['ci95'][0]:.2f}-{s['ci95'][1]:.2f} | {s['mean_lift_height_m']} | "
                     f"{s['median_time_to_grasp_s']} | {s['policy_steps_per_s']} | {s['wall_s']} |")
    if report.get("plot"):
        lines += ["", f"![success against {report['sweep_knob']}]({Path(report['plot']).name})"]
    for c in report["configs"]:
        lines += ["", f"## {c['label']}", "", "| seed | success | steps | lift m | time to grasp s | video |",
                  "|---|---|---|---|---|---|"]
        for r in c["episodes"]:
            video = Path(r["video"]).relative_to(Path(report["out"])) if r.get("video") else "-"
            lines.append(f"| {r['seed']} | {'yes' if r['success'] else 'no'} | {r['steps']} | {r['lift_height_m']} | "
                         f"{r['time_to_grasp_s'] if r['time_to_grasp_s'] is not None else '-'} | {video} |")
    lines += ["", "Reproduce one episode: the same command with `--seed SEED --episodes 1` (each episode's reset, "
              "scene variation and noise come from its seed alone)."]
    return "\n".join(lines) + "\n"


def plot_sweep(report: dict[str, Any], path: Path) -> Path:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    knob = report["sweep_knob"]
    xs, ys, lo, hi = [], [], [], []
    for c in report["configs"]:
        k = c["knobs"]
        xs.append(k[knob] if knob in k else k["variation"].get(knob, 0.0))
        s = c["summary"]
        ys.append(s["success_rate"] or 0.0)
        lo.append(ys[-1] - s["ci95"][0])
        hi.append(s["ci95"][1] - ys[-1])
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(knob + (" (control steps of 20 ms)" if knob in ("latency", "action_every") else ""))
    ax.set_ylabel("success rate (95 % CI)")
    ax.set_title(f"{Path(report['policy']).name}, {report['perception']}, {report['episodes']} episodes each", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    try:
        plan = make_plan(args)
    except (ValueError, DataflowError) as e:
        print(f"evaluate: error: {e}")
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": "so101-deploy evaluate " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        "policy": plan.policy, "policy_sha256": plan.policy_sha256, "perception": plan.perception,
        "flow": str(plan.flow), "episodes": args.episodes, "episode_steps": args.episode_steps, "seed": args.seed, "commit": git_commit(),
        "mujoco_gl": os.environ.get("MUJOCO_GL"), "sweep_knob": plan.sweep_knob, "notes": plan.notes,
        "out": str(out), "configs": []}
    for note in plan.notes:
        print(f"[evaluate] {note}", flush=True)
    for i, knobs in enumerate(plan.configs):
        run_dir = out / (f"{i:02d}_{knobs.label().replace(',', '_')}" if len(plan.configs) > 1 else "run")
        print(f"[evaluate] {knobs.label()}: {args.episodes} episodes of {Path(plan.policy).name} "
              f"({plan.perception}) ...", flush=True)
        c = run_config(plan, knobs, args, run_dir)
        report["configs"].append(c)
        s = c["summary"]
        print(f"[evaluate]   success {s['successes']}/{s['episodes']} (95 % CI {s['ci95'][0]:.2f}-{s['ci95'][1]:.2f}), "
              f"{s['policy_steps_per_s']} policy steps/s, {s['wall_s']} s"
              + ("" if c["complete"] else f"; INCOMPLETE, see {c['log']}"), flush=True)
    if plan.sweep_knob:
        report["plot"] = str(plot_sweep(report, out / "sweep.png"))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    md = render_markdown(report)
    (out / "summary.md").write_text(md)
    print(md)
    print(f"[evaluate] report: {out / 'report.json'}  summary: {out / 'summary.md'}")
    return 0 if all(c["complete"] for c in report["configs"]) else 1
