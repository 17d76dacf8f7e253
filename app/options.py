"""Command line of `python -m app` and the bind/auth policy that decides whether it may start.

Kept free of gradio so the policy (localhost by default, any other address only with a password)
is testable in milliseconds and enforced before anything is loaded.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from rt2_cot.errors import ConfigError

AUTH_ENV = "RT2_CONSOLE_AUTH"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class ConsoleOptions:
    """Everything the console needs to start; built from argv by `parse_options`."""

    camera: str = "sim"
    arm: str = "sim"
    model: str = "builtin"
    host: str = "127.0.0.1"
    port: int = 7860
    auth: tuple[str, str] | None = None
    sessions: Path = Path("sessions")
    rate_hz: float = 10.0
    max_steps: int = 100
    replan_every: int = 1
    hold_reference: bool = True
    preview_hz: float = 15.0
    seed: int = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--camera", default="sim", help="sim | realsense[:SERIAL] | file:PATH | webcam:N | images:DIR"
    )
    parser.add_argument("--arm", default="sim", help="sim | none | xarm:IP")
    parser.add_argument(
        "--model",
        default="builtin",
        help="builtin | a local checkpoint folder | http(s)://host:port/v1 | oracle (scripted, sim only: checks the rig)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind; anything but loopback needs --auth"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth", default=None, help=f"USER:PASS (or set {AUTH_ENV}); required off localhost")
    parser.add_argument("--sessions", type=Path, default=Path("sessions"), help="folder of recorded sessions")
    parser.add_argument("--rate-hz", type=float, default=10.0, help="target control rate")
    parser.add_argument("--max-steps", type=int, default=100, help="step limit of one Run")
    parser.add_argument(
        "--replan-every", type=int, default=1, help="initial plan reuse: re-plan every N steps"
    )
    parser.add_argument(
        "--hold-reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help='keep where the plan put each reference ("on the triangle at X Y") at its first reading '
        "for the whole command (default on; see rt2_cot.vla_policy)",
    )
    parser.add_argument("--preview-hz", type=float, default=15.0, help="live view refresh rate")
    parser.add_argument("--seed", type=int, default=0, help="first simulator scene seed")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if value is None or value == "":
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError("--auth must look like USER:PASS (both non-empty)")
    return user, password


def resolve_auth(
    host: str, cli_auth: str | None, environ: dict[str, str] | None = None
) -> tuple[str, str] | None:
    """The credentials to require, or None. Refuses to expose the console off-host without them:
    an unauthenticated console on a network can move a robot."""
    env = os.environ if environ is None else environ
    auth = parse_auth(cli_auth) or parse_auth(env.get(AUTH_ENV))
    if auth is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to bind {host} without a password: pass --auth USER:PASS or set {AUTH_ENV} "
            "(or bind 127.0.0.1)"
        )
    return auth


def options_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ConsoleOptions:
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    if args.replan_every < 0:
        raise ConfigError("--replan-every must be >= 0 (0 = plan once per command)")
    if args.rate_hz <= 0 or args.preview_hz <= 0:
        raise ConfigError("--rate-hz and --preview-hz must be positive")
    return ConsoleOptions(
        camera=args.camera,
        arm=args.arm,
        model=args.model,
        host=args.host,
        port=args.port,
        auth=resolve_auth(args.host, args.auth, environ),
        sessions=args.sessions,
        rate_hz=args.rate_hz,
        max_steps=args.max_steps,
        replan_every=args.replan_every,
        hold_reference=args.hold_reference,
        preview_hz=args.preview_hz,
        seed=args.seed,
    )
