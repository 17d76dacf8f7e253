"""Task families for the tabletop: templated instructions with paraphrases, canonical plans, scene needs.

A `TaskSpec` is everything the simulator needs to build a scene and judge it: the instruction the
policy reads, the object to act on (`target`), the goal (`lift`, `near` an object, `on` a tile),
the canonical chain-of-thought `plan` ("pick up the rock"), the objects and tiles that must be
present, and extra scene rules (`constraint`) that keep the instruction unambiguous.

Families (RT-2 evaluation category in brackets):
    pick, move_near                                  [seen]
    place_on_symbol, place_on_number                 [symbol]
    arithmetic, colour, colour_match, smallest,
    largest, closest_to                              [reasoning]
    semantic_drink, semantic_fruit, semantic_tool    [cot_semantics]

Splits (`sample_task(..., split=...)`) hold things out of training data for evaluation:
    train               train phrasings, train objects, train backgrounds, 1-3 distractors.
    heldout_phrasing    only the held-out phrasings (each family's `heldout` templates).
    heldout_objects     target (where the family allows) and distractors from the held-out kinds
                        bottle, lemon, pear; the held-out symbol "diamond" may appear.
    heldout_background  table colours blue and green, which training scenes never use.
    heldout_distractors 4-5 distractors (training uses 1-3).
    heldout             all of the above at once.
Held-out object combinations: colour_match pairs whose reference is a `can` appear only in the
held-out splits (train colour_match uses block/ball references).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from robot_io.sim.scene import (
    HELDOUT_BACKGROUNDS,
    HELDOUT_SYMBOLS,
    KINDS,
    NUMBERS,
    SYMBOLS,
    TRAIN_BACKGROUNDS,
    SceneError,
    all_object_names,
    parse_object_name,
    tile_kind,
)

GOALS = ("lift", "near", "on")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class TaskError(SceneError):
    """An instruction or task description the simulator cannot pose; the message lists what it can."""


@dataclass(frozen=True)
class TaskSpec:
    family: str
    instruction: str
    target: str  # name of the object to act on: "red block", "apple"
    goal: str = "lift"  # lift | near (an object) | on (a tile)
    reference: str = ""  # object name (near, closest_to) or tile name ("star", "3") for on
    plan: str = ""  # canonical chain-of-thought plan, names the object: "pick up the rock"
    objects: tuple[str, ...] = ()  # objects that must be present (target and reference included)
    tiles: tuple[str, ...] = ()  # tiles that must be present
    distractors: int = 2  # extra random objects
    background: str = "wood"
    split: str = "train"
    category: str = ""  # RT-2 evaluation category: seen, symbol, reasoning, cot_semantics, ...
    constraint: str = ""  # scene rule: unique_colour:red, unique_class:drink, smallest, largest, closest_to
    extras: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["objects"], d["tiles"] = list(self.objects), list(self.tiles)
        return d


@dataclass(frozen=True)
class SplitFlags:
    phrasing: bool = False
    objects: bool = False
    background: bool = False
    distractors: bool = False


SPLITS: dict[str, SplitFlags] = {
    "train": SplitFlags(),
    "heldout_phrasing": SplitFlags(phrasing=True),
    "heldout_objects": SplitFlags(objects=True),
    "heldout_background": SplitFlags(background=True),
    "heldout_distractors": SplitFlags(distractors=True),
    "heldout": SplitFlags(True, True, True, True),
}


@dataclass(frozen=True)
class Family:
    name: str
    category: str
    goal: str
    train: tuple[str, ...]  # instruction templates used for training data
    heldout: tuple[str, ...]  # paraphrases never used in training data
    plan: str
    # (rng, flags, given slots) -> all slots, plus "objects", "tiles", "constraint"
    fill: Callable[[np.random.Generator, SplitFlags, dict], dict]


# -- slot helpers -------------------------------------------------------------------------------------
def _objects(flags: SplitFlags, pred: Callable[[str], bool] = lambda n: True) -> list[str]:
    """Candidate target names: held-out kinds only in held-out-object splits, preferred there."""
    names = [n for n in all_object_names(include_heldout=True) if pred(n)]
    held = [n for n in names if KINDS[parse_object_name(n)[0]].heldout]
    seen = [n for n in names if n not in held]
    if flags.objects and held:
        return held
    return seen or names


def _choice(rng: np.random.Generator, items: list | tuple) -> str:
    if not items:
        raise TaskError("no object fits this task")
    return items[int(rng.integers(len(items)))]


def _symbols(flags: SplitFlags) -> list[str]:
    return [s for s in SYMBOLS if flags.objects or s not in HELDOUT_SYMBOLS]


def _colour(name: str) -> str:
    return parse_object_name(name)[1]


def _cls(name: str) -> str:
    return KINDS[parse_object_name(name)[0]].cls


def _fill_pick(rng, flags, g):
    target = g.get("target") or _choice(rng, _objects(flags))
    return {"target": target, "objects": [target]}


def _fill_move_near(rng, flags, g):
    target = g.get("target") or _choice(rng, _objects(flags))
    ref = g.get("reference") or _choice(rng, [n for n in _objects(flags) if n != target])
    if ref == target:
        raise TaskError("move_near needs two different objects")
    return {"target": target, "reference": ref, "objects": [target, ref]}


def _fill_place_symbol(rng, flags, g):
    target = g.get("target") or _choice(rng, _objects(flags))
    tile = g.get("tile") or _choice(rng, _symbols(flags))
    others = [s for s in _symbols(flags) if s != tile]
    extra = [str(x) for x in rng.choice(others, size=int(rng.integers(1, 3)), replace=False)]
    return {"target": target, "tile": tile, "reference": tile, "objects": [target], "tiles": [tile, *extra]}


def _number_slot(value: str) -> str:
    value = value.strip().lower()
    if value in NUMBER_WORDS:
        return str(NUMBER_WORDS.index(value))
    return value


def _fill_place_number(rng, flags, g):
    target = g.get("target") or _choice(rng, _objects(flags))
    tile = _number_slot(g["tile"]) if g.get("tile") else _choice(rng, NUMBERS)
    if g.get("tileword"):
        tile = _number_slot(g["tileword"])
    if tile not in NUMBERS:
        raise TaskError(f"number tiles are 1-9, not {tile}")
    others = [n for n in NUMBERS if n != tile]
    extra = [str(x) for x in rng.choice(others, size=int(rng.integers(1, 3)), replace=False)]
    return {
        "target": target,
        "tile": tile,
        "tileword": NUMBER_WORDS[int(tile)],
        "reference": tile,
        "objects": [target],
        "tiles": [tile, *extra],
    }


def _fill_arithmetic(rng, flags, g):
    target = g.get("target") or _choice(rng, _objects(flags))
    if g.get("a") and g.get("b"):
        a, b = int(_number_slot(g["a"])), int(_number_slot(g["b"]))
        op = g.get("op") or "plus"
    elif g.get("tile"):  # the answer is given (a suite case): pose a sum that makes it
        n = int(_number_slot(g["tile"]))
        if not 2 <= n <= 9:
            raise TaskError(f"arithmetic answers are number tiles 2-9, not {g['tile']}")
        op, a = "plus", int(rng.integers(1, n))
        b = n - a
    else:
        op = g.get("op") or _choice(rng, ["plus", "plus", "minus"])
        while True:
            a, b = int(rng.integers(1, 9)), int(rng.integers(1, 9))
            n = a + b if op == "plus" else a - b
            if 1 <= n <= 9:
                break
    n = a + b if op == "plus" else a - b
    if not 1 <= n <= 9:
        raise TaskError(f"{a} {op} {b} = {n}, but number tiles are 1-9")
    # The operands are on the table too, so reading a digit from the instruction is not enough.
    tiles = [str(n)] + [str(v) for v in dict.fromkeys((a, b)) if 1 <= v <= 9 and v != n]
    return {
        "target": target,
        "a": NUMBER_WORDS[a],
        "b": NUMBER_WORDS[b],
        "op": op,
        "tile": str(n),
        "reference": str(n),
        "objects": [target],
        "tiles": tiles,
    }


def _fill_colour(rng, flags, g):
    if g.get("target"):
        target = g["target"]
    else:
        colour = g.get("colour")
        target = _choice(rng, _objects(flags, lambda n: colour is None or _colour(n) == colour))
    colour = _colour(target)
    return {"target": target, "colour": colour, "objects": [target], "constraint": f"unique_colour:{colour}"}


def _fill_colour_match(rng, flags, g):
    # Held-out combination: can references only outside "train".
    ref_kinds = ["block", "ball"] + (["can"] if flags != SplitFlags() else [])
    refkind = g.get("refkind") or _choice(rng, ref_kinds)
    if g.get("target"):
        target = g["target"]
    else:
        target = _choice(
            rng,
            _objects(
                flags,
                lambda n: (
                    parse_object_name(n)[0] != refkind
                    and _colour(n) in KINDS[refkind].colours
                    and _colour(n) != "grey"
                ),
            ),
        )
    colour = _colour(target)
    if colour not in KINDS[refkind].colours:
        raise TaskError(f"there is no {colour} {refkind}")
    ref = f"{colour} {refkind}"
    if ref == target:
        raise TaskError("colour matching needs two different objects")
    others = [c for c in KINDS[refkind].colours if c != colour]
    decoys = [f"{c!s} {refkind}" for c in rng.choice(others, size=min(2, len(others)), replace=False)]
    return {"target": target, "refkind": refkind, "reference": ref, "objects": [target, ref, *decoys]}


def _fill_size(which: str):
    def fill(rng, flags, g):
        target = g.get("target") or _choice(
            rng, _objects(flags, lambda n: _cls(n) in ("toy", "fruit", "drink"))
        )
        return {"target": target, "objects": [target], "constraint": which}

    return fill


def _fill_closest(rng, flags, g):
    if g.get("reference"):
        ref = g["reference"]
    elif rng.random() < 0.5:
        ref = _choice(rng, _symbols(flags))
    else:
        ref = _choice(rng, _objects(flags))
    target = g.get("target") or _choice(rng, [n for n in _objects(flags) if n != ref])
    is_tile = ref in SYMBOLS or ref in NUMBERS
    return {
        "target": target,
        "reference": ref,
        "objects": [target] if is_tile else [target, ref],
        "tiles": [ref] if is_tile else [],
        "constraint": "closest_to",
    }


def _fill_class(cls: str):
    def fill(rng, flags, g):
        target = g.get("target") or _choice(rng, _objects(flags, lambda n: _cls(n) == cls))
        if _cls(target) != cls:
            raise TaskError(f"the {target} is not a {cls}")
        return {"target": target, "objects": [target], "constraint": f"unique_class:{cls}"}

    return fill


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "pick",
            "seen",
            "lift",
            ("pick up the {target}", "pick the {target}", "grab the {target}", "lift the {target}"),
            ("could you pick up the {target}", "take hold of the {target} and raise it"),
            "pick up the {target}",
            _fill_pick,
        ),
        Family(
            "move_near",
            "seen",
            "near",
            (
                "move the {target} near the {reference}",
                "put the {target} next to the {reference}",
                "bring the {target} close to the {reference}",
            ),
            (
                "place the {target} beside the {reference}",
                "move the {target} so it is close to the {reference}",
            ),
            "move the {target} near the {reference}",
            _fill_move_near,
        ),
        Family(
            "place_on_symbol",
            "symbol",
            "on",
            (
                "place the {target} on the {tile}",
                "put the {target} on the {tile}",
                "move the {target} onto the {tile}",
            ),
            ("set the {target} down on the {tile} symbol", "drop the {target} onto the {tile} sign"),
            "place the {target} on the {tile}",
            _fill_place_symbol,
        ),
        Family(
            "place_on_number",
            "symbol",
            "on",
            (
                "place the {target} on the number {tile}",
                "put the {target} on {tile}",
                "move the {target} onto the number {tileword}",
            ),
            ("set the {target} down on the digit {tile}", "drop the {target} onto number {tileword}"),
            "place the {target} on the number {tile}",
            _fill_place_number,
        ),
        Family(
            "arithmetic",
            "reasoning",
            "on",
            (
                "put the {target} on the sum of {a} {op} {b}",
                "place the {target} on the number equal to {a} {op} {b}",
                "move the {target} to {a} {op} {b}",
            ),
            (
                "place the {target} on the answer to {a} {op} {b}",
                "put the {target} on the result of {a} {op} {b}",
            ),
            "place the {target} on the number {tile}",
            _fill_arithmetic,
        ),
        Family(
            "colour",
            "reasoning",
            "lift",
            ("pick up the {colour} object", "grab the {colour} thing", "lift the {colour} item"),
            ("pick up the object that is {colour}", "find the {colour} one and lift it"),
            "pick up the {target}",
            _fill_colour,
        ),
        Family(
            "colour_match",
            "reasoning",
            "near",
            (
                "move the {target} near the {refkind} of the same colour",
                "put the {target} next to the {refkind} with the same colour",
            ),
            ("bring the {target} to the {refkind} that matches its colour",),
            "move the {target} near the {reference}",
            _fill_colour_match,
        ),
        Family(
            "smallest",
            "reasoning",
            "lift",
            ("pick up the smallest object", "grab the smallest item", "pick the tiniest object"),
            ("pick up the object that is smaller than all the others",),
            "pick up the {target}",
            _fill_size("smallest"),
        ),
        Family(
            "largest",
            "reasoning",
            "lift",
            ("pick up the largest object", "grab the biggest item", "pick the largest thing"),
            ("pick up the object that is bigger than all the others",),
            "pick up the {target}",
            _fill_size("largest"),
        ),
        Family(
            "closest_to",
            "reasoning",
            "lift",
            ("pick up the object closest to the {reference}", "grab the item nearest to the {reference}"),
            ("pick up whatever is next to the {reference}",),
            "pick up the {target}",
            _fill_closest,
        ),
        Family(
            "semantic_drink",
            "cot_semantics",
            "lift",
            ("i am thirsty", "pick up something to drink", "bring me a drink", "pick up the drink"),
            ("i need something to quench my thirst", "my throat is dry, get me a beverage"),
            "pick up the {target}",
            _fill_class("drink"),
        ),
        Family(
            "semantic_fruit",
            "cot_semantics",
            "lift",
            ("pick up the fruit", "i am hungry, pick up a piece of fruit", "grab something healthy to eat"),
            ("i would like a snack that grows on trees",),
            "pick up the {target}",
            _fill_class("fruit"),
        ),
        Family(
            "semantic_tool",
            "cot_semantics",
            "lift",
            (
                "pick up something you could hammer a nail with",
                "pick up the object you could use as a hammer",
                "i need to hammer a nail",
            ),
            ("grab something hard enough to crack a nut",),
            "pick up the {target}",
            _fill_class("tool"),
        ),
    )
}


# More training phrasings per family, for instruction augmentation at training time (TrainConfig.
# instruction_augment): a robot example's instruction is now and then swapped for another training
# phrasing of the same task. Datagen draws from `train` alone, so data written before these existed
# stays valid. None of these is a held-out phrasing, and none uses a held-out phrasing's own words
# ("beside", "so it is close to", "symbol", "sign", "digit", "answer", "result", "could you",
# "take hold", "that is", "one and", "matches", "all the others", "whatever", "quench", "beverage",
# "snack", "trees", "crack", "nut"). Tests check them against every family's held-out templates
# (tests/robot_io/test_sim_tasks.py) and against the held-out cases of prompts/suites/rt2_core.yaml
# (tests/rt2_cot/test_suites.py: none within one word of a case). Phase 17 (session 17) trained with
# them: see the model card.
AUGMENT_PHRASINGS: dict[str, tuple[str, ...]] = {
    "pick": (
        "raise the {target}",
        "get the {target}",
        "grasp the {target} and lift it",
        "i want you to pick up the {target}",
    ),
    "move_near": (
        "put the {target} near the {reference}",
        "set the {target} by the {reference}",
        "push the {target} toward the {reference}",
        "slide the {target} over to the {reference}",
        "take the {target} to the {reference}",
        "move the {target} next to the {reference}",
    ),
    "place_on_symbol": (
        "set the {target} on the {tile}",
        "lay the {target} on the {tile}",
        "place the {target} onto the {tile}",
        "move the {target} to the {tile}",
    ),
    "place_on_number": (
        "set the {target} on the number {tile}",
        "place the {target} on {tile}",
        "put the {target} on the number {tileword}",
        "move the {target} to the number {tile}",
        "lay the {target} on the number {tileword}",
    ),
    "arithmetic": (
        "place the {target} on {a} {op} {b}",
        "move the {target} onto {a} {op} {b}",
        "put the {target} on the number {a} {op} {b} makes",
    ),
    "colour": ("get the {colour} object", "raise the {colour} item", "take the {colour} thing"),
    "colour_match": (
        "move the {target} next to the {refkind} of the same colour",
        "put the {target} near the {refkind} with the same colour",
        "bring the {target} near the {refkind} in the same colour",
    ),
    "smallest": ("get the smallest object", "lift the smallest thing", "pick up the littlest item"),
    "largest": ("get the largest object", "lift the biggest thing", "pick up the biggest object"),
    "closest_to": (
        "pick up the object nearest the {reference}",
        "grab the item closest to the {reference}",
        "lift the thing nearest to the {reference}",
    ),
    "semantic_drink": ("get me something to drink", "i want a drink", "fetch a drink"),
    "semantic_fruit": ("pick up something i can eat", "grab a piece of fruit", "i want some fruit"),
    "semantic_tool": (
        "pick up something to hammer with",
        "grab a tool for hammering a nail",
        "i need something to hit a nail with",
    ),
}


def training_phrasings(family: str, instruction: str) -> tuple[str, ...]:
    """Every training phrasing (the family's `train` templates and AUGMENT_PHRASINGS) of the task
    that `instruction`, written from one of the family's train templates, poses: the same target,
    reference, tile, colour or sum. Empty when the instruction matches none of them."""
    fam = FAMILIES.get(family)
    if fam is None:
        return ()
    matched = _match_template(fam.train, instruction)
    if matched is None:
        return ()
    slots = {k: v.lower() for k, v in matched[1].items()}
    if "tile" in slots and slots["tile"].isdigit():
        slots.setdefault("tileword", NUMBER_WORDS[int(slots["tile"])])
    if "tileword" in slots:
        slots.setdefault("tile", str(NUMBER_WORDS.index(slots["tileword"])))
    out = []
    for t in (*fam.train, *AUGMENT_PHRASINGS.get(family, ())):
        try:
            out.append(_format(t, slots))
        except KeyError:  # needs a slot this instruction does not give (not in the bank)
            continue
    return tuple(dict.fromkeys(out))


def _split_flags(split: str) -> SplitFlags:
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return SPLITS[split]


def _format(template: str, slots: dict) -> str:
    text = template.format(**{k: v for k, v in slots.items() if isinstance(v, str)})
    return text[0].upper() + text[1:] if text.startswith("i ") else text


def _make_spec(family: Family, template: str, slots: dict, flags: SplitFlags, split: str, rng) -> TaskSpec:
    background = _choice(rng, HELDOUT_BACKGROUNDS) if flags.background else _choice(rng, TRAIN_BACKGROUNDS)
    distractors = int(rng.integers(4, 6)) if flags.distractors else int(rng.integers(1, 4))
    category = family.category if split == "train" else split
    return TaskSpec(
        family=family.name,
        instruction=_format(template, slots),
        target=slots["target"],
        goal=family.goal,
        reference=slots.get("reference", ""),
        plan=family.plan.format(**{k: v for k, v in slots.items() if isinstance(v, str)}),
        objects=tuple(dict.fromkeys(slots.get("objects", [slots["target"]]))),
        tiles=tuple(dict.fromkeys(slots.get("tiles", []))),
        distractors=distractors,
        background=background,
        split=split,
        category=category,
        constraint=slots.get("constraint", ""),
    )


def sample_task(rng: np.random.Generator, family: str | None = None, split: str = "train") -> TaskSpec:
    """A random task (of `family`, or of a uniformly chosen family) with phrasing/objects per `split`."""
    flags = _split_flags(split)
    name = family or _choice(rng, list(FAMILIES))
    if name not in FAMILIES:
        raise TaskError(f"unknown task family {name!r}; families: {', '.join(FAMILIES)}")
    fam = FAMILIES[name]
    slots = fam.fill(rng, flags, {})
    templates = fam.heldout if flags.phrasing else fam.train
    return _make_spec(fam, _choice(rng, templates), slots, flags, split, rng)


# -- free-text instructions -> tasks ----------------------------------------------------------------
def _slot_pattern(slot: str) -> str:
    names = all_object_names(include_heldout=True)
    # "the grey rock", "the red apple": natural kinds may carry their own colour.
    aliases = [f"{KINDS[n].colours[0]} {n}" for n in names if n in KINDS and not KINDS[n].generic]
    objects = sorted(names + aliases, key=len, reverse=True)
    alternatives = {
        "target": objects,
        "reference": objects + list(SYMBOLS) + list(NUMBERS),
        "tile": list(SYMBOLS) + list(NUMBERS),
        "tileword": list(NUMBER_WORDS[1:]),
        "colour": sorted({_colour(n) for n in objects}),
        "refkind": [k for k, v in KINDS.items() if v.generic],
        "a": list(NUMBER_WORDS) + [str(i) for i in range(10)],
        "b": list(NUMBER_WORDS) + [str(i) for i in range(10)],
        "op": ["plus", "minus"],
    }[slot]
    return f"(?P<{slot}>{'|'.join(re.escape(a) for a in alternatives)})"


@functools.lru_cache(maxsize=512)
def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    out = []
    for p in parts:
        if p.startswith("{") and p.endswith("}"):
            out.append(_slot_pattern(p[1:-1]))
        else:
            out.append(r"\s+".join(re.escape(w) for w in p.split(" ")) if p.strip() else r"\s*")
    return re.compile("".join(out).replace(r"\ ", " "), re.IGNORECASE)


def _normalise(text: str) -> str:
    text = text.strip().lower().rstrip(".!?")
    text = re.sub(r"\s+", " ", text)
    return text.replace("color", "colour").replace("gray", "grey")  # US spellings


def _match_template(templates, instruction: str) -> tuple[str, dict[str, str]] | None:
    """The first of `templates` that `instruction` fills, with the slots it gives, or None."""
    text = _normalise(instruction)
    for template in templates:
        m = _template_regex(_normalise(template)).fullmatch(text)
        if m is not None:
            return template, {k: v for k, v in m.groupdict().items() if v}
    return None


def task_from_instruction(
    instruction: str, rng: np.random.Generator | None = None, split: str = "train"
) -> TaskSpec:
    """Match free text against every family's templates, train, held-out and AUGMENT_PHRASINGS
    ("pick up the red block" -> pick), so the simulator poses what the model was trained on.

    Objects the text does not name (e.g. which drink for "I am thirsty") are drawn from `rng`.
    The returned spec keeps the user's own words as its instruction.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    for fam in FAMILIES.values():
        matched = _match_template((*fam.train, *fam.heldout, *AUGMENT_PHRASINGS[fam.name]), instruction)
        if matched is None:
            continue
        template, found = matched
        given = {k: _canonical(v) if k in ("target", "reference") else v for k, v in found.items()}
        slots = fam.fill(rng, _split_flags(split), given)
        spec = _make_spec(fam, template, slots, _split_flags(split), split, rng)
        return _replace(spec, instruction=instruction.strip())
    examples = "; ".join(
        f"'{sample_task(np.random.default_rng(0), name).instruction}'"
        for name in ("pick", "move_near", "place_on_number", "arithmetic", "semantic_drink")
    )
    raise TaskError(
        f"cannot pose {instruction!r} in the simulator; try e.g. {examples} (or use --family: {', '.join(FAMILIES)})"
    )


def _canonical(name: str) -> str:
    """'grey rock' -> 'rock' (natural kinds are named without their colour); others unchanged."""
    words = name.lower().split()
    if len(words) == 2 and words[1] in KINDS and not KINDS[words[1]].generic:
        return words[1]
    return name.lower()


def _replace(spec: TaskSpec, **changes) -> TaskSpec:
    d = {f.name: getattr(spec, f.name) for f in fields(spec)}
    d.update(changes)
    return TaskSpec(**d)


def task_from_dict(d: dict, rng: np.random.Generator | None = None) -> TaskSpec:
    """A task from a suite case or JSON.

    Accepted forms: a full TaskSpec dict (`to_dict()` output); `{instruction, [split]}` parsed with
    the template matcher (a `family` key, if given, must agree); or `{family, [split]}` sampled.
    Other given keys (target, background, distractors, ...) override what was parsed or sampled.
    """
    if not isinstance(d, dict):
        raise TaskError(f"a task must be a mapping, got {type(d).__name__}")
    known = {f.name for f in fields(TaskSpec)}
    unknown = set(d) - known
    if unknown:
        raise TaskError(f"unknown task keys {sorted(unknown)}; allowed: {sorted(known)}")
    rng = rng if rng is not None else np.random.default_rng(0)
    split = d.get("split", "train")
    overrides = {k: v for k, v in d.items() if k not in ("instruction",)}
    if "target" in d and "family" in d and "instruction" in d:
        # Fully specified case: keep its words, fill what the family needs around its target.
        if d["family"] not in FAMILIES:
            raise TaskError(f"unknown task family {d['family']!r}; families: {', '.join(FAMILIES)}")
        fam = FAMILIES[d["family"]]
        given = {"target": d["target"]}
        if d.get("reference"):
            given["reference"] = d["reference"]
            if fam.goal == "on":
                given["tile"] = d["reference"]
        slots = fam.fill(rng, _split_flags(split), given)
        base = _make_spec(fam, fam.train[0], slots, _split_flags(split), split, rng)
        base = _replace(base, instruction=str(d["instruction"]))
    elif "instruction" in d:
        base = task_from_instruction(str(d["instruction"]), rng, split)
        if "family" in d and d["family"] != base.family:
            raise TaskError(
                f"instruction {d['instruction']!r} reads as {base.family}, but the case says {d['family']}"
            )
    elif "family" in d:
        base = sample_task(rng, d["family"], split)
    else:
        raise TaskError("a task needs an `instruction` or a `family`")
    for key in ("objects", "tiles"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    spec = _replace(base, **overrides)
    validate(spec)
    return spec


def validate(spec: TaskSpec) -> None:
    """Raise TaskError unless the spec names known objects, tiles and goals."""
    if spec.goal not in GOALS:
        raise TaskError(f"unknown goal {spec.goal!r}; goals: {', '.join(GOALS)}")
    for name in (spec.target, *spec.objects):
        parse_object_name(name)
    for t in spec.tiles:
        tile_kind(t)
    if spec.target not in spec.objects:
        raise TaskError(f"target {spec.target!r} must be listed in objects")
    if spec.goal == "near" and spec.reference not in spec.objects:
        raise TaskError(f"the reference object {spec.reference!r} must be listed in objects")
    if spec.goal == "on" and spec.reference not in spec.tiles:
        raise TaskError(f"the goal tile {spec.reference!r} must be listed in tiles")
    if spec.background not in (*TRAIN_BACKGROUNDS, *HELDOUT_BACKGROUNDS):
        raise TaskError(f"unknown background {spec.background!r}")
