"""`rt2-cot` entry point. One explicit registry of subcommands, each a module with
`add_arguments(parser)` and `run(args) -> int`, imported only when chosen so `--help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). Order is the order `rt2-cot --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "act": ("rt2_cot.cli.act", "one observation + instruction -> streamed plan and decoded action"),
    "cameras": (
        "rt2_cot.cli.cameras",
        "list cameras or probe a source (live, recording, webcam, folder, sim)",
    ),
    "sim": ("rt2_cot.cli.sim", "run closed-loop episodes in the MuJoCo tabletop"),
    "datagen": ("rt2_cot.cli.datagen", "write oracle episodes and vision-language examples for training"),
    "train": ("rt2_cot.cli.train", "train the built-in model from a config (resumable)"),
    "eval": ("rt2_cot.cli.eval", "run a reasoning test suite closed loop in the simulator"),
    "bench": ("rt2_cot.cli.bench", "measure time to first token, per-step latency and control rates"),
    "serve": ("rt2_cot.cli.serve", "serve a model behind an OpenAI-compatible API"),
    "session": ("rt2_cot.cli.session", "check, list and export recorded sessions"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rt2-cot", description="RT-2-style VLA runtime with chain-of-thought plans"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    from loguru import logger

    from robot_io.errors import RobotIOError
    from rt2_cot.errors import Rt2CotError

    argv = sys.argv[1:] if argv is None else argv
    top = build_parser()
    args, rest = top.parse_known_args(argv)
    if args.command is None:
        top.print_help(sys.stderr)
        return 2
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if args.verbose else os.environ.get("RT2_LOG_LEVEL", "INFO"))
    module = importlib.import_module(COMMANDS[args.command][0])
    parser = argparse.ArgumentParser(prog=f"rt2-cot {args.command}", description=COMMANDS[args.command][1])
    module.add_arguments(parser)
    sub_args = parser.parse_args(rest)
    try:
        return int(module.run(sub_args) or 0)
    except (Rt2CotError, RobotIOError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
