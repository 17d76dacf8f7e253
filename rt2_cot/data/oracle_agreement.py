"""Does the model act like the oracle on the oracle's own trajectory? A diagnostic for checkpoints.

The oracle drives the simulator; at every frame the model (greedy, chain-of-thought prompt) says
what it would do, and we count how far its bins are from the oracle's. This separates "cannot
localise the object" from "drifts off the data distribution in closed loop".

    python -m rt2_cot.data.oracle_agreement checkpoints/rt2-cot-mini --episodes 8 --family pick
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np

_ACTION = re.compile(r"action\s*:\s*((?:\d+\s*){8})")


def oracle_agreement(checkpoint: str, episodes: int, family: str | None, seed: int = 123) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import rt2_cot.model  # noqa: F401  (registers the Auto classes)
    from robot_io.sim.env import TabletopSim
    from robot_io.sim.tasks import sample_task
    from rt2_cot.action_codec import ActionCodec

    proc = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    sim, codec, rng = TabletopSim(), ActionCodec(), np.random.default_rng(seed)
    from rt2_cot.data.grounding import plan_points, scene_points

    errors, early, missed, sign_hits, big_moves, unparsed = [], 0, 0, 0, 0, 0
    point_errors = []  # grounded plans: distance of the plan's first point from the target's
    for _ in range(episodes):
        task = sample_task(rng, family=family)
        sim.reset(task, seed=int(rng.integers(1_000_000_000)))
        for _step in range(60):
            image = sim.render().color
            command, _plan = sim.oracle()
            want = codec.encode(command)
            with torch.no_grad():
                out = model.generate(
                    **proc(images=image, text=f"Instruction: {task.instruction}"), max_new_tokens=32
                )
            text = proc.decode(out[0]).split("plan :", 1)[-1]
            points = plan_points(text.split("action", 1)[0])
            if points:
                tx, ty = scene_points(sim, *image.shape[1::-1])[task.target]
                point_errors.append(float(np.hypot(points[0][1] - tx, points[0][2] - ty)))
            m = _ACTION.search(text)
            if m is None:
                unparsed += 1
                got = [0, 128, 128, 128, 128, 128, 128, 255]
            else:
                got = [int(v) for v in m.group(1).split()]
            errors.append(np.abs(np.array(got[1:4]) - np.array(want[1:4])))
            early += got[0] != 0 and want[0] == 0
            missed += got[0] == 0 and want[0] != 0
            for d in (1, 2):
                if abs(want[d] - 128) > 20:  # a real horizontal move, not a correction
                    big_moves += 1
                    sign_hits += np.sign(got[d] - 128) == np.sign(want[d] - 128)
            if command.terminate:
                break
            sim.apply(command)
    err = np.array(errors)
    return {
        "frames": len(err),
        "xyz_bin_mae": [round(float(v), 2) for v in err.mean(0)],
        "premature_terminate": int(early),
        "missed_terminate": int(missed),
        "xy_sign_agreement_on_big_moves": round(sign_hits / max(big_moves, 1), 3),
        "unparsed": unparsed,
        "plan_point_error_mean": round(float(np.mean(point_errors)), 2) if point_errors else None,
        "plan_point_within_8": round(float(np.mean(np.array(point_errors) <= 8)), 3)
        if point_errors
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--family", default="pick", help="task family, or 'any'")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    family = None if args.family == "any" else args.family
    print(json.dumps(oracle_agreement(args.checkpoint, args.episodes, family, args.seed)))


if __name__ == "__main__":
    main()
