"""Simulator speed on this machine: control steps/s without rendering, render and reset latency.

    .venv/bin/python benchmarks/sim_speed.py [--json]

Targets (issue 3): >= 100 control steps/s without rendering; a 320x240 colour+depth render < 40 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from robot_io.sim.env import TabletopSim
from robot_io.sim.tasks import sample_task
from robot_io.types import EndEffectorCommand


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--renders", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sim = TabletopSim()
    rng = np.random.default_rng(0)
    # Physics only: random small moves with the gripper toggling, as a policy would send.
    sim.reset(sample_task(rng, "move_near"), seed=0)
    commands = [
        EndEffectorCommand(delta_xyz_m=tuple(rng.uniform(-0.02, 0.02, 3)), gripper=float(rng.random() > 0.5))
        for _ in range(args.steps)
    ]
    t0 = time.perf_counter()
    for c in commands:
        sim.apply(c)
    steps_per_s = args.steps / (time.perf_counter() - t0)

    # Oracle + physics (what data generation costs per step, before rendering).
    n, t0 = 0, time.perf_counter()
    for seed in range(30):
        sim.reset(sample_task(np.random.default_rng(seed)), seed=seed)
        for _ in range(60):
            command, _plan = sim.oracle()
            if command.terminate:
                break
            sim.apply(command)
            n += 1
    oracle_elapsed = time.perf_counter() - t0

    reset_ms = []
    for seed in range(20):
        t0 = time.perf_counter()
        sim.reset(sample_task(np.random.default_rng(seed)), seed=seed)
        reset_ms.append((time.perf_counter() - t0) * 1000)

    def render_ms(w: int, h: int) -> float:
        sim.render(w, h)  # first render builds the GL context for this scene
        times = []
        for _ in range(args.renders):
            t0 = time.perf_counter()
            sim.render(w, h)
            times.append((time.perf_counter() - t0) * 1000)
        return float(np.median(times))

    result = {
        "steps_per_s_no_render": round(steps_per_s, 1),
        "oracle_steps_per_s_incl_resets": round(n / oracle_elapsed, 1),
        "render_ms_320x240_p50": round(render_ms(320, 240), 2),
        "render_ms_640x480_p50": round(render_ms(640, 480), 2),
        "reset_ms_p50": round(float(np.median(reset_ms)), 2),
        "substeps_per_control_step": sim.config.substeps,
    }
    sim.close()
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:34s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
