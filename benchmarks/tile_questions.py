"""Can a checkpoint point at a named tile on frames it was trained on? "where is the number 7".

The pointing probe (`python -m rt2_cot.data.pointing_probe`) poses fresh two-tile scenes; this asks
about recorded first frames instead, typically a shard the checkpoint trained on, so a miss here is
a failure to fit, not to generalise. For every tile of each frame it asks the co-training question
"where is the number 7" / "where is the star" (greedy) and reports, per kind of tile, how far the
answer is from the tile (0..255 image units) and how often it is nearer the named tile than any
other tile of the frame (`nearest_right`), beside what picking one of the frame's tiles at random
would score (`chance`).

    python benchmarks/tile_questions.py checkpoints/rt2-cot-mini data/tiles/shard-0131-0000.npz --frames 60

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from rt2_cot.data import format as fmt  # noqa: E402
from rt2_cot.errors import ConfigError  # noqa: E402

_POINT = re.compile(r"(\d{1,3})\s+(\d{1,3})")


def tile_questions(checkpoint: str, shard_path: Path, frames: int) -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import rt2_cot.model  # noqa: F401  (registers the Auto classes)

    if not shard_path.is_file():
        raise SystemExit(f"tile_questions: no shard at {shard_path}")
    try:
        shard = fmt.read_shard(shard_path)
    except ConfigError as exc:
        raise SystemExit(f"tile_questions: {exc}") from None
    proc = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    tiles_of = {e["id"]: list(e["task"]["tiles"]) for e in shard.meta["episodes"]}
    found: dict[str, dict[str, list]] = {}
    asked = 0
    for i, frame in enumerate(shard.meta["frames"]):
        tiles = [t for t in tiles_of[frame["episode"]] if t in frame.get("points", {})]
        if frame["step"] != 0 or not tiles:
            continue
        if asked == frames:
            break
        asked += 1
        points = frame["points"]
        for name in tiles:
            kind = "number" if name.isdigit() else "symbol"
            label = f"number {name}" if kind == "number" else name
            with torch.no_grad():
                out = model.generate(
                    **proc(images=shard.images[i], text=f"Q: where is the {label}? A:"), max_new_tokens=6
                )
            m = _POINT.search(proc.decode(out[0]).split("a :", 1)[-1])
            result = found.setdefault(kind, {"error": [], "right": [], "chance": [], "unparsed": 0})
            if m is None:
                result["unparsed"] += 1
                continue
            x, y = int(m.group(1)), int(m.group(2))
            dist = {t: float(np.hypot(x - points[t][0], y - points[t][1])) for t in tiles}
            result["error"].append(dist[name])
            result["right"].append(min(dist, key=dist.get) == name)
            result["chance"].append(1 / len(tiles))
    report = {"checkpoint": checkpoint, "shard": shard_path.name, "frames": asked}
    for kind, r in sorted(found.items()):
        report[kind] = {
            "asked": len(r["error"]) + r["unparsed"],
            "unparsed": r["unparsed"],
            "error_mean": round(float(np.mean(r["error"])), 1) if r["error"] else None,
            "nearest_right": round(float(np.mean(r["right"])), 3) if r["right"] else None,
            "chance": round(float(np.mean(r["chance"])), 3) if r["chance"] else None,
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("shard", type=Path, help="a datagen shard (.npz) whose frames record `points`")
    parser.add_argument("--frames", type=int, default=60, help="first frames to ask about")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(tile_questions(args.checkpoint, args.shard, args.frames)))


if __name__ == "__main__":
    main()
