"""Task families: sampling, held-out splits, the free-text matcher and suite dicts."""

from __future__ import annotations

import numpy as np
import pytest

from robot_io.sim.scene import KINDS, SceneError, parse_object_name
from robot_io.sim.tasks import (
    AUGMENT_PHRASINGS,
    FAMILIES,
    SPLITS,
    TaskError,
    sample_task,
    task_from_dict,
    task_from_instruction,
    training_phrasings,
)


def _kind(name: str) -> str:
    return parse_object_name(name)[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_samples_a_consistent_task(family):
    for seed in range(5):
        task = sample_task(np.random.default_rng(seed), family)
        assert task.family == family
        assert task.target in task.objects
        assert task.target in task.plan, "the plan must name the object to act on"
        assert task.instruction and "{" not in task.instruction
        if task.goal == "on":
            assert task.reference in task.tiles
        if task.goal == "near":
            assert task.reference in task.objects and task.reference != task.target


def test_sampling_is_deterministic_in_the_seed():
    a = [sample_task(np.random.default_rng(s)) for s in range(10)]
    b = [sample_task(np.random.default_rng(s)) for s in range(10)]
    assert a == b
    assert len({t.family for t in a}) > 3


def test_arithmetic_plan_names_the_answer():
    task = task_from_instruction("put the red block on the sum of two plus one")
    assert task.family == "arithmetic"
    assert task.reference == "3" and task.plan == "place the red block on the number 3"
    assert {"1", "2", "3"} <= set(task.tiles), "the operands are on the table as distractors"
    task = task_from_instruction("move the apple to seven minus three")
    assert task.reference == "4"


def test_semantic_instructions_resolve_to_the_right_class():
    drink = task_from_instruction("I am thirsty", np.random.default_rng(1))
    assert KINDS[_kind(drink.target)].cls == "drink" and drink.constraint == "unique_class:drink"
    tool = task_from_instruction("pick up something you could hammer a nail with")
    assert tool.target == "rock" and tool.plan == "pick up the rock"


def test_matcher_round_trips_every_template():
    rng = np.random.default_rng(0)
    for family in FAMILIES:
        for split in ("train", "heldout_phrasing"):
            for _ in range(4):
                task = sample_task(rng, family, split)
                parsed = task_from_instruction(task.instruction, np.random.default_rng(0))
                assert parsed.family == family, task.instruction
                if "{target}" in " ".join(FAMILIES[family].train):
                    assert parsed.target == task.target


def test_training_phrasings_pose_the_same_task_and_never_a_heldout_one():
    import re

    assert set(AUGMENT_PHRASINGS) == set(FAMILIES)
    rng = np.random.default_rng(3)
    for family, fam in FAMILIES.items():
        # No augmentation template shares a held-out phrasing's wording beyond its slots.
        heldout_words = {re.sub(r"\{\w+\}", "{}", t) for t in fam.heldout}
        for t in AUGMENT_PHRASINGS[family]:
            assert re.sub(r"\{\w+\}", "{}", t) not in heldout_words, t
        for _ in range(6):
            task = sample_task(rng, family)
            phrasings = training_phrasings(family, task.instruction)
            assert task.instruction in phrasings and len(phrasings) > len(fam.train) // 2 + 1
            heldout = {
                sample_task(np.random.default_rng(k), family, "heldout_phrasing").instruction
                for k in range(20)
            }
            for text in phrasings:
                assert text not in heldout
                if family == "arithmetic":  # the sum stays the same, in words or digits
                    assert (
                        re.search(r"(\w+) (plus|minus) (\w+)$", task.instruction).groups()
                        == re.search(r"(\w+) (plus|minus) (\w+)( makes)?$", text).groups()[:3]
                    )
                for slot in ("target", "reference"):
                    value = getattr(task, slot)
                    if (
                        value
                        and f"{{{slot}}}" in " ".join(fam.train)
                        and f"{{{slot}}}" in " ".join((*fam.train, *AUGMENT_PHRASINGS[family]))
                    ):
                        assert value in text or family == "place_on_number", (family, text)
    # The simulator poses them too (the oracle and `rt2-cot sim` read free text this way).
    for family, templates in AUGMENT_PHRASINGS.items():
        task = sample_task(rng, family)
        phrasings = training_phrasings(family, task.instruction)
        n_train = len(FAMILIES[family].train)
        assert len(phrasings) == n_train + len(templates)  # each template rendered once, in order
        for text in phrasings[n_train:]:
            assert task_from_instruction(text, np.random.default_rng(0)).family == family, text
    # Numbers come back in digits and in words: "put the X on 4" -> "... on the number four".
    assert "put the red block on the number four" in training_phrasings(
        "place_on_number", "put the red block on 4"
    )
    assert training_phrasings("pick", "do a dance") == () and training_phrasings("no_such_family", "x") == ()


def test_matcher_accepts_us_spellings_and_natural_colours():
    assert task_from_instruction("Pick up the gray rock.").target == "rock"
    task = task_from_instruction("move the red ball near the block of the same color")
    assert task.family == "colour_match" and task.reference == "red block"


def test_unknown_instruction_is_a_clear_error():
    with pytest.raises(TaskError, match="cannot pose"):
        task_from_instruction("dance the tango")
    with pytest.raises(TaskError, match="unknown task family"):
        sample_task(np.random.default_rng(0), "juggle")
    with pytest.raises(TaskError, match="unknown split"):
        sample_task(np.random.default_rng(0), "pick", split="test")


def test_heldout_splits_hold_things_out():
    train = [sample_task(np.random.default_rng(s), split="train") for s in range(300)]
    train_templates = {t for f in FAMILIES.values() for t in f.train}
    heldout_templates = {t for f in FAMILIES.values() for t in f.heldout}
    assert not train_templates & heldout_templates
    assert all(not KINDS[_kind(n)].heldout for t in train for n in t.objects)
    assert {t.background for t in train} <= {"wood", "grey", "white"}
    assert max(t.distractors for t in train) <= 3
    held = [sample_task(np.random.default_rng(s), split="heldout_objects") for s in range(100)]
    assert sum(KINDS[_kind(t.target)].heldout for t in held) > 50
    bg = [sample_task(np.random.default_rng(s), split="heldout_background") for s in range(30)]
    assert {t.background for t in bg} <= {"blue", "green"}
    phr = [sample_task(np.random.default_rng(s), "pick", split="heldout_phrasing") for s in range(20)]
    train_pick = {f.format(target=t.target) for t in phr for f in FAMILIES["pick"].train}
    assert not {t.instruction for t in phr} & train_pick
    assert set(SPLITS) >= {"train", "heldout"}


def test_task_from_dict_forms():
    full = sample_task(np.random.default_rng(3), "move_near")
    assert task_from_dict(full.to_dict()) == full
    parsed = task_from_dict({"instruction": "pick up the green ball", "background": "blue"})
    assert parsed.family == "pick" and parsed.target == "green ball" and parsed.background == "blue"
    sampled = task_from_dict({"family": "semantic_fruit", "split": "heldout_objects"})
    assert KINDS[_kind(sampled.target)].cls == "fruit"
    case = task_from_dict({"family": "pick", "instruction": "fetch the rock for me", "target": "rock"})
    assert case.instruction == "fetch the rock for me" and case.plan == "pick up the rock"
    with pytest.raises(TaskError, match="unknown task keys"):
        task_from_dict({"instruction": "pick up the rock", "colour": "red"})
    with pytest.raises(TaskError, match="reads as pick"):
        task_from_dict({"instruction": "pick up the rock", "family": "move_near"})
    with pytest.raises(SceneError, match="unknown object"):
        task_from_dict({"family": "pick", "instruction": "x", "target": "golden unicorn"})


def test_arithmetic_case_with_a_given_answer_poses_a_matching_sum():
    task = task_from_dict(
        {
            "family": "arithmetic",
            "instruction": "put the apple on the answer",
            "target": "apple",
            "reference": "5",
        }
    )
    assert task.reference == "5" and task.plan == "place the apple on the number 5" and "5" in task.tiles
