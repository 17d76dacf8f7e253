"""Is "where is the X" answerable from the frozen image tokens at all? A probe on cached features.

The stop-1 rt2-cot-mini saw a frame as 16 tokens (4x4 grid: the stride-16 EfficientNet-Lite0 map
folded 2x2 into channels + the stride-32 head map). Trained end to end it located the big gripper but
not the small objects (`python -m rt2_cot.data.pointing_probe`). This separates two explanations:

  - the information is not in the tokens (then: more resolution, finer grids), or
  - it is, and the decoder has not learned to read it (then: more training, better recipe).

A small attention probe (query = the object's name, learned embedding; keys/values = the frozen
tokens + 2-D positions; output = x, y) is trained on the cached features of `rt2-cot datagen` shards
for each token layout (LAYOUTS below) and evaluated on held-out shards:

    python benchmarks/feature_probe.py --data data/train --shards 24 --steps 1500 [--layout 8x8+s8]

Prints one JSON object: mean error (0..255 image units) and fraction within 8 units, for the
gripper and for objects, per layout. Needs shards with `points` (datagen from stop 2 on, or
`rt2-cot datagen --out DIR --add-grounding`) and their `.features.v2.npy` caches (made by training);
the `+s8` layouts compute the stride-8 map of those frames first, `8x8+cnn` trains a conv stem on the
pixels as well (slow: about 4x the others).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from rt2_cot.data import format as fmt  # noqa: E402
from rt2_cot.data.dataset import features_path, unpack_maps  # noqa: E402
from rt2_cot.data.grounding import GRIPPER  # noqa: E402
from rt2_cot.model.modeling_rt2_cot_mini import FrozenEfficientNetLite0  # noqa: E402
from rt2_cot.model.processing_rt2_cot_mini import pixels_from_uint8  # noqa: E402

LAYOUTS = {
    "4x4": 2,  # the model's: space-to-depth 2, 16 tokens of 4*112 + 1280
    "8x8": 1,  # 64 tokens of 112 + 1280 (head map repeated 2x2)
    "8x8+s8": 1,  # + the frozen stride-8 map (40 channels, 16x16) folded 2x2: 64 tokens of 160 + 112 + 1280
    "4x4+s8": 2,  # the same stride-8 map folded 4x4 into the model's 16 tokens: 640 + 448 + 1280
    "8x8+cnn": 1,  # + a small conv stem trained from scratch on the 128 px pixels (64 channels, 8x8)
}


class PixelStem(nn.Module):
    """128 px pixels -> (B, 64, 8, 8): four stride-2 3x3 convolutions, trained with the probe."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        chans = [3, 24, 32, 48, width]
        layers = []
        for cin, cout in itertools.pairwise(chans):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(4, cout), nn.GELU()]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().sub(127.0).div(128.0)
        return self.net(x)


@torch.no_grad()
def stride8_maps(images: np.ndarray, batch: int = 128) -> torch.Tensor:
    """(N, 128, 128, 3) uint8 -> (N, 40, 16, 16) fp16: the frozen stride-8 map."""
    enc = FrozenEfficientNetLite0()
    enc.load_imagenet_weights()
    out = []
    for i in range(0, len(images), batch):
        out.append(enc.stride8_map(pixels_from_uint8(images[i : i + batch])).half())
    return torch.cat(out)


def load(data: Path, shards: int) -> tuple[torch.Tensor, np.ndarray, list[dict]]:
    feats, images, items = [], [], []
    base = 0
    for path in fmt.shard_paths(data)[:shards]:
        cache = features_path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        if not cache.exists() or "points" not in meta["frames"][0]:
            continue
        arr = np.load(cache)
        feats.append(torch.from_numpy(arr))
        images.append(fmt.read_shard(path).images)
        for i, fr in enumerate(meta["frames"]):
            if "points" in fr:
                items.append({"frame": base + i, "points": fr["points"], "shard": path.name})
        base += arr.shape[0]
    if not feats:
        raise SystemExit(f"no shards with points and cached features in {data}")
    return torch.cat(feats), np.concatenate(images), items


