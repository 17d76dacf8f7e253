"""Model backends behind one protocol: the built-in model, any local transformers VLM, a remote
OpenAI-compatible server. `load_backend(spec)` turns a `--model` argument into one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rt2_cot.backends.base import Backend, GenerationRequest
from rt2_cot.errors import ModelLoadError

__all__ = ["BUILTIN_CHECKPOINT", "Backend", "GenerationRequest", "load_backend"]

# The committed checkpoint. RT2_BUILTIN_CHECKPOINT points elsewhere (e.g. a fresh training run).
BUILTIN_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "rt2-cot-mini"


def builtin_checkpoint() -> Path:
    return Path(os.environ.get("RT2_BUILTIN_CHECKPOINT", BUILTIN_CHECKPOINT))


def is_builtin_model(spec: str) -> bool:
    """Does `--model spec` name an rt2-cot-mini checkpoint (`builtin` or such a folder), which the
    fast built-in path serves and whose options (precision, ...) apply?"""
    spec = str(spec).strip()
    if spec.startswith(("http://", "https://")):
        return False
    return _model_type(builtin_checkpoint() if spec == "builtin" else Path(spec)) == "rt2_cot_mini"


def load_backend(spec: str = "builtin", **kwargs) -> Backend:
    """`builtin` | `http(s)://host:port/v1` | a local checkpoint folder -> a Backend.

    Keyword arguments go to the backend's constructor (e.g. `trust_remote_code=True` for a folder).
    Any rt2-cot-mini folder (the committed checkpoint or a training run's export) gets the fast
    built-in path, whose greedy output equals the transformers path token for token in fp32
    (`precision`, see rt2_cot.backends.builtin).
    """
    spec = str(spec).strip()
    if spec.startswith(("http://", "https://")):
        from rt2_cot.backends.remote import RemoteBackend

        return RemoteBackend(spec, **kwargs)
    path = builtin_checkpoint() if spec == "builtin" else Path(spec)
    if spec == "builtin" and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"built-in checkpoint not found at {path}; train it with `rt2-cot train` or pass --model PATH_OR_URL"
        )
    if is_builtin_model(spec) and not kwargs.get("trust_remote_code"):
        from rt2_cot.backends.builtin import BuiltinBackend

        return BuiltinBackend(path, **{k: v for k, v in kwargs.items() if k != "trust_remote_code"})
    from rt2_cot.backends.transformers_backend import TransformersBackend

    return TransformersBackend(path, **kwargs)


def _model_type(path: Path) -> str | None:
    """`model_type` from a checkpoint folder's config.json, or None if there is no readable one."""
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
