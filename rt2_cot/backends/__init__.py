"""Model backends behind one protocol: the built-in model, any local transformers VLM, a remote
OpenAI-compatible server. `load_backend(spec)` turns a `--model` argument into one."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from rt2_cot.backends.base import Backend, GenerationRequest
from rt2_cot.errors import ModelLoadError

__all__ = ["BUILTIN_CHECKPOINT", "Backend", "GenerationRequest", "load_backend"]

# The committed checkpoint. RT2_BUILTIN_CHECKPOINT points elsewhere (e.g. a fresh training run).
BUILTIN_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "rt2-cot-mini"


def builtin_checkpoint() -> Path:
    return Path(os.environ.get("RT2_BUILTIN_CHECKPOINT", BUILTIN_CHECKPOINT))


def load_backend(spec: str = "builtin", **kwargs) -> Backend:
    """`builtin` | `http(s)://host:port/v1` | a local checkpoint folder -> a Backend.

    Keyword arguments go to the backend's constructor (e.g. `trust_remote_code=True` for a folder).
    """
    spec = str(spec).strip()
    if spec == "builtin":
        path = builtin_checkpoint()
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"built-in checkpoint not found at {path}; train it with `rt2-cot train` "
                "or pass --model PATH_OR_URL"
            )
        # The speed engineer's fast path, when present, beats the generic transformers path.
        if importlib.util.find_spec("rt2_cot.backends.builtin") is not None:
            from rt2_cot.backends.builtin import BuiltinBackend

            return BuiltinBackend(path, **kwargs)
        from rt2_cot.backends.transformers_backend import TransformersBackend

        return TransformersBackend(path, **kwargs)
    if spec.startswith(("http://", "https://")):
        try:
            remote = importlib.import_module("rt2_cot.backends.remote")
        except ModuleNotFoundError as exc:
            raise ModelLoadError(
                "remote models need rt2_cot.backends.remote, which is not installed"
            ) from exc
        return remote.RemoteBackend(spec, **kwargs)
    from rt2_cot.backends.transformers_backend import TransformersBackend

    return TransformersBackend(spec, **kwargs)
