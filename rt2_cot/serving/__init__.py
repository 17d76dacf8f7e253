"""Serve any local backend behind an OpenAI-compatible chat-completions API (`rt2-cot serve`).

Imports of the web stack are deferred so that `rt2_cot.serving.guided` (regexes shared with the
remote client) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from rt2_cot.backends.base import Backend

__all__ = ["create_app", "run_server"]


def create_app(backend: Backend, model_name: str = "rt2-cot") -> FastAPI:
    """The FastAPI app serving `backend` as model id `model_name` (see `rt2_cot.serving.app`)."""
    from rt2_cot.serving.app import create_app as _create_app

    return _create_app(backend, model_name)


def run_server(
    backend: Backend, model_name: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning"
) -> None:
    """Block serving `backend` on host:port until interrupted."""
    import uvicorn

    uvicorn.run(create_app(backend, model_name), host=host, port=port, log_level=log_level, access_log=False)
