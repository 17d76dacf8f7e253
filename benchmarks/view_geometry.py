"""How far does the simulator camera's image move when the gripper moves 1 cm along each axis?

The model sees one oblique front view and no arm state. If moving away from the camera (x) and
moving down (z) shift a point's image the same way, the image alone cannot tell "2 cm too far"
from "2 cm too high" while the gripper approaches an object: the model has to read it from subtler
cues (apparent size, shading, the object's occlusion). This prints, at the targets of `--scenes`
pick tasks, the image shift per centimetre along x, y and z in the 0..255 units grounded plans
use, and the angle between the x and z shifts (0 degrees: indistinguishable).

    python benchmarks/view_geometry.py --scenes 20

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere


def _units(sim, point: np.ndarray, width: int, height: int) -> np.ndarray:
    """Image point of `point` in the 0..255 units of grounded plans."""
    u, v = sim.project(point, width, height)
    return np.array([256.0 * u / width, 256.0 * v / height])


def run(scenes: int, seed: int) -> dict:
    from robot_io.sim.env import TabletopSim
    from robot_io.sim.tasks import sample_task

    sim, rng = TabletopSim(), np.random.default_rng(seed)
    per_cm: dict[str, list[np.ndarray]] = {"x": [], "y": [], "z": []}
    for k in range(scenes):
        task = sample_task(rng, family="pick")
        sim.reset(task, seed=seed + k)
        h, w = sim.render().color.shape[:2]
        at = sim.object_position(task.target)
        for axis, name in enumerate("xyz"):
            step = np.zeros(3)
            step[axis] = 0.01
            per_cm[name].append(_units(sim, at + step, w, h) - _units(sim, at, w, h))
    mean = {name: np.mean(v, axis=0) for name, v in per_cm.items()}
    cos = [
        float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        for a, b in zip(per_cm["x"], per_cm["z"], strict=True)
    ]
    return {
        "scenes": scenes,
        "image_units_per_cm": {n: [round(float(c), 2) for c in m] for n, m in mean.items()},
        "angle_x_vs_z_deg_mean": round(float(np.degrees(np.arccos(np.clip(np.mean(cos), -1, 1)))), 1),
        "angle_x_vs_z_deg_max": round(float(np.degrees(np.arccos(np.clip(min(cos), -1, 1)))), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(json.dumps(run(args.scenes, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
