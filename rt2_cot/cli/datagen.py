"""`rt2-cot datagen --out DIR --episodes N [--seed S]`: oracle episodes + vision-language questions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for the shards (created; existing shards are kept)"
    )
    parser.add_argument("--episodes", type=int, help="number of oracle episodes to run")
    parser.add_argument(
        "--add-grounding",
        action="store_true",
        help="instead of generating: add grounded plans and pointing questions to shards in --out written "
        "before datagen recorded them (replays each episode without rendering)",
    )
    parser.add_argument(
        "--add-state",
        action="store_true",
        help="instead of generating: add the arm's state before each step (gripper opening, fingertip "
        "position) to shards in --out written before datagen recorded it (replays each episode)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed; run several seeds in parallel into one folder"
    )
    parser.add_argument("--episodes-per-shard", type=int, default=50)
    parser.add_argument("--max-steps", type=int, default=80, help="cap on steps per episode")
    parser.add_argument(
        "--noisy-episodes",
        type=float,
        default=0.5,
        help="fraction of episodes whose executed steps are sometimes jittered (labels stay the oracle's; DART)",
    )
    parser.add_argument(
        "--decoy-episodes",
        type=float,
        default=0.0,
        help="fraction of episodes that start with 1-5 moves toward somewhere else (another object or a "
        "random spot) before the oracle takes over; labels stay the oracle's, so the arm's heading "
        "does not give the target away",
    )
    parser.add_argument(
        "--random-start",
        type=float,
        default=0.0,
        help="fraction of episodes whose gripper starts (open) at a random place over the table instead of home",
    )
    parser.add_argument(
        "--start-frames-only",
        action="store_true",
        help="record only each scene's first frame (where the first plan is written from the image alone): "
        "one scene per frame, ~19x the layouts per frame of full episodes",
    )
    parser.add_argument(
        "--point-at-every-tile",
        action="store_true",
        help="every questioned frame also asks where each tile is ('where is the number 7'), not only "
        "where one random item is",
    )
    parser.add_argument(
        "--families",
        nargs="+",
        metavar="FAMILY",
        help="sample tasks only from these families (uniformly); default: every family",
    )
    parser.add_argument(
        "--driver",
        metavar="MODEL",
        help="DAgger: a checkpoint folder (or 'builtin') that acts in --driver-episodes of the episodes "
        "with its own plans, through the shield; every visited frame keeps the oracle's label",
    )
    parser.add_argument(
        "--driver-episodes",
        type=float,
        default=1.0,
        help="with --driver: fraction of episodes the model drives (default 1.0)",
    )
    parser.add_argument(
        "--driver-step-prob",
        type=float,
        default=1.0,
        help="with --driver: in a driven episode, the chance each step is the model's (else the oracle's)",
    )
    parser.add_argument(
        "--question-split",
        metavar="SPLIT",
        help="write question scenes instead of episodes: scenes laid out as this held-out split "
        "(heldout_objects, heldout_background, ...) with only vision-language questions about their "
        "first frame, never an instruction, plan or action (RT-2's 'unseen in robot data')",
    )
    parser.add_argument(
        "--no-shield",
        action="store_true",
        help="execute the oracle's commands unclipped (how data was written before session 3; the "
        "console and eval always act through the safety shield, so new data should too)",
    )


def run(args: argparse.Namespace) -> int:
    from rt2_cot.data.datagen import DatagenConfig, generate
    from rt2_cot.errors import ConfigError

    if args.add_grounding:
        from rt2_cot.data.grounding import add_grounding

        print(json.dumps({"out": str(args.out), **add_grounding(args.out)}), file=sys.stdout)
        return 0
    if args.add_state:
        from rt2_cot.data.datagen import add_state

        print(json.dumps({"out": str(args.out), **add_state(args.out)}), file=sys.stdout)
        return 0
    if args.episodes is None or args.episodes < 1:
        raise ConfigError("--episodes must be at least 1")
    if not 0.0 <= args.noisy_episodes <= 1.0:
        raise ConfigError("--noisy-episodes is a fraction between 0 and 1")
    if not 0.0 <= args.decoy_episodes <= 1.0:
        raise ConfigError("--decoy-episodes is a fraction between 0 and 1")
    if not 0.0 <= args.random_start <= 1.0:
        raise ConfigError("--random-start is a fraction between 0 and 1")
    for name in ("driver_episodes", "driver_step_prob"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} is a fraction between 0 and 1")
    if args.driver and args.no_shield:
        raise ConfigError("--driver acts through the safety shield; it cannot be combined with --no-shield")
    if args.driver and args.start_frames_only:
        raise ConfigError("--driver needs whole episodes; it cannot be combined with --start-frames-only")
    if args.driver:
        from rt2_cot.backends import is_builtin_model

        if not is_builtin_model(args.driver):  # also False for a server URL
            raise ConfigError(
                f"--driver must be a local rt2-cot-mini checkpoint or 'builtin', got {args.driver!r}"
            )
    if args.question_split:
        from robot_io.sim.tasks import SPLITS

        held = [name for name in SPLITS if name not in ("train", "heldout_phrasing")]
        if args.question_split not in held:
            raise ConfigError(
                f"--question-split must be one of {', '.join(held)}, got {args.question_split!r}"
            )
        if args.driver:
            raise ConfigError("--question-split writes questions only; it cannot be combined with --driver")
    if args.families:
        from robot_io.sim.tasks import FAMILIES

        unknown = [f for f in args.families if f not in FAMILIES]
        if unknown:
            raise ConfigError(f"unknown task families {', '.join(unknown)}; families: {', '.join(FAMILIES)}")
    cfg = DatagenConfig(
        episodes=args.episodes,
        seed=args.seed,
        episodes_per_shard=args.episodes_per_shard,
        max_steps=args.max_steps,
        noisy_episodes=args.noisy_episodes,
        decoy_episodes=args.decoy_episodes,
        random_start=args.random_start,
        start_frames_only=args.start_frames_only,
        families=tuple(args.families or ()),
        point_at_every_tile=args.point_at_every_tile,
        shielded=not args.no_shield,
        driver=args.driver or "",
        driver_episodes=args.driver_episodes if args.driver else 0.0,
        driver_step_prob=args.driver_step_prob,
        question_split=args.question_split or "",
    )
    totals = generate(args.out, cfg)
    print(json.dumps({"out": str(args.out), **totals}), file=sys.stdout)
    return 0
