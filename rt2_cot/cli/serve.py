"""`rt2-cot serve`: put a local model behind an OpenAI-compatible API (chat completions + SSE)."""

from __future__ import annotations

import argparse
import errno
import socket
from pathlib import Path

from loguru import logger

from rt2_cot.errors import ConfigError, ModelLoadError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="builtin", help="builtin (default) or a local checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--served-model-name", default=None, help="model id clients send (default: the --model value's name)"
    )


def _check_port_free(host: str, port: int) -> None:
    """Fail with one line before loading the model, rather than after, if the port is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use; pass another --port") from exc
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _warm_up(backend) -> None:
    """One throwaway step so the first client does not pay for lazy imports and first-call setup
    (seconds on this machine). Failures are logged, not fatal: the client will see them anyway."""
    import numpy as np

    from rt2_cot.backends.base import GenerationRequest

    try:
        request = GenerationRequest(image=np.zeros((240, 320, 3), np.uint8), instruction="warm up")
        for _ in backend.stream(request):
            pass
    except Exception as exc:
        logger.warning("warm-up step failed: {}", exc)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    if args.model.startswith(("http://", "https://")):
        raise ConfigError("serve runs a local model; point clients at the remote server directly instead")
    _check_port_free(args.host, args.port)
    try:
        from rt2_cot.backends import load_backend
    except ImportError as exc:
        raise ModelLoadError(f"no backend loader available in this install ({exc})") from exc
    backend = load_backend(args.model)
    name = args.served_model_name or (args.model if args.model == "builtin" else Path(args.model).name)

    _warm_up(backend)
    from rt2_cot.serving import run_server

    logger.info(
        "serving {} as {!r} on http://{}:{}/v1",
        getattr(backend, "name", args.model),
        name,
        args.host,
        args.port,
    )
    run_server(backend, name, host=args.host, port=args.port)
    return 0
