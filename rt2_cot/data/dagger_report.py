"""How the driver did on the states it visited: a report from DAgger shards (`rt2-cot datagen --driver`).

A driven episode records, for every frame, the model's own plan (`driver_plan`) beside the oracle's
grounded plan from the same state, and whether the episode succeeded with the model at the wheel.
That makes the DAgger data a closed-loop measurement for free, by task family:

- `success`: driven episodes that ended in the task's success (the oracle also acts in
  1 - `--driver-step-prob` of their steps, so this is an upper bound on the model alone);
- `plan_names_target`: frames whose plan names the task's target (`evaluation.plan_names_object`);
- `target_point` / `reference_point`: median distance, in image units of 256, between the plan's
  first / second point and the oracle's (the object to move; the object or tile it goes to), with
  the share within 8 units.

    python -m rt2_cot.data.dagger_report data/dagger
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def _distance(a: list, b: list, i: int) -> float | None:
    """Distance between the i-th located things of two `plan_points` lists; None if either lacks one."""
    if len(a) <= i or len(b) <= i:
        return None
    return float(np.hypot(a[i][1] - b[i][1], a[i][2] - b[i][2]))


def dagger_report(folder: Path) -> dict:
    """Per family and overall: driven episodes, their success, and the driver's plans against the
    oracle's on the frames it visited. Reads the shards' JSON sidecars only (no images)."""
    from rt2_cot.data import format as fmt
    from rt2_cot.data.grounding import plan_points
    from rt2_cot.evaluation import plan_names_object

    episodes: dict[str, list[bool]] = defaultdict(list)
    named: dict[str, list[bool]] = defaultdict(list)
    dists: dict[str, dict[int, list[float]]] = defaultdict(lambda: {0: [], 1: []})
    for path in fmt.shard_paths(Path(folder)):
        meta = json.loads(path.with_suffix(".json").read_text())
        by_id = {e["id"]: e for e in meta["episodes"]}
        for ep in meta["episodes"]:
            if ep.get("driven"):
                episodes[ep["family"]].append(bool(ep["success"]))
        for frame in meta["frames"]:
            ep = by_id[frame["episode"]]
            plan = frame.get("driver_plan")
            if not ep.get("driven") or plan is None:
                continue
            named[ep["family"]].append(plan_names_object(plan, ep["task"]["target"]))
            own, oracle = plan_points(plan), plan_points(frame.get("grounded_plan", ""))
            for i in (0, 1):
                d = _distance(own, oracle, i)
                if d is not None:
                    dists[ep["family"]][i].append(d)

    def row(eps: list[bool], hits: list[bool], d: dict[int, list[float]]) -> dict:
        out = {
            "driven_episodes": len(eps),
            "success": float(np.mean(eps)) if eps else None,
            "frames": len(hits),
            "plan_names_target": float(np.mean(hits)) if hits else None,
        }
        for i, key in ((0, "target_point"), (1, "reference_point")):
            v = np.array(d[i])
            out[key] = float(np.median(v)) if len(v) else None
            out[f"{key}_within8"] = float(np.mean(v < 8)) if len(v) else None
        return out

    families = sorted(set(episodes) | set(named))
    report = {f: row(episodes[f], named[f], dists[f]) for f in families}
    pooled = {0: [d for f in families for d in dists[f][0]], 1: [d for f in families for d in dists[f][1]]}
    report["all"] = row(
        [s for f in families for s in episodes[f]], [h for f in families for h in named[f]], pooled
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a datagen folder written with --driver")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    print(json.dumps(dagger_report(args.folder), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
