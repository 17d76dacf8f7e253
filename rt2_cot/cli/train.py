"""`rt2-cot train --config FILE --out DIR`: co-fine-tune the built-in model (re-run to resume)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="training config YAML (see configs/default.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="run folder: state.pt, loss.png, checkpoint/")
    parser.add_argument("--steps", type=int, default=None, help="override the config's number of steps")
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="do not train: export the latest state of the run in --out as a checkpoint to DIR",
    )


def run(args: argparse.Namespace) -> int:
    from rt2_cot.errors import ConfigError
    from rt2_cot.training import TrainConfig, export_run, train

    if args.export is not None:
        print(json.dumps(export_run(args.out, args.export)))
        return 0
    if args.config is None:
        raise ConfigError("--config is required to train (or --export DIR to export a run)")
    cfg = TrainConfig.from_yaml(args.config)
    if args.steps is not None:
        cfg.steps = args.steps
    summary = train(cfg, args.out)
    print(json.dumps(summary))
    return 0
