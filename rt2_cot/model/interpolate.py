"""Weight-space interpolation of two checkpoints of one model (WiSE-FT, Wortsman et al., 2022).

Fine-tuning a model further on a narrow distribution tends to cost it what it knew before: here
every phase continued from phase 14 gained on what it trained for and lost chain of thought on the
suites' held-out phrasings (model card). WiSE-FT's remedy is to average, tensor by tensor, the
weights before and after the fine-tune: `(1 - alpha) * A + alpha * B`. It works when B was trained
from A (one basin), so both checkpoints must have the same architecture, output vocabulary and
tensors; anything else is refused rather than averaged.

    python -m rt2_cot.model.interpolate checkpoints/rt2-cot-mini runs/x/checkpoint --alpha 0.5 --out runs/x-wise

The output is a complete checkpoint folder: B's config, tokenizer and processor files with the
averaged `model.safetensors` (stored in B's dtypes), and `interpolation.json` saying what was mixed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

import rt2_cot.model  # noqa: F401  (registers the config class with AutoConfig)
from rt2_cot.errors import ConfigError

WEIGHTS = "model.safetensors"
# Config keys that may differ between two checkpoints of one model (bookkeeping, not architecture).
_IGNORED_CONFIG_KEYS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype"}


def _read(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The folder's config as its config class reads it (defaults filled in, so a config.json
    written before a key existed matches one that stores its default) and its tensors."""
    config_path, weights_path = folder / "config.json", folder / WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise ConfigError(f"{folder} is not a checkpoint folder (needs config.json and {WEIGHTS})")
    try:
        return AutoConfig.from_pretrained(folder).to_dict(), load_file(weights_path)
    except Exception as exc:  # JSON, OS and safetensors' own errors: one message either way
        raise ConfigError(f"cannot read {folder}: {exc}") from exc


def interpolate(a: Path, b: Path, alpha: float, out: Path) -> dict:
    """Write `(1 - alpha) * a + alpha * b` to `out` (a new folder); returns what was written."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha is a share between 0 (all of A) and 1 (all of B), got {alpha}")
    a, b, out = Path(a), Path(b), Path(out)
    if out.exists():
        raise ConfigError(f"{out} exists: choose a new folder")
    config_a, weights_a = _read(a)
    config_b, weights_b = _read(b)
    differ = sorted(
        k
        for k in (set(config_a) | set(config_b)) - _IGNORED_CONFIG_KEYS
        if config_a.get(k) != config_b.get(k)
    )
    if differ:
        raise ConfigError(f"{a} and {b} are not one model: their configs differ in {', '.join(differ)}")
    if set(weights_a) != set(weights_b):
        only = sorted(set(weights_a) ^ set(weights_b))
        raise ConfigError(f"{a} and {b} hold different tensors ({', '.join(only[:5])})")
    mixed = {}
    for name, wb in weights_b.items():
        wa = weights_a[name]
        if wa.shape != wb.shape:
            raise ConfigError(f"{name}: shape {tuple(wa.shape)} in {a}, {tuple(wb.shape)} in {b}")
        if not wb.is_floating_point():
            if not torch.equal(wa, wb):
                raise ConfigError(f"{name}: integer tensors differ, so they cannot be averaged")
            mixed[name] = wb.clone()
            continue
        mixed[name] = torch.lerp(wa.float(), wb.float(), alpha).to(wb.dtype).contiguous()
    out.mkdir(parents=True)
    for item in b.iterdir():
        if item.is_file() and item.name != WEIGHTS and item.suffix in (".json", ".yaml", ".png"):
            shutil.copy2(item, out / item.name)
    save_file(mixed, str(out / WEIGHTS), metadata={"format": "pt"})
    record = {"a": str(a), "b": str(b), "alpha": alpha, "tensors": len(mixed)}
    (out / "interpolation.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rt2_cot.model.interpolate",
        description="Average two checkpoints of one model in weight space: (1 - alpha) * A + alpha * B.",
    )
    parser.add_argument("a", type=Path, help="the checkpoint before fine-tuning")
    parser.add_argument("b", type=Path, help="the checkpoint fine-tuned from A")
    parser.add_argument("--alpha", type=float, required=True, help="share of B, 0..1")
    parser.add_argument("--out", type=Path, required=True, help="new checkpoint folder")
    args = parser.parse_args(argv)
    try:
        record = interpolate(args.a, args.b, args.alpha, args.out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), **record}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
