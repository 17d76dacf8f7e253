"""Can a checkpoint name what it sees? A diagnostic for the plan's object when the words do not say it.

Session 8's evaluation found the plan naming the right object 100% of the time when the instruction
names it and far less when only the image can ("the smallest object", "the item closest to the
star", "a drink" when one can of several colours is on the table). This probe separates the two
halves of that: for fresh simulator scenes of each task family (the arm at home, as evaluation
episodes start) it

- asks the co-training questions datagen writes about the same scene (`scene_questions`: colour,
  class, size, position, counts, symbols; not "where is the X", see `pointing_probe`) and scores the
  answer by exact match (`vl_accuracy`, by question kind), and
- lets the model write its plan for the task (greedy, the arm's state stated as it was trained)
  and checks that the plan names the task's target object (`plan_names_target`, by family) with
  `rt2-cot eval`'s check (`plan_names_object`: "the orange block" does not name the orange; the
  first eight plans that miss are listed in `plan_misses`), and
- asks for the target in the plan's words ("locate the lemon" -> "the lemon at 103 106", the
  question `TrainConfig.locate_questions` trains) and checks that the answer names it
  (`locate_names_target`). Session 19: trained on those questions the model names the held-out
  lemon, pear or bottle there (22 of 30) while its plan for the same scene does not (1 of 30).

A model that answers "which object is the smallest" but does not plan for it has a transfer problem;
one that answers neither does not see it. `--split heldout_objects` draws the scenes as that
held-out split (bottles, lemons, pears, the diamond tile): can the model name what no robot episode
showed it?

    python -m rt2_cot.data.naming_probe checkpoints/rt2-cot-mini --scenes 12
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np


def _answer(model, proc, image, question: str) -> str:
    """The model's short answer to a co-training question (greedy, up to its end-of-answer token)."""
    import torch

    from rt2_cot.data.format import vl_prompt

    inputs = proc(images=image, text=vl_prompt(question))
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8)
    text = proc.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return text.split("[SEP]", 1)[0].strip().rstrip(".").strip()


def naming_probe(
    checkpoint: str,
    scenes: int = 12,
    seed: int = 11,
    families: list[str] | None = None,
    split: str = "train",
) -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import rt2_cot.model  # noqa: F401  (registers the Auto classes)
    from robot_io.sim.env import TabletopSim
    from robot_io.sim.tasks import FAMILIES, sample_task
    from rt2_cot.data.datagen import scene_questions, scene_state
    from rt2_cot.data.grounding import LOCATE
    from rt2_cot.data.pointing_probe import plan_text
    from rt2_cot.evaluation import plan_names_object

    proc = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    sim = TabletopSim()
    vl: dict[str, list[bool]] = defaultdict(list)
    plans: dict[str, list[bool]] = defaultdict(list)
    located: dict[str, list[bool]] = defaultdict(list)
    misses: list[dict] = []  # the first plans that do not name their target, to read
    for f, family in enumerate(families or list(FAMILIES)):
        rng = np.random.default_rng([seed, f])
        for _ in range(scenes):
            task = sample_task(rng, family, split=split)
            sim.reset(task, seed=int(rng.integers(1_000_000_000)))
            image = sim.render().color
            objects, tiles = scene_state(sim)
            for question, answer, kind in scene_questions(objects, tiles, rng, initial=True):
                vl[kind].append(_answer(model, proc, image, question) == answer)
            plan = plan_text(model, proc, image, sim, task.instruction, 24).split("action", 1)[0]
            plans[family].append(plan_names_object(plan, task.target))
            if not plans[family][-1] and len(misses) < 8:
                misses.append({"instruction": task.instruction, "target": task.target, "plan": plan.strip()})
            answer = _answer(model, proc, image, LOCATE + task.target)
            located[family].append(plan_names_object(answer, task.target))

    def rates(d: dict[str, list[bool]]) -> dict[str, dict]:
        return {k: {"n": len(v), "rate": round(float(np.mean(v)), 3)} for k, v in sorted(d.items())}

    every_answer = [ok for v in vl.values() for ok in v]
    every_plan = [ok for v in plans.values() for ok in v]
    every_locate = [ok for v in located.values() for ok in v]
    return {
        "checkpoint": checkpoint,
        "scenes_per_family": scenes,
        "seed": seed,
        "split": split,
        "vl_accuracy": round(float(np.mean(every_answer)), 3) if every_answer else None,
        "plan_names_target": round(float(np.mean(every_plan)), 3) if every_plan else None,
        "vl_accuracy_by_kind": rates(vl),
        "plan_names_target_by_family": rates(plans),
        "locate_names_target": round(float(np.mean(every_locate)), 3) if every_locate else None,
        "locate_names_target_by_family": rates(located),
        "plan_misses": misses,
    }


def main() -> None:
    from robot_io.sim.tasks import SPLITS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--scenes", type=int, default=12, help="scenes per task family")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--families", nargs="+", help="task families (default: all)")
    parser.add_argument(
        "--split", default="train", choices=list(SPLITS), help="lay the scenes out as this split"
    )
    args = parser.parse_args()
    print(json.dumps(naming_probe(args.checkpoint, args.scenes, args.seed, args.families, args.split)))


if __name__ == "__main__":
    main()
