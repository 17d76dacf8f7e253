"""Can a checkpoint find things in the image? A diagnostic for grounded checkpoints.

For fresh simulator scenes it asks the co-training question "where is the X?" about the gripper and
about the task's target, and compares the answer with the true image point (0..255 units). It also
asks the same question about the same object in a second scene where it sits more than 32 units
away: a model that really looks at the image moves its answer too (`moves_with_object`: the answer
moved more than 16 units), one that has only learned a typical position does not. A wrong answer
nearer another object or tile than the target (`target_nearer_another`) confused what it looked
for; one near nothing did not find it. For grounded checkpoints it also lets the model write its
plan for the pick ("pick up the apple at 103 121", greedy, the arm's state stated as the model was
trained) and scores that point (`plan_target_error_mean`): the number closed-loop success hangs on;
split by whether the arm is still where the episode started (`plan_target_at_start_*`, the
frame of the first plan) or has taken 1-3 of the oracle's steps toward the target
(`plan_target_on_the_way_*`). A model that reads the target's place off the arm's heading instead
of the object is good on the way and bad at the start. A third set of scenes, drawn apart so the
first two stay as they were, has the arm take 1-3 steps toward another object first, as datagen's
decoy starts do (`plan_target_heading_elsewhere_*`); `plan_follows_the_arm` is how often the plan's
point is then nearer the object the arm heads for than the target. Last, scenes with two tiles
(`place_on_number`, `place_on_symbol`, first frames): asked "where is the number 7" and in its plan
("... on the number 7 at 158 107"), is the model's point nearer the named tile than the other one
(`{number,symbol}_tile_asked_right`, `_plan_right`; 0.5 is a coin toss), and how far from it.
`--split heldout_objects` lays every scene out as that held-out split (the pick's target a bottle,
lemon or pear; the diamond tile among the symbols).

    python -m rt2_cot.data.pointing_probe runs/default/checkpoint --scenes 20
"""

from __future__ import annotations

import argparse
import json
import re

import numpy as np

from rt2_cot.data.grounding import WHERE

_POINT = re.compile(r"(\d{1,3})\s+(\d{1,3})")
_PLAN_POINT = re.compile(r"\bat\s+(\d{1,3})\s+(\d{1,3})")


def _distance(a, b) -> float:
    """Distance between two image points, in 0..255 units."""
    return float(np.hypot(a[0] - b[0], a[1] - b[1]))


def _ask(model, proc, image, question: str) -> tuple[int, int] | None:
    import torch

    with torch.no_grad():
        out = model.generate(**proc(images=image, text=f"Q: {question}? A:"), max_new_tokens=6)
    m = _POINT.search(proc.decode(out[0]).split("a :", 1)[-1])
    return None if m is None else (int(m.group(1)), int(m.group(2)))


def plan_text(model, proc, image, sim, instruction: str, max_new_tokens: int = 16) -> str:
    """What the model writes (greedy) for `instruction` on `image`, the arm's state taken from `sim`
    and stated as the model was trained."""
    import torch

    from rt2_cot.backends.base import GenerationRequest, request_prompt

    request = GenerationRequest(
        image=image, instruction=instruction, gripper=sim.gripper, ee_xyz=tuple(sim.ee_state().ee_xyz_m)
    )
    inputs = proc(images=image, text=request_prompt(model.config, request).text)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens)
    return proc.decode(out[0, inputs["input_ids"].shape[1] :])


def _plan_point(model, proc, image, sim, instruction: str) -> tuple[int, int] | None:
    """The first point of the plan the model writes for `instruction` (None: no grounded plan)."""
    m = _PLAN_POINT.search(plan_text(model, proc, image, sim, instruction))
    return None if m is None else (int(m.group(1)), int(m.group(2)))


