"""Do the frozen image features say which digit (or symbol) a tile shows? A linear probe.

Session 12's pointing probe (`python -m rt2_cot.data.pointing_probe`) found that the built-in model
cannot tell two number tiles apart: asked "where is the number 7" with a 7 and a 3 on the table, its
point is nearer the 7 a third of the time, below a coin toss, while it tells symbols apart 85% of the
time. Either the frozen EfficientNet-Lite0 maps at 128 px have lost the digit (then: resolution, a
crop around the tile, bigger glyphs) or the model has not learned to read them (then: data, recipe).

This trains a linear classifier on the cached features of `rt2-cot datagen` shards at each tile's
image point (first frames, so the arm covers nothing), tile identity as the label, 80/20 split by
tile, and reports held-out accuracy for two inputs: the stride-8 cell under the tile (40 channels)
and that cell's 3x3 neighbourhood plus the stride-16 cell (472). `two_tiles` is the question the
model fails: is the named class's logit higher at a tile of that class than at a tile of another
class (0.5 is a coin toss).

With `--checkpoint`, a third input: that checkpoint's own image token for the tile's cell (the
projector's output, 384), which is all its pointer readout compares the words with (its keys are a
linear map of these tokens). If the frozen features name the digit and the model's tokens do not,
the projector has not learned to keep it.

    python benchmarks/tile_probe.py --data data/episodes-v12
    python benchmarks/tile_probe.py --data data/tiles --shards 16 --checkpoint checkpoints/rt2-cot-mini

Needs shards with `points` and both feature caches (`.features.v2.npy`, `.s8.v2.npy`), which
training writes for a stride-8 model such as the built-in one. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from rt2_cot.data import dataset  # noqa: E402
from rt2_cot.data import format as fmt  # noqa: E402
from rt2_cot.data.grounding import image_cell  # noqa: E402
from rt2_cot.errors import ConfigError  # noqa: E402
from rt2_cot.model.configuration_rt2_cot_mini import STRIDE8_MAP, STRIDE16_MAP  # noqa: E402


def tile_features(folder: Path, max_shards: int | None = None, model=None) -> dict[str, list]:
    """Per tile on an episode's first frame: its name and the two inputs (three with a `model`: its
    image token for the tile's cell)."""
    c8, g8 = STRIDE8_MAP
    c16, g16 = STRIDE16_MAP
    out: dict[str, list] = {"name": [], "cell": [], "context": []}
    if model is not None:
        out["model token"] = []
    try:
        paths = fmt.shard_paths(folder)[:max_shards]
    except ConfigError as exc:
        raise SystemExit(f"tile_probe: {exc}") from None
    for path in paths:
        s8_path, ft_path = dataset.stride8_path(path), dataset.features_path(path)
        if not (s8_path.exists() and ft_path.exists()):
            raise SystemExit(
                f"tile_probe: {path.name}: no feature caches; train a stride-8 model on {folder} first"
            )
        meta = json.loads(path.with_suffix(".json").read_text())
        s8, ft = np.load(s8_path, mmap_mode="r"), np.load(ft_path, mmap_mode="r")
        tiles_of = {e["id"]: list(e["task"]["tiles"]) for e in meta["episodes"]}
        for i, frame in enumerate(meta["frames"]):
            names = [t for t in tiles_of[frame["episode"]] if t in frame.get("points", {})]
            if frame["step"] != 0 or not names:
                continue
            fine = np.pad(np.asarray(s8[i], np.float32).reshape(c8, g8, g8), ((0, 0), (1, 1), (1, 1)))
            mid = np.asarray(ft[i, : c16 * g16 * g16], np.float32).reshape(c16, g16, g16)
            tokens = None if model is None else model_tokens(model, s8[i], ft[i])
            for name in names:
                x, y = frame["points"][name]
                r, c = min(y * g8 // 256, g8 - 1), min(x * g8 // 256, g8 - 1)
                out["name"].append(name)
                out["cell"].append(fine[:, r + 1, c + 1])
                neighbourhood = fine[:, r : r + 3, c : c + 3].reshape(-1)
                out["context"].append(np.concatenate([neighbourhood, mid[:, y * g16 // 256, x * g16 // 256]]))
                if tokens is not None:
                    out["model token"].append(tokens[image_cell(x, y, model.config.vision_grid)])
    return out


def model_tokens(model, s8_row: np.ndarray, features_row: np.ndarray) -> np.ndarray:
    """A checkpoint's image tokens (grid*grid, hidden) for one frame's cached frozen maps, row-major."""
    s8 = torch.from_numpy(np.asarray(s8_row))[None] if model.config.vision_stride8 else None
    packed = torch.from_numpy(np.asarray(features_row))[None]
    with torch.no_grad():
        features = dataset.cached_image_features(packed, s8, model.config.vision_grid)
        return model.encode_image(features=features)[0].numpy()


def linear_probe(x: np.ndarray, labels: list[str], steps: int = 400) -> dict:
    """Held-out accuracy of a linear classifier, and the two-tile choice it implies."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    x = torch.tensor(x)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[: int(0.8 * len(y))], order[int(0.8 * len(y)) :]
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-4
    x = (x - mu) / sd
    head = torch.nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(x[train]), y[train]).backward()
        opt.step()
    with torch.no_grad():
        logits = head(x)
    held_out = float((logits[test].argmax(1) == y[test]).float().mean())
    # Two tiles: the named class's logit at a held-out tile of that class against the same logit at
    # a random held-out tile of another class (the pair need not share a scene).
    rng = np.random.default_rng(0)
    wins = []
    test_list = test.tolist()
    for i in test_list:
        j = test_list[int(rng.integers(len(test_list)))]
        if y[j] == y[i]:
            continue
        wins.append(bool(logits[i, y[i]] > logits[j, y[i]]))
    return {
        "tiles": len(y),
        "classes": len(classes),
        "chance": round(1 / len(classes), 3),
        "held_out": round(held_out, 3),
        "two_tiles": round(float(np.mean(wins)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--shards", type=int, default=None, help="use only the first N shards")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--checkpoint", help="also probe this rt2-cot-mini checkpoint's own image tokens")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = None
    if args.checkpoint:
        from transformers import AutoModelForImageTextToText

        import rt2_cot.model  # noqa: F401  (registers the Auto classes)

        model = AutoModelForImageTextToText.from_pretrained(args.checkpoint).eval()
    found = tile_features(args.data, args.shards, model)
    names = np.array(found["name"])
    inputs = {what: np.asarray(values, np.float32) for what, values in found.items() if what != "name"}
    report = {}
    for kind, mask in (("numbers", np.char.isdigit(names)), ("symbols", ~np.char.isdigit(names))):
        if mask.sum() < 20:
            report[kind] = None
            continue
        labels = names[mask].tolist()
        report[kind] = {
            f"{what} ({x.shape[1]} features)": linear_probe(x[mask], labels, args.steps)
            for what, x in inputs.items()
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
