"""`rt2-cot act`: one image + instruction -> streamed plan and decoded action.

The plan streams to the terminal as it is generated (to stderr with --json, so stdout carries exactly
one JSON object). Inputs are checked before the model loads, so a bad path fails in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

import numpy as np

from rt2_cot.errors import ActionParseError, Rt2CotError
from rt2_cot.events import ActionTokenEvent, Event, PlanDelta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="builtin", help="builtin, a checkpoint folder, or http(s)://host:port/v1"
    )
    parser.add_argument("--image", required=True, type=Path, help="colour image (PNG/JPEG/...)")
    parser.add_argument(
        "--depth", type=Path, help="aligned depth: .npy (float metres or uint16 mm) or 16-bit PNG (mm)"
    )
    parser.add_argument("--depth-scale", type=float, default=0.001, help="metres per unit of integer depth")
    parser.add_argument("--instruction", required=True, help='e.g. "pick up the rock"')
    parser.add_argument(
        "--prompt", default="cot", choices=["cot", "plain"], help="prompt template (default cot)"
    )
    parser.add_argument("--plan", default=None, help="given plan: skip planning, generate only the action")
    parser.add_argument(
        "--gripper",
        type=float,
        default=None,
        help="the arm's gripper opening 0..1, for models trained with it (default: open)",
    )
    parser.add_argument(
        "--gripper-command",
        type=float,
        default=None,
        help="the opening the previous step commanded 0..1, for models told which way the gripper goes",
    )
    parser.add_argument(
        "--ee-xyz",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        default=None,
        help="the arm's end-effector position in metres (base frame), for models trained with it",
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow a checkpoint's own Python code"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def load_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB, or a one-line error that says what is wrong with the file."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise Rt2CotError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise Rt2CotError(
            f"cannot read image {path}: not a readable image file ({type(exc).__name__})"
        ) from exc


def load_depth(path: Path, scale_m: float) -> np.ndarray:
    """HxW float32 metres with NaN where there is no reading."""
    if not path.is_file():
        raise Rt2CotError(f"depth file not found: {path}")
    try:
        if path.suffix.lower() == ".npy":
            raw = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as im:
                raw = np.asarray(im)
    except Exception as exc:
        raise Rt2CotError(
            f"cannot read depth {path}: use a .npy array or a 16-bit PNG ({type(exc).__name__})"
        ) from exc
    if raw.ndim != 2:
        raise Rt2CotError(f"depth {path} must be a single-channel HxW image, got shape {raw.shape}")
    if np.issubdtype(raw.dtype, np.integer):
        depth = raw.astype(np.float32) * scale_m
        depth[raw == 0] = np.nan
    else:
        depth = raw.astype(np.float32)
        depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


class _TerminalStream:
    """Writes `Plan: ...` as it grows and the action integers as they arrive."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started_plan = False
        self.started_action = False

    def __call__(self, event: Event) -> None:
        if isinstance(event, PlanDelta):
            if not self.started_plan:
                self.out.write("Plan: ")
                self.started_plan = True
            self.out.write(event.text)
        elif isinstance(event, ActionTokenEvent):
            if not self.started_action:
                self.out.write(". Action:" if self.started_plan else "Action:")
                self.started_action = True
            self.out.write(f" {event.value}")
        else:
            return
        self.out.flush()

    def end(self) -> None:
        if self.started_plan or self.started_action:
            self.out.write("\n")
            self.out.flush()


def run(args: argparse.Namespace) -> int:
    from rt2_cot.action_codec import ActionCodec
    from rt2_cot.backends import load_backend
    from rt2_cot.backends.base import GenerationRequest
    from rt2_cot.step import run_step

    image = load_image(args.image)
    depth = load_depth(args.depth, args.depth_scale) if args.depth else None
    if depth is not None and depth.shape != image.shape[:2]:
        raise Rt2CotError(
            f"depth is {depth.shape[1]}x{depth.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}"
        )
    if not args.instruction.strip():
        raise Rt2CotError("--instruction is empty; say what the robot should do")
    if args.gripper is not None and not 0.0 <= args.gripper <= 1.0:
        raise Rt2CotError("--gripper is the opening from 0 (closed) to 1 (open)")
    if args.gripper_command is not None and not 0.0 <= args.gripper_command <= 1.0:
        raise Rt2CotError("--gripper-command is an opening from 0 (closed) to 1 (open)")
    _quiet_transformers()
    kwargs = {"trust_remote_code": True} if args.trust_remote_code else {}
    backend = load_backend(args.model, **kwargs)
    codec = ActionCodec()
    request = GenerationRequest(
        image=image,
        depth=depth,
        instruction=args.instruction,
        prompt_style=args.prompt,
        given_plan=args.plan,
        gripper=args.gripper,
        gripper_command=args.gripper_command,
        ee_xyz=tuple(args.ee_xyz) if args.ee_xyz else None,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    terminal = _TerminalStream(sys.stderr if args.json else sys.stdout)
    output = run_step(backend, request, codec, on_event=terminal)
    terminal.end()
    result = {
        "model": args.model,
        "instruction": args.instruction,
        "prompt": args.prompt,
        "plan": output.plan,
        "action_tokens": list(output.tokens) if output.tokens else None,
        "action": codec.to_dict(output.command) if output.command else None,
        "text": output.text,
        "latency_ms": round(output.latency_ms, 2),
        "ttft_ms": round(output.ttft_ms, 2) if output.ttft_ms is not None else None,
        "seed": args.seed,
        "error": output.error,
    }
    if args.json:
        print(json.dumps(result))
    elif output.command is not None:
        a = result["action"]
        print(
            f"action: terminate={a['terminate']} xyz_m={a['delta_xyz_m']} rpy_rad={a['delta_rpy_rad']} "
            f"gripper={a['gripper']}  ({output.latency_ms:.0f} ms, first token {output.ttft_ms or 0:.0f} ms)"
        )
    if output.command is None:
        raise ActionParseError(f"the model output is not a valid action, nothing would move: {output.error}")
    return 0


def _quiet_transformers() -> None:
    """transformers' progress bars and advice would bury the streamed plan on the terminal."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - remote-only installs
        pass