class Probe(nn.Module):
    def __init__(
        self, dim: int, grid: int, names: int, width: int = 192, stem: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.stem = stem
        self.inp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width), nn.GELU(), nn.Linear(width, width))
        self.pos = nn.Parameter(torch.randn(grid * grid, width) * 0.02)
        self.query = nn.Embedding(names, width)
        self.score = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))
        self.out = nn.Sequential(nn.Linear(width + 2, width), nn.GELU(), nn.Linear(width, 2))
        ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        self.reach = 0.8 / grid  # how far from its attended cell's centre the answer may move
        self.register_buffer("centres", torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5) / grid)

    def forward(
        self, tokens: torch.Tensor, name: torch.Tensor, images: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.stem is not None:
            tokens = torch.cat([tokens, self.stem(images).flatten(2).transpose(1, 2)], -1)
        h = self.inp(tokens) + self.pos
        attn = self.score(h + self.query(name)[:, None]).squeeze(-1).softmax(-1)  # (B, T)
        pooled = torch.einsum("bt,btd->bd", attn, h)
        where = torch.einsum("bt,tc->bc", attn, self.centres)  # attention-weighted cell centre
        return where + self.reach * torch.tanh(self.out(torch.cat([pooled, where], -1)))


def run(feats, images, items, names, label: str, steps: int, seed: int, extra=None) -> dict:
    layout = LAYOUTS[label]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    shards = sorted({it["shard"] for it in items})
    held = set(shards[-max(1, len(shards) // 6) :])
    train = [it for it in items if it["shard"] not in held]
    val = [it for it in items if it["shard"] in held]

    def batch(pool, n):
        picks = [pool[int(i)] for i in rng.integers(len(pool), size=n)]
        q = [list(it["points"])[int(rng.integers(len(it["points"])))] for it in picks]
        fine, coarse = unpack_maps(feats[[it["frame"] for it in picks]])
        frames = [it["frame"] for it in picks]
        tokens = FrozenEfficientNetLite0.combine([fine.float(), coarse.float()], 8 // layout)
        if extra is not None:
            fold = F.pixel_unshuffle(extra[frames].float(), 16 // round(tokens.shape[1] ** 0.5))
            tokens = torch.cat([tokens, fold.flatten(2).transpose(1, 2)], -1)
        pix = torch.from_numpy(images[frames])
        target = torch.tensor([it["points"][k] for it, k in zip(picks, q, strict=True)], dtype=torch.float32)
        return (
            tokens,
            torch.tensor([names[k] for k in q]),
            (target + 0.5) / 256,
            [k == GRIPPER for k in q],
            pix,
        )

    tokens, _, _, _, _ = batch(train, 2)
    stem = PixelStem() if label == "8x8+cnn" else None
    dim = tokens.shape[-1] + (64 if stem is not None else 0)
    probe = Probe(dim, round(tokens.shape[1] ** 0.5), len(names), stem=stem)
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=0.01)
    t0 = time.time()
    for step in range(steps):
        tokens, name, target, _, pix = batch(train, 128)
        loss = F.smooth_l1_loss(probe(tokens, name, pix), target, beta=0.02)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * (step + 1) / steps))
    probe.eval()
    errs = {True: [], False: []}
    with torch.no_grad():
        for _ in range(20):
            tokens, name, target, is_gripper, pix = batch(val, 256)
            e = ((probe(tokens, name, pix) - target) * 256).norm(dim=-1)
            for v, g in zip(e.tolist(), is_gripper, strict=True):
                errs[g].append(v)
    out = {"train_s": round(time.time() - t0, 1)}
    for key, g in (("gripper", True), ("objects", False)):
        v = np.array(errs[g])
        out[f"{key}_error_mean"] = round(float(v.mean()), 1)
        out[f"{key}_within_8"] = round(float((v <= 8).mean()), 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO / "data" / "train")
    ap.add_argument("--shards", type=int, default=24)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--layout", choices=["all", *LAYOUTS], default="all", help="which token layout(s) to probe"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    feats, images, items = load(args.data, args.shards)
    names = {n: i for i, n in enumerate(sorted({k for it in items for k in it["points"]}))}
    result = {"frames": len(items), "names": len(names), "steps": args.steps}
    for label in LAYOUTS:
        if args.layout not in ("all", label):
            continue
        extra = stride8_maps(images) if label.endswith("+s8") else None
        result[label] = run(feats, images, items, names, label, args.steps, args.seed, extra)
        print(label, result[label], file=sys.stderr, flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
