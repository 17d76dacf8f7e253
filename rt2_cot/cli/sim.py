"""`rt2-cot sim`: closed-loop episodes in the MuJoCo tabletop through the real control loop and shield.

With neither --instruction nor --family it runs a mixed suite cycling through every task family.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict

import numpy as np
from loguru import logger

from rt2_cot.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--instruction", help='free text the simulator can pose, e.g. "pick up the red block"'
    )
    parser.add_argument("--family", help="task family to sample (see robot_io.sim.tasks.FAMILIES)")
    parser.add_argument(
        "--split", default="train", help="train | heldout | heldout_phrasing | heldout_objects | ..."
    )
    parser.add_argument("--policy", choices=("oracle", "model"), default="oracle")
    parser.add_argument(
        "--model", default="builtin", help="builtin, a checkpoint folder or http(s)://host:port/v1"
    )
    parser.add_argument(
        "--episodes", type=int, default=None, help="default: 1 per family for a mixed run, else 1"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=80)
    parser.add_argument("--video", help="write a rollout video (.mp4) of every episode")
    parser.add_argument(
        "--realtime", action="store_true", help="run at the 10 Hz control rate instead of flat out"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _policy(args, sim):
    if args.policy == "oracle":
        from rt2_cot.oracle_policy import OraclePolicy

        return OraclePolicy(sim)
    from rt2_cot.backends import load_backend
    from rt2_cot.vla_policy import VLAPolicy

    return VLAPolicy(load_backend(args.model))


def _shield(arm):
    try:
        from robot_io.safety import SafetyLimits, SafetyShield
    except ImportError as exc:  # the shield is part of the product; without it nothing may move
        raise ConfigError(
            f"robot_io.safety is not available ({exc}); the simulator runs only behind the shield"
        ) from exc
    return SafetyShield(arm, SafetyLimits())


def _tasks(args):
    """(family label, task) per episode, deterministic in --seed."""
    from robot_io.sim.tasks import FAMILIES, sample_task, task_from_instruction

    if args.instruction and args.family:
        raise ConfigError("give --instruction or --family, not both")
    if args.family and args.family not in FAMILIES:
        raise ConfigError(f"unknown family {args.family!r}; families: {', '.join(FAMILIES)}")
    families = list(FAMILIES)
    n = (
        args.episodes
        if args.episodes is not None
        else (len(families) if not (args.instruction or args.family) else 1)
    )
    if n < 1:
        raise ConfigError("--episodes must be at least 1")
    for i in range(n):
        rng = np.random.default_rng([args.seed, i])
        if args.instruction:
            task = task_from_instruction(args.instruction, rng, args.split)
        else:
            task = sample_task(rng, args.family or families[i % len(families)], args.split)
        yield task


def run(args: argparse.Namespace) -> int:
    from robot_io.sim import make_sim_rig
    from rt2_cot.control_loop import ControlLoop
    from rt2_cot.loop_events import StepRecord

    tasks = list(_tasks(args))  # parse/validate everything before building the simulator
    sim, arm, camera = make_sim_rig()
    shield = _shield(arm)
    policy = _policy(args, sim)
    writer = None
    subscribers = []
    if args.video:
        from rt2_cot.video import VideoSubscriber, VideoWriter

        writer = VideoWriter(args.video, fps=sim.config.control_hz)
        subscribers.append(VideoSubscriber(writer, final_frame=lambda: sim.render().color))
    rate = sim.config.control_hz if args.realtime else 1e6
    results = []
    t0 = time.monotonic()
    try:
        for i, task in enumerate(tasks):
            seed = args.seed * 100003 + i
            sim.reset(task, seed=seed)
            arm.home()
            if getattr(shield, "estopped", False):
                shield.reset_estop()
            plans: list[str] = []

            def collect(event, plans=plans):
                if isinstance(event, StepRecord) and event.output.plan.strip():
                    plans.append(event.output.plan.strip().lower())

            loop = ControlLoop(
                camera,
                shield,
                policy,
                [*subscribers, collect],
                rate_hz=rate,
                max_steps=args.max_steps,
                success_fn=sim.success,
            )
            ended = loop.run_episode(task.instruction)
            success = bool(ended.success) or bool(sim.success())
            results.append(
                {
                    "family": task.family,
                    "category": task.category,
                    "instruction": task.instruction,
                    "plan": task.plan,
                    "seed": seed,
                    "success": success,
                    "steps": ended.steps,
                    "reason": ended.reason,
                    # Does the policy's first plan name the object the task is about?
                    "plan_correct": bool(plans) and task.target in plans[0],
                    "first_plan": plans[0] if plans else "",
                }
            )
            logger.info(
                f"[{i + 1}/{len(tasks)}] {task.family}: {task.instruction!r} -> {ended.reason}, success={success}, {ended.steps} steps"
            )
    finally:
        if writer is not None:
            writer.close()
        sim.close()
    elapsed = time.monotonic() - t0
    report = _report(results, elapsed, args)
    if args.json:
        print(json.dumps(report))
    else:
        for fam, row in report["by_category"].items():
            print(
                f"{fam:18s} {row['episodes']:4d} episodes  success {row['success_rate']:.2f}", file=sys.stdout
            )
        print(
            f"{'all':18s} {report['episodes']:4d} episodes  success {report['success_rate']:.2f}  mean steps {report['mean_steps']:.1f}"
        )
        if args.video:
            print(f"video: {args.video}")
    return 0


def _report(results: list[dict], elapsed: float, args) -> dict:
    by: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by[r["family"]].append(r)
    n = len(results)
    total_steps = sum(r["steps"] for r in results)
    return {
        "episodes": n,
        "success_rate": sum(r["success"] for r in results) / n if n else 0.0,
        "by_category": {
            fam: {"episodes": len(rs), "success_rate": sum(r["success"] for r in rs) / len(rs)}
            for fam, rs in by.items()
        },
        "mean_steps": total_steps / n if n else 0.0,
        "plan_accuracy": sum(r["plan_correct"] for r in results) / n if n else 0.0,
        "mean_steps_success": (
            float(np.mean([r["steps"] for r in results if r["success"]]))
            if any(r["success"] for r in results)
            else None
        ),
        "policy": args.policy,
        "model": args.model if args.policy == "model" else None,
        "split": args.split,
        "seed": args.seed,
        "duration_s": round(elapsed, 3),
        "steps_per_s": round(total_steps / elapsed, 1) if elapsed > 0 else None,
        "video": args.video,
        "results": results,
    }
