"""``so101-deploy sim-lift``: the scripted cube lift in the MuJoCo sim through the controller (IK)
and the safety filter, in one process (:func:`so101_deploy.sim.scripted_policy.run_scripted_episodes`).

Prints one line per seeded episode and the success rate; ``--timing`` adds the render and physics
cost on this machine.  Exit code 0 when at least 80 % of the episodes lift the cube, else 1.
"""

from __future__ import annotations

import argparse
import os
import time

from so101_deploy.sim.scripted_policy import measure_sim, run_scripted_episodes


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=10, help="seeded episodes to run (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (then +1 each)")
    parser.add_argument("--timing", action="store_true",
                        help="also measure render time per frame (rgb/seg/depth 640x480) and physics per step")


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        print("--episodes must be >= 1")
        return 2
    t0 = time.perf_counter()
    results = run_scripted_episodes(args.episodes, seed=args.seed)
    wall = time.perf_counter() - t0
    for r in results:
        print(f"seed {r['seed']}: {'success' if r['success'] else 'FAIL'} after {r['steps']} steps, "
              f"cube max z {r['max_cube_z_m']:.3f} m")
    wins = sum(r["success"] for r in results)
    print(f"success {wins}/{len(results)} ({wall:.1f} s wall)")
    if args.timing:
        t = measure_sim()
        print(f"MUJOCO_GL={os.environ.get('MUJOCO_GL', '(unset)')}: render rgb {t['render_rgb_ms']:.1f} ms, "
              f"seg {t['render_seg_ms']:.1f} ms, depth {t['render_depth_ms']:.1f} ms per 640x480 frame; "
              f"physics {t['physics_step_ms']:.2f} ms per control step (10 x 2 ms)")
    return 0 if wins >= 0.8 * len(results) else 1