def pointing_probe(checkpoint: str, scenes: int = 20, seed: int = 7, split: str = "train") -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import rt2_cot.model  # noqa: F401  (registers the Auto classes)
    from robot_io.sim.env import TabletopSim
    from robot_io.sim.tasks import sample_task
    from rt2_cot.data.grounding import GRIPPER, scene_points

    proc = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    sim, rng = TabletopSim(), np.random.default_rng(seed)
    err = {
        "gripper": [],
        "target": [],
        "plan_target": [],
        "plan_target_at_start": [],
        "plan_target_on_the_way": [],
    }
    moved, confused, unparsed = [], [], 0
    for _ in range(scenes):
        task = sample_task(rng, family="pick", split=split)
        answers = []
        for _ in range(2):  # the same object in two layouts
            sim.reset(task, seed=int(rng.integers(1_000_000_000)))
            moved_steps = int(rng.integers(0, 4))
            for _ in range(moved_steps):  # the gripper somewhere along the way
                command, _ = sim.oracle()
                sim.apply(command)
            image = sim.render().color
            pts = scene_points(sim, *image.shape[1::-1])
            for key, name in (("gripper", GRIPPER), ("target", task.target)):
                got = _ask(model, proc, image, WHERE + name)
                if got is None:
                    unparsed += 1
                    continue
                dist = {k: _distance(got, p) for k, p in pts.items()}
                err[key].append(dist[name])
                if key == "target":
                    answers.append((got, pts[name]))
                    others = [d for k, d in dist.items() if k not in (name, GRIPPER)]
                    confused.append(bool(others) and min(others) < dist[name])
                    planned = _plan_point(model, proc, image, sim, task.instruction)
                    if planned is not None:
                        e = _distance(planned, pts[name])
                        err["plan_target"].append(e)
                        err["plan_target_at_start" if moved_steps == 0 else "plan_target_on_the_way"].append(
                            e
                        )
        if len(answers) == 2:
            (a, ta), (b, tb) = answers
            if _distance(ta, tb) > 32:  # the object really moved
                moved.append(_distance(a, b) > 16)
    err["plan_target_heading_elsewhere"], follows = _heading_elsewhere(model, proc, sim, scenes, seed, split)
    tiles = {kind: _tile_scenes(model, proc, sim, kind, scenes, seed, split) for kind in ("number", "symbol")}
    summary = {"scenes": scenes, "split": split, "unparsed": unparsed}
    for key, values in err.items():
        v = np.array(values)
        summary[f"{key}_error_mean"] = round(float(v.mean()), 1) if len(v) else None
        summary[f"{key}_within_8"] = round(float((v <= 8).mean()), 3) if len(v) else None
    summary["target_nearer_another"] = round(float(np.mean(confused)), 3) if confused else None
    summary["moves_with_object"] = round(float(np.mean(moved)), 3) if moved else None
    summary["plan_follows_the_arm"] = round(float(np.mean(follows)), 3) if follows else None
    for kind, found in tiles.items():
        for how, hits in found.items():
            summary[f"{kind}_tile_{how}_right"] = (
                round(float(np.mean([h[0] for h in hits])), 3) if hits else None
            )
            summary[f"{kind}_tile_{how}_error_mean"] = (
                round(float(np.mean([h[1] for h in hits])), 1) if hits else None
            )
    return summary


def _heading_elsewhere(
    model, proc, sim, scenes: int, seed: int, split: str = "train"
) -> tuple[list[float], list[bool]]:
    """Scenes where the arm first heads for another object: the plan's point for the target, and
    whether it is nearer the object the arm heads for (the plan copies the arm) than the target."""
    from robot_io.sim.tasks import sample_task
    from rt2_cot.data.datagen import decoy_command
    from rt2_cot.data.grounding import scene_points

    rng = np.random.default_rng([seed, 1])
    errors, follows = [], []
    for _ in range(scenes):
        task = sample_task(rng, family="pick", split=split)
        sim.reset(task, seed=int(rng.integers(1_000_000_000)))
        others = [o.name for o in sim.objects if o.name != task.target]
        if not others:
            continue
        decoy = others[int(rng.integers(len(others)))]
        goal = np.array([*sim.object_position(decoy)[:2], 0.15])
        for _ in range(int(rng.integers(1, 4))):
            sim.apply(decoy_command(sim, goal))
        image = sim.render().color
        pts = scene_points(sim, *image.shape[1::-1])
        planned = _plan_point(model, proc, image, sim, task.instruction)
        if planned is None:
            continue
        to_target, to_decoy = _distance(planned, pts[task.target]), _distance(planned, pts[decoy])
        errors.append(to_target)
        follows.append(to_decoy < to_target)
    return errors, follows


def _tile_scenes(
    model, proc, sim, kind: str, scenes: int, seed: int, split: str = "train"
) -> dict[str, list[tuple[bool, float]]]:
    """First frames of `place_on_{kind}` (two tiles on the table): for the question "where is the
    {tile}" and for the plan's point of the tile, (nearer the named tile than any other, distance to
    it). A plan that names another tile or no point is scored on whatever point it gives, or skipped."""
    from robot_io.sim.tasks import sample_task
    from rt2_cot.data.grounding import plan_points, scene_points

    rng = np.random.default_rng([seed, 2 if kind == "number" else 3])
    found: dict[str, list[tuple[bool, float]]] = {"asked": [], "plan": []}
    for _ in range(scenes):
        task = sample_task(rng, family=f"place_on_{kind}", split=split)
        sim.reset(task, seed=int(rng.integers(1_000_000_000)))
        image = sim.render().color
        pts = scene_points(sim, *image.shape[1::-1])
        names = [t.name for t in sim.tiles if t.name in pts]
        if task.reference not in names or len(names) < 2:
            continue
        label = f"number {task.reference}" if kind == "number" else task.reference
        points = plan_points(plan_text(model, proc, image, sim, task.instruction, max_new_tokens=28))
        for how, point in (
            ("asked", _ask(model, proc, image, WHERE + label)),
            ("plan", points[-1][1:] if len(points) >= 2 else None),  # the tile is the plan's last point
        ):
            if point is None:
                continue
            dist = {name: _distance(point, pts[name]) for name in names}
            found[how].append((min(dist, key=dist.get) == task.reference, dist[task.reference]))
    return found


def main() -> None:
    from robot_io.sim.tasks import SPLITS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--split", default="train", choices=list(SPLITS), help="lay the scenes out as this split"
    )
    args = parser.parse_args()
    print(json.dumps(pointing_probe(args.checkpoint, args.scenes, args.seed, args.split)))


if __name__ == "__main__":
    main()
