"""Is "where is the X" answerable from the frozen image tokens at all? A probe on cached features.

rt2-cot-mini sees a frame as 16 tokens (4x4 grid: the stride-16 EfficientNet-Lite0 map folded 2x2
into channels + the stride-32 head map). Trained end to end it locates the big gripper but not the
small objects (`python -m rt2_cot.data.pointing_probe`). This separates the two explanations:

  - the information is not in the tokens (then: more resolution, finer grids), or
  - it is, and the decoder has not learned to read it (then: more training, better recipe).

A small attention probe (query = the object's name, learned embedding; keys/values = the frozen
tokens + 2-D positions; output = x, y) is trained on the cached features of `rt2-cot datagen` shards
for each token layout and evaluated on held-out shards:

    python benchmarks/feature_probe.py --data data/train --shards 24 --steps 1500

Prints one JSON object: mean error (0..255 image units) and fraction within 8 units, for the
gripper and for objects, per layout. Needs shards with `points` (datagen from stop 2 on, or
`rt2-cot datagen --out DIR --add-grounding`) and their `.features.npy` caches (made by training).
"""

from __future__ import annotations

import argparse
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

LAYOUTS = {
    "4x4": 2,  # the model's: space-to-depth 2, 16 tokens of 4*112 + 1280
    "8x8": 1,  # 64 tokens of 112 + 1280 (head map repeated 2x2)
}


def load(data: Path, shards: int) -> tuple[torch.Tensor, list[dict]]:
    feats, items = [], []
    base = 0
    for path in fmt.shard_paths(data)[:shards]:
        cache = features_path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        if not cache.exists() or "points" not in meta["frames"][0]:
            continue
        arr = np.load(cache)
        feats.append(torch.from_numpy(arr))
        for i, fr in enumerate(meta["frames"]):
            if "points" in fr:
                items.append({"frame": base + i, "points": fr["points"], "shard": path.name})
        base += arr.shape[0]
    if not feats:
        raise SystemExit(f"no shards with points and cached features in {data}")
    return torch.cat(feats), items


class Probe(nn.Module):
    def __init__(self, dim: int, grid: int, names: int, width: int = 192) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width), nn.GELU(), nn.Linear(width, width))
        self.pos = nn.Parameter(torch.randn(grid * grid, width) * 0.02)
        self.query = nn.Embedding(names, width)
        self.score = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))
        self.out = nn.Sequential(nn.Linear(width + 2, width), nn.GELU(), nn.Linear(width, 2))
        ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        self.register_buffer("centres", torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5) / grid)

    def forward(self, tokens: torch.Tensor, name: torch.Tensor) -> torch.Tensor:
        h = self.inp(tokens) + self.pos
        attn = self.score(h + self.query(name)[:, None]).squeeze(-1).softmax(-1)  # (B, T)
        pooled = torch.einsum("bt,btd->bd", attn, h)
        where = torch.einsum("bt,tc->bc", attn, self.centres)  # attention-weighted cell centre
        return where + 0.1 * torch.tanh(self.out(torch.cat([pooled, where], -1)))


def run(feats, items, names, layout: int, steps: int, seed: int) -> dict:
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
        tokens = FrozenEfficientNetLite0.combine(fine.float(), coarse.float(), layout)
        target = torch.tensor([it["points"][k] for it, k in zip(picks, q, strict=True)], dtype=torch.float32)
        return tokens, torch.tensor([names[k] for k in q]), (target + 0.5) / 256, [k == GRIPPER for k in q]

    tokens, _, _, _ = batch(train, 2)
    probe = Probe(tokens.shape[-1], round(tokens.shape[1] ** 0.5), len(names))
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=0.01)
    t0 = time.time()
    for step in range(steps):
        tokens, name, target, _ = batch(train, 128)
        loss = F.smooth_l1_loss(probe(tokens, name), target, beta=0.02)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * (step + 1) / steps))
    probe.eval()
    errs = {True: [], False: []}
    with torch.no_grad():
        for _ in range(20):
            tokens, name, target, is_gripper = batch(val, 256)
            e = ((probe(tokens, name) - target) * 256).norm(dim=-1)
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
    feats, items = load(args.data, args.shards)
    names = {n: i for i, n in enumerate(sorted({k for it in items for k in it["points"]}))}
    result = {"frames": len(items), "names": len(names), "steps": args.steps}
    for label, layout in LAYOUTS.items():
        if args.layout not in ("all", label):
            continue
        result[label] = run(feats, items, names, layout, args.steps, args.seed)
        print(label, result[label], file=sys.stderr, flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
