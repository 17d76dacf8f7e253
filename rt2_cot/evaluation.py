"""Reasoning test suites: load them from YAML, run them closed loop, grade, report and compare.

A suite (`prompts/suites/*.yaml`, format in `prompts/suites/README.md`) lists cases in RT-2's
evaluation categories. `run_suite` plays every case through the same `ControlLoop` and
`SafetyShield` the console uses; in the simulator each episode is graded by the task's success
predicate, on a real robot (`manual=True`) results carry `grade=None` until the operator fills in
pass/fail and a note. `EvalReport` turns results into the numbers issue 4 asks for (success, plan
accuracy, valid-action rate, per category) as Markdown, CSV or JSON; `compare` puts two runs side
by side.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from loguru import logger

from rt2_cot.errors import ConfigError, Rt2CotError

# RT-2's evaluation categories (paper §4 and appendix): the vocabulary a suite may use. A suite
# can declare more under `categories:`; anything else is a typo and is rejected.
CATEGORIES: dict[str, str] = {
    "seen_tasks": "instructions and objects as in training",
    "unseen_objects": "objects (or object/colour combinations) never seen in training",
    "unseen_backgrounds": "new table backgrounds and extra distractors",
    "paraphrases": "held-out phrasings of known tasks",
    "symbol_understanding": "place on / move to a symbol, letter or number on the table",
    "reasoning": "size, relation, colour matching and arithmetic ('the sum of two plus one')",
    "chain_of_thought": "semantic goals ('I am thirsty' -> the drink) that need a plan",
}
# The simulator's data splits (robot_io.sim.tasks.SPLITS): a case marked with a held-out split is
# posed with the phrasings / objects / backgrounds / distractor counts that training never saw.
SPLITS = (
    "train",
    "heldout_phrasing",
    "heldout_objects",
    "heldout_background",
    "heldout_distractors",
    "heldout",
)
GOALS = ("lift", "near", "on")
DEFAULT_MAX_STEPS = 80
DEFAULT_SEEDS = (0, 1000)
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CASE_KEYS = {
    "id",
    "category",
    "instruction",
    "task",
    "scene",
    "success",
    "expected_plan_object",
    "split",
    "note",
}
_SCENE_KEYS = {"seeds", "objects", "tiles", "distractors", "background"}
_SUITE_KEYS = {"name", "description", "categories", "defaults", "cases", "version"}
_DEFAULT_KEYS = {"seeds", "split"}


# ---------------------------------------------------------------------------------------------
# Suite
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuccessSpec:
    """What the simulator checks at the end of an episode: the `object` is lifted, ends `near` the
    `reference` object, or ends `on` the `reference` tile (a symbol or number)."""

    goal: str
    object: str
    reference: str = ""

    def describe(self) -> str:
        """The predicate in words, for the operator who grades on a real robot."""
        if self.goal == "lift":
            return f"the {self.object} is lifted off the table"
        if self.goal == "near":
            return f"the {self.object} ends near the {self.reference}"
        tile = f"the number {self.reference}" if self.reference.isdigit() else f"the {self.reference}"
        return f"the {self.object} ends on {tile}"


@dataclass(frozen=True)
class Case:
    """One test: an instruction posed in a scene, how success is judged and what the plan must name.

    `task` holds `robot_io.sim.tasks.TaskSpec` fields (at least `family`, or nothing when the
    instruction is one of the simulator's templates); `scene` says what must be present and
    `seeds` is the half-open range scene seeds are drawn from.
    """

    id: str
    category: str
    instruction: str
    task: dict[str, Any]
    expected_plan_object: tuple[str, ...]
    success: SuccessSpec
    split: str = "train"
    seeds: tuple[int, int] = DEFAULT_SEEDS
    scene: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def task_dict(self) -> dict[str, Any]:
        """What `task_from_dict` receives: the case's task, its words, split and scene needs.

        The success predicate's object and reference become the task's target and reference when
        a `family` is named (an instruction alone is parsed by the simulator's template matcher,
        and `build_task` then checks it reads the way `success` says)."""
        d = dict(self.task)
        d["instruction"] = self.instruction
        d["split"] = self.split
        if "family" in d:
            d.setdefault("target", self.success.object)
            if self.success.reference:
                d.setdefault("reference", self.success.reference)
        for key in ("distractors", "background"):
            if key in self.scene:
                d[key] = self.scene[key]
        return d

    def episode_seeds(self, run_seed: int, episodes: int) -> list[int]:
        """Scene seeds for this case's episodes: deterministic in (run seed, case id), spread over
        the case's range without repeats while the range allows."""
        import numpy as np

        lo, hi = self.seeds
        rng = np.random.default_rng([int(run_seed) & 0xFFFFFFFF, zlib.crc32(self.id.encode())])
        span = hi - lo
        if episodes <= span:
            picks = rng.choice(span, size=episodes, replace=False)
        else:
            picks = rng.integers(0, span, size=episodes)
        return [lo + int(p) for p in picks]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    cases: tuple[Case, ...]
    path: str = ""
    categories: tuple[str, ...] = tuple(CATEGORIES)

    def select(
        self,
        categories: Iterable[str] | None = None,
        split: str | None = None,
        case_ids: Iterable[str] | None = None,
    ) -> Suite:
        """A sub-suite (e.g. one category, or only held-out cases) for a quicker run."""
        cats = set(categories) if categories else None
        ids = set(case_ids) if case_ids else None
        unknown = (ids or set()) - {c.id for c in self.cases}
        if unknown:
            raise ConfigError(f"suite {self.name!r} has no case(s) {', '.join(sorted(unknown))}")
        unknown_cats = (cats or set()) - set(self.categories)
        if unknown_cats:
            raise ConfigError(
                f"unknown categor(y/ies) {', '.join(sorted(unknown_cats))}; use {', '.join(self.categories)}"
            )
        kept = tuple(
            c
            for c in self.cases
            if (cats is None or c.category in cats)
            and (split is None or c.split == split)
            and (ids is None or c.id in ids)
        )
        if not kept:
            raise ConfigError(f"no case of suite {self.name!r} matches that selection")
        return replace(self, cases=kept)


def _fail(path: Path | str, message: str, case_id: str | None = None) -> ConfigError:
    where = f"{path}" + (f", case {case_id!r}" if case_id else "")
    return ConfigError(f"malformed suite {where}: {message}")


def _names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str) and value.strip():
        return (value.strip(),)
    if isinstance(value, list) and value and all(isinstance(v, str | int) and str(v).strip() for v in value):
        return tuple(str(v).strip() for v in value)
    return None


def _seed_range(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return (value, value + 1)
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] < value[1]
    ):
        return (value[0], value[1])
    return None


def _parse_success(raw: Any) -> SuccessSpec | str:
    """A SuccessSpec, or the reason the mapping is not one."""
    if not isinstance(raw, dict):
        return "`success` must be a mapping {goal: lift|near|on, object: ..., reference: ...}"
    unknown = set(raw) - {"goal", "object", "reference"}
    if unknown:
        return f"`success` has unknown field(s) {', '.join(sorted(unknown))}; use goal, object, reference"
    goal, obj, ref = raw.get("goal"), raw.get("object"), raw.get("reference", "")
    if goal is True:  # YAML 1.1 reads a bare `on` as true; accept it rather than confuse authors
        goal = "on"
    if goal not in GOALS:
        return f"`success.goal` must be one of {', '.join(GOALS)}, got {goal!r}"
    if not isinstance(obj, str) or not obj.strip():
        return "`success.object` must name the object the predicate is about, e.g. `red block`"
    ref = "" if ref is None else str(ref).strip()
    if goal in ("near", "on") and not ref:
        return f"`success.goal: {goal}` needs a `reference` (the object or tile to end {goal})"
    if goal == "lift" and ref:
        return "`success.goal: lift` takes no `reference`"
    return SuccessSpec(goal=goal, object=obj.strip(), reference=ref)


def _parse_case(raw: Any, index: int, path: Path, categories: set[str], defaults: dict) -> Case:
    if not isinstance(raw, dict):
        raise _fail(path, f"case #{index + 1} must be a mapping with id, category, instruction...")
    case_id = raw.get("id")
    if not isinstance(case_id, str) or not _CASE_ID.match(case_id):
        raise _fail(path, f"case #{index + 1} needs an `id` of letters, digits, '_', '-' or '.'")
    unknown = set(raw) - _CASE_KEYS
    if unknown:
        raise _fail(
            path,
            f"unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_CASE_KEYS))}",
            case_id,
        )
    category = raw.get("category")
    if category not in categories:
        raise _fail(path, f"category {category!r} is not one of {', '.join(sorted(categories))}", case_id)
    instruction = raw.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise _fail(path, "`instruction` must be a non-empty string", case_id)
    task = raw.get("task", {}) or {}
    if not isinstance(task, dict):
        raise _fail(path, "`task` must be a mapping of simulator task fields (e.g. `family: pick`)", case_id)
    if "instruction" in task or "split" in task:
        raise _fail(path, "write `instruction` and `split` on the case itself, not under `task`", case_id)
    expected = _names(raw.get("expected_plan_object"))
    if expected is None:
        raise _fail(path, "`expected_plan_object` must be a string or a list of strings", case_id)
    success = _parse_success(raw.get("success"))
    if isinstance(success, str):
        raise _fail(path, success, case_id)
    split = raw.get("split", defaults.get("split", "train"))
    if split not in SPLITS:
        raise _fail(path, f"`split` must be one of {', '.join(SPLITS)}, got {split!r}", case_id)
    scene = raw.get("scene", {}) or {}
    if not isinstance(scene, dict):
        raise _fail(
            path, "`scene` must be a mapping (seeds, objects, tiles, distractors, background)", case_id
        )
    unknown = set(scene) - _SCENE_KEYS
    if unknown:
        raise _fail(
            path,
            f"`scene` has unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_SCENE_KEYS))}",
            case_id,
        )
    seeds = _seed_range(scene.get("seeds", defaults.get("seeds", list(DEFAULT_SEEDS))))
    if seeds is None:
        raise _fail(path, "`scene.seeds` must be [first, end) with 0 <= first < end, or one seed", case_id)
    for key in ("objects", "tiles"):
        if key in scene and _names(scene[key]) is None:
            raise _fail(path, f"`scene.{key}` must be a list of names", case_id)
    if "distractors" in scene and (
        not isinstance(scene["distractors"], int) or not 0 <= scene["distractors"] <= 8
    ):
        raise _fail(path, "`scene.distractors` must be a whole number 0..8", case_id)
    note = raw.get("note", "")
    return Case(
        id=case_id,
        category=category,
        instruction=instruction.strip(),
        task=dict(task),
        expected_plan_object=expected,
        success=success,
        split=split,
        seeds=seeds,
        scene={
            k: (list(_names(v) or ()) if k in ("objects", "tiles") else v)
            for k, v in scene.items()
            if k != "seeds"
        },
        note=str(note or ""),
    )


def load_suite(path: str | Path, check_tasks: bool = True) -> Suite:
    """Read and validate a suite file. Any problem -> ConfigError naming the file, case and field.

    With `check_tasks` every case is also built by the simulator's `task_from_dict` and checked
    against its `success` predicate and expected plan object, so a suite that loads is a suite
    that runs and grades what it says.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"suite file {path} not found; suites live in prompts/suites/*.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read suite {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _fail(path, f"not valid YAML{where}: {problem}") from exc
    if not isinstance(data, dict):
        raise _fail(path, "the top level must be a mapping with `name`, `description` and `cases`")
    unknown = set(data) - _SUITE_KEYS
    if unknown:
        raise _fail(
            path,
            f"unknown top-level field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_SUITE_KEYS))}",
        )
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(path, "`name` must be a non-empty string")
    extra = data.get("categories") or []
    if not isinstance(extra, list) or not all(isinstance(c, str) and c for c in extra):
        raise _fail(path, "`categories` (optional) must be a list of extra category names")
    categories = list(CATEGORIES) + [c for c in extra if c not in CATEGORIES]
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - _DEFAULT_KEYS:
        raise _fail(path, "`defaults` (optional) may only set `seeds` and `split`, e.g. {seeds: [0, 1000]}")
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise _fail(path, "`cases` must be a non-empty list")
    cases: list[Case] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_cases):
        case = _parse_case(raw, i, path, set(categories), defaults)
        if case.id in seen:
            raise _fail(path, "duplicate case id", case.id)
        seen.add(case.id)
        cases.append(case)
    suite = Suite(
        name=name.strip(),
        description=str(data.get("description") or "").strip(),
        cases=tuple(cases),
        path=str(path),
        categories=tuple(categories),
    )
    if check_tasks:
        for case in suite.cases:
            build_task(case, path)
    return suite


def build_task(case: Case, path: str | Path = "") -> Any:
    """The simulator's TaskSpec for a case. ConfigError naming the case when the simulator cannot
    pose it, or poses something other than what `success` and `expected_plan_object` say."""
    from robot_io.errors import RobotIOError
    from robot_io.sim.tasks import task_from_dict

    where = path or "<suite>"
    d = case.task_dict()
    try:
        task = task_from_dict(d)
        # Objects/tiles the scene must hold are added to the ones the task itself needs.
        if case.scene.get("objects") or case.scene.get("tiles"):
            d["objects"] = list(dict.fromkeys([*task.objects, *case.scene.get("objects", [])]))
            d["tiles"] = list(dict.fromkeys([*task.tiles, *case.scene.get("tiles", [])]))
            task = task_from_dict(d)
    except (RobotIOError, ConfigError) as exc:
        raise _fail(where, str(exc), case.id) from exc
    except (KeyError, ValueError, TypeError) as exc:
        raise _fail(where, f"the simulator cannot build this task: {exc}", case.id) from exc
    posed = SuccessSpec(task.goal, task.target, task.reference if task.goal != "lift" else "")
    if posed != case.success:
        raise _fail(
            where,
            f"`success` says {case.success.describe()!r}, but the simulator poses {case.instruction!r} "
            f"as {posed.describe()!r}; fix `success` or name the target under `task`",
            case.id,
        )
    if task.plan and posed.reference and not plan_names_object(task.plan, posed.reference):
        raise _fail(
            where,
            f"the simulator's plan {task.plan!r} does not mention the goal {posed.reference!r}; "
            "pose this case by an instruction the simulator parses (leave out `task.family`)",
            case.id,
        )
    if task.plan and not plan_names_object(task.plan, case.expected_plan_object):
        raise _fail(
            where,
            f"the simulator's own plan {task.plan!r} does not name any of "
            f"{list(case.expected_plan_object)}; fix `expected_plan_object`",
            case.id,
        )
    return task


def list_suites(folder: str | Path | None = None) -> list[Path]:
    """Suite files shipped in prompts/suites (what the console offers in its picker)."""
    folder = Path(folder) if folder else Path(__file__).resolve().parents[1] / "prompts" / "suites"
    return sorted(p for p in folder.glob("*.yaml") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Plan grading
# ---------------------------------------------------------------------------------------------
_NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "thirteen": "13",
    "fourteen": "14",
    "fifteen": "15",
    "sixteen": "16",
    "seventeen": "17",
    "eighteen": "18",
    "nineteen": "19",
    "twenty": "20",
}
_SYNONYMS = {"grey": "gray", "colour": "color", "coloured": "colored", "cube": "block", "sphere": "ball"}
_FILLER = {"the", "a", "an", "that", "which", "is", "object", "thing"}


def _norm_words(text: str) -> list[str]:
    """Lowercase words with number words as digits, British/US spellings and plurals folded, so
    'the two Red Blocks' and 'red block 2' compare on meaning rather than spelling."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    out = []
    for w in words:
        w = _NUMBER_WORDS.get(w, w)
        w = _SYNONYMS.get(w, w)
        if len(w) > 3 and w.endswith("es") and w[:-2].endswith(("ss", "sh", "ch", "x")):
            w = w[:-2]
        elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
        out.append(w)
    return out


def plan_names_object(plan: str, expected: str | Sequence[str]) -> bool:
    """Does `plan` name the expected object? True when any alternative appears in the plan as a
    contiguous phrase after normalisation (case, punctuation, plurals, number words, filler words
    like 'the'), e.g. 'Plan: pick up the Red blocks.' names 'red block'. Image points of a grounded
    plan ('at 30 41') are not words: they never name the number tile '3'."""
    from rt2_cot.data.grounding import strip_grounding

    alternatives = [expected] if isinstance(expected, str) else list(expected)
    words = [w for w in _norm_words(strip_grounding(plan)) if w not in _FILLER]
    for alt in alternatives:
        target = [w for w in _norm_words(alt) if w not in _FILLER]
        if not target:
            continue
        n = len(target)
        if any(words[i : i + n] == target for i in range(len(words) - n + 1)):
            return True
    return False


def _image_point(sim: Any, name: str) -> tuple[float, float] | None:
    """Where `name` is in the camera image, in the 0..255 units grounded plans use."""
    try:
        from rt2_cot.data.grounding import scene_points

        width, height = sim.config.width, sim.config.height
        point = scene_points(sim, width, height).get(name)
    except Exception:  # a rig without projection (not the MuJoCo tabletop): no grounding metric
        return None
    return None if point is None else (float(point[0]), float(point[1]))


def _point_error(plan: str, true_point: tuple[float, float] | None, which: int = 0) -> float | None:
    """Distance from the plan's `which`-th image point of an object or tile (0: the target's, 1: the
    reference's, as `ground_plan` writes them; the gripper's point is skipped) to the true one; None
    when either is missing."""
    from rt2_cot.data.grounding import located_points

    points = located_points(plan)
    if len(points) <= which or true_point is None:
        return None
    _name, x, y = points[which]
    return round(math.hypot(x - true_point[0], y - true_point[1]), 2)


# ---------------------------------------------------------------------------------------------
# Results and reports
# ---------------------------------------------------------------------------------------------
@dataclass
class EpisodeResult:
    """One episode of one case. `success` is the simulator's verdict (None on a real robot);
    `grade` is the operator's pass/fail (None until graded) and overrides `success` when set."""

    case_id: str
    category: str
    instruction: str
    split: str
    episode: int
    seed: int
    expected_plan_object: tuple[str, ...]
    criterion: str  # the success predicate in words (what an operator checks on a real robot)
    success: bool | None
    end_reason: str
    steps: int
    valid_steps: int
    plan: str
    plan_correct: bool
    plan_step_accuracy: float
    mean_step_ms: float = 0.0
    ttft_ms: float | None = None
    # Grounded plans ("pick up the apple at 30 41"): distance from the plan's first point to the
    # target's true image position at the start, in the plan's 0..255 units. None: no point given.
    plan_point_error: float | None = None
    # The same for the plan's second point, the reference ("near the red ball at X Y", "on the number
    # 7 at X Y"): where the object is to be put down. None for lifts and plans without it.
    plan_reference_error: float | None = None
    grade: bool | None = None
    note: str = ""
    error: str = ""

    @property
    def passed(self) -> bool | None:
        """The verdict that counts: the operator's grade if given, else the simulator's."""
        return self.grade if self.grade is not None else self.success

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["expected_plan_object"] = list(self.expected_plan_object)
        d["passed"] = self.passed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpisodeResult:
        names = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["expected_plan_object"] = tuple(kwargs.get("expected_plan_object") or ())
        kwargs.setdefault("criterion", "")  # reports saved before the field existed
        return cls(**kwargs)


def _rate(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def _summary(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    graded = [r for r in results if r.passed is not None]
    steps = sum(r.steps for r in results)
    return {
        "episodes": len(results),
        "graded": len(graded),
        "success_rate": _rate(sum(bool(r.passed) for r in graded), len(graded)),
        "plan_accuracy": _rate(sum(r.plan_correct for r in results), len(results)),
        "valid_action_rate": _rate(sum(r.valid_steps for r in results), steps),
        "mean_steps": _rate(steps, len(results)),
        "mean_step_ms": _rate(sum(r.mean_step_ms * r.steps for r in results), steps),
        "plan_point_error": _mean_of([r.plan_point_error for r in results]),
        "plan_reference_error": _mean_of([r.plan_reference_error for r in results]),
    }


def _mean_of(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return _rate(sum(known), len(known))


@dataclass
class EvalReport:
    """All results of one suite run plus what produced them; the numbers are computed on demand
    so that operator grades filled in later are reflected everywhere."""

    suite: str
    policy: str
    results: list[EpisodeResult] = field(default_factory=list)
    model: str = ""
    mode: str = "sim"  # "sim": graded by predicates; "manual": graded by the operator
    seed: int = 0
    episodes_per_case: int = 1
    max_steps: int = DEFAULT_MAX_STEPS
    suite_path: str = ""
    episodes_per_category: int | None = None
    started_at: float = field(default_factory=time.time)
    duration_s: float = 0.0
    stopped: bool = False
    label: str = ""

    # -- numbers -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """A short label for tables: the user's label, else policy/model and time."""
        if self.label:
            return self.label
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(self.started_at))
        return f"{self.model or self.policy} @ {stamp}"

    def summary(self) -> dict[str, Any]:
        return _summary(self.results)

    def by_category(self) -> dict[str, dict[str, Any]]:
        return {cat: _summary(rs) for cat, rs in self._group("category").items()}

    def by_split(self) -> dict[str, dict[str, Any]]:
        return {split: _summary(rs) for split, rs in self._group("split").items()}

    def by_case(self) -> dict[str, dict[str, Any]]:
        return {case: _summary(rs) for case, rs in self._group("case_id").items()}

    def _group(self, attr: str) -> dict[str, list[EpisodeResult]]:
        groups: dict[str, list[EpisodeResult]] = {}
        for r in self.results:
            groups.setdefault(getattr(r, attr), []).append(r)
        return groups

    def ungraded(self) -> list[EpisodeResult]:
        return [r for r in self.results if r.passed is None]

    def set_grade(self, case_id: str, episode: int, passed: bool, note: str = "") -> EpisodeResult:
        """The operator's verdict for one episode (manual mode, or overriding the simulator)."""
        for r in self.results:
            if r.case_id == case_id and r.episode == episode:
                r.grade = bool(passed)
                r.note = note
                return r
        raise ConfigError(f"no result for case {case_id!r} episode {episode} in this report")

    # -- exports ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The `rt2-cot eval --json` object: contract fields first, then details and results."""
        s = self.summary()
        return {
            "suite": self.suite,
            "policy": self.policy,
            "model": self.model,
            "mode": self.mode,
            "seed": self.seed,
            "episodes_per_case": self.episodes_per_case,
            "episodes_per_category": self.episodes_per_category,
            "max_steps": self.max_steps,
            "episodes": s["episodes"],
            "graded": s["graded"],
            "success_rate": s["success_rate"],
            "plan_accuracy": s["plan_accuracy"],
            "valid_action_rate": s["valid_action_rate"],
            "mean_steps": s["mean_steps"],
            "plan_point_error": s["plan_point_error"],
            "plan_reference_error": s["plan_reference_error"],
            "by_category": self.by_category(),
            "by_split": self.by_split(),
            "stopped": self.stopped,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 2),
            "suite_path": self.suite_path,
            "label": self.label,
            "results": [r.to_dict() for r in self.results],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        try:
            return cls(
                suite=d["suite"],
                policy=d["policy"],
                results=[EpisodeResult.from_dict(r) for r in d.get("results", [])],
                model=d.get("model", ""),
                mode=d.get("mode", "sim"),
                seed=d.get("seed", 0),
                episodes_per_case=d.get("episodes_per_case", 1),
                episodes_per_category=d.get("episodes_per_category"),
                max_steps=d.get("max_steps", DEFAULT_MAX_STEPS),
                suite_path=d.get("suite_path", ""),
                started_at=d.get("started_at", 0.0),
                duration_s=d.get("duration_s", 0.0),
                stopped=d.get("stopped", False),
                label=d.get("label", ""),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"not an evaluation report (missing or bad field {exc})") from exc

    def save(self, path: str | Path) -> Path:
        """Write the full report as JSON (what `load_report` and the console's compare read)."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.to_json(indent=1), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write evaluation report {path}: {exc.strerror or exc}") from exc
        return path

    def to_csv(self) -> str:
        """One row per episode, for spreadsheets."""
        columns = [
            "suite",
            "policy",
            "case_id",
            "category",
            "split",
            "episode",
            "seed",
            "instruction",
            "expected_plan_object",
            "plan",
            "plan_correct",
            "success",
            "grade",
            "passed",
            "note",
            "end_reason",
            "steps",
            "valid_steps",
            "plan_step_accuracy",
            "plan_point_error",
            "plan_reference_error",
            "mean_step_ms",
            "ttft_ms",
            "error",
        ]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in self.results:
            row = r.to_dict()
            row.update(suite=self.suite, policy=self.policy)
            row["expected_plan_object"] = " | ".join(r.expected_plan_object)
            writer.writerow({c: _csv_cell(row.get(c)) for c in columns})
        return buf.getvalue()

    def to_markdown(self) -> str:
        """A report a person reads: totals, per-category table, per-case table, failures."""
        s = self.summary()
        amount = (
            f"at least {self.episodes_per_category} episodes per category"
            if self.episodes_per_category
            else f"{self.episodes_per_case} episode(s) per case"
        )
        lines = [
            f"# Evaluation: {self.suite}",
            "",
            f"- policy: `{self.policy}`" + (f", model: `{self.model}`" if self.model else ""),
            f"- mode: {'simulator predicates' if self.mode == 'sim' else 'operator grading'}; {amount}, "
            f"seed {self.seed}, at most {self.max_steps} steps",
            f"- run: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self.started_at))}, "
            f"{self.duration_s:.1f} s" + (" (stopped early)" if self.stopped else ""),
            f"- episodes: {s['episodes']} ({s['graded']} graded), {s['mean_steps'] or 0:.1f} steps and "
            f"{s['mean_step_ms'] or 0:.0f} ms a step on average",
            f"- **success: {_pct(s['success_rate'])}**, plan accuracy: {_pct(s['plan_accuracy'])}, "
            f"valid actions: {_pct(s['valid_action_rate'])}"
            + (
                f", plan points {s['plan_point_error']:.1f} units (of 256) from the target"
                if s.get("plan_point_error") is not None
                else ""
            )
            + (
                f" and {s['plan_reference_error']:.1f} from the reference"
                if s.get("plan_reference_error") is not None
                else ""
            ),
            "",
            "## By category",
            "",
            "| category | episodes | success | plan accuracy | valid actions |",
            "|---|---:|---:|---:|---:|",
        ]
        for cat, c in self.by_category().items():
            lines.append(
                f"| {cat} | {c['episodes']} | {_pct(c['success_rate'])} | {_pct(c['plan_accuracy'])} "
                f"| {_pct(c['valid_action_rate'])} |"
            )
        splits = self.by_split()
        if len(splits) > 1:
            lines += [
                "",
                "## By split",
                "",
                "| split | episodes | success | plan accuracy |",
                "|---|---:|---:|---:|",
            ]
            for split, c in splits.items():
                lines.append(
                    f"| {split} | {c['episodes']} | {_pct(c['success_rate'])} | {_pct(c['plan_accuracy'])} |"
                )
        lines += [
            "",
            "## By case",
            "",
            "| case | category | instruction | success | plan accuracy | mean steps |",
            "|---|---|---|---:|---:|---:|",
        ]
        for case_id, c in self.by_case().items():
            first = next(r for r in self.results if r.case_id == case_id)
            lines.append(
                f"| {case_id} | {first.category} | {_md_cell(first.instruction)} | {_pct(c['success_rate'])} "
                f"| {_pct(c['plan_accuracy'])} | {c['mean_steps']:.1f} |"
            )
        failures = [r for r in self.results if r.passed is False or not r.plan_correct or r.error]
        if failures:
            lines += [
                "",
                "## Failures",
                "",
                "| case | ep | seed | passed | end | plan | expected | note |",
                "|---|---:|---:|---|---|---|---|---|",
            ]
            for r in failures:
                lines.append(
                    f"| {r.case_id} | {r.episode} | {r.seed} | {_yes_no(r.passed)} | {r.end_reason} "
                    f"| {_md_cell(r.plan)} | {_md_cell(' / '.join(r.expected_plan_object))} "
                    f"| {_md_cell(r.error or r.note)} |"
                )
        pending = self.ungraded()
        if pending:
            lines += ["", f"{len(pending)} episode(s) still need an operator grade."]
        return "\n".join(lines) + "\n"


def load_report(path: str | Path) -> EvalReport:
    path = Path(path)
    try:
        return EvalReport.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read evaluation report {path}: {exc}") from exc


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _yes_no(value: bool | None) -> str:
    return "ungraded" if value is None else ("pass" if value else "fail")


def _md_cell(text: str) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def _csv_cell(value: Any) -> Any:
    return "" if value is None else value


def compare(a: EvalReport, b: EvalReport) -> str:
    """Markdown side by side of two runs: overall and per-category numbers with the change, then
    the cases whose verdict differs (the first thing to look at after changing a model)."""
    name_a, name_b = a.name, b.name
    if name_a == name_b:
        name_a, name_b = f"A: {name_a}", f"B: {name_b}"
    lines = [
        f"# Comparison: {a.suite}" + (f" vs {b.suite}" if b.suite != a.suite else ""),
        "",
        f"- A: {name_a} (policy `{a.policy}`, {a.summary()['episodes']} episodes)",
        f"- B: {name_b} (policy `{b.policy}`, {b.summary()['episodes']} episodes)",
        "",
    ]
    differs = [
        f"{what} ({x} vs {y})"
        for what, x, y in (
            ("seed", a.seed, b.seed),
            ("episodes per case", a.episodes_per_case, b.episodes_per_case),
            ("episodes per category", a.episodes_per_category, b.episodes_per_category),
            ("max steps", a.max_steps, b.max_steps),
            ("mode", a.mode, b.mode),
        )
        if x != y
    ]
    if differs:
        # Different seeds mean different scenes: the comparison is then not like for like.
        lines += [f"Not like for like: the runs differ in {', '.join(differs)}.", ""]
    lines += [
        "| category | success A | success B | change | plan acc. A | plan acc. B | valid A | valid B |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cats_a, cats_b = a.by_category(), b.by_category()
    rows = [("**all**", a.summary(), b.summary())]
    rows += [(cat, cats_a.get(cat), cats_b.get(cat)) for cat in _ordered_union(cats_a, cats_b)]
    for label, ca, cb in rows:
        sa = ca["success_rate"] if ca else None
        sb = cb["success_rate"] if cb else None
        lines.append(
            f"| {label} | {_pct(sa)} | {_pct(sb)} | {_delta(sa, sb)} "
            f"| {_pct(ca['plan_accuracy'] if ca else None)} | {_pct(cb['plan_accuracy'] if cb else None)} "
            f"| {_pct(ca['valid_action_rate'] if ca else None)} | {_pct(cb['valid_action_rate'] if cb else None)} |"
        )
    cases_a, cases_b = a.by_case(), b.by_case()
    changed = [
        (cid, cases_a[cid]["success_rate"], cases_b[cid]["success_rate"])
        for cid in _ordered_union(cases_a, cases_b)
        if cid in cases_a and cid in cases_b and cases_a[cid]["success_rate"] != cases_b[cid]["success_rate"]
    ]
    only = sorted(set(cases_a) ^ set(cases_b))
    lines += ["", "## Cases that changed", ""]
    if changed:
        lines += ["| case | success A | success B | change |", "|---|---:|---:|---:|"]
        lines += [f"| {cid} | {_pct(sa)} | {_pct(sb)} | {_delta(sa, sb)} |" for cid, sa, sb in changed]
    else:
        lines.append("No case changed its success rate.")
    if only:
        lines += ["", f"Cases in only one run: {', '.join(only)}."]
    return "\n".join(lines) + "\n"


def _ordered_union(a: dict, b: dict) -> list[str]:
    return list(a) + [k for k in b if k not in a]


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    d = round(100 * (b - a))
    return f"{d:+d} pp" if d else "="


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
class _EpisodeCollector:
    """Loop subscriber that keeps what grading needs from each step (not the frames)."""

    def __init__(self) -> None:
        self.plans: list[str] = []
        self.valid = 0
        self.steps = 0
        self.step_ms: list[float] = []
        self.ttft_ms: float | None = None
        self.errors: list[str] = []

    def __call__(self, event: Any) -> None:
        from rt2_cot.loop_events import StepRecord

        if not isinstance(event, StepRecord):
            return
        out = event.output
        self.steps += 1
        self.plans.append(out.plan or "")
        if out.command is not None:
            self.valid += 1
        elif out.error:
            self.errors.append(out.error)
        self.step_ms.append(out.latency_ms)
        if self.ttft_ms is None and out.ttft_ms is not None:
            self.ttft_ms = out.ttft_ms


PolicyFactory = Callable[[Any], Any]  # (sim or None) -> rt2_cot.policy.Policy


class SuiteRun:
    """One suite run, stoppable from another thread (the console's Stop button).

    `rig` is `(sim, arm, camera)`; by default a simulator rig is built. With `manual=True` (a real
    robot) nothing is judged automatically: `on_case_start(case, episode)` is called before each
    episode so the operator can set the scene up, and results come back with `grade=None`.
    """

    def __init__(
        self,
        suite: Suite,
        policy_factory: PolicyFactory,
        episodes_per_case: int = 1,
        seed: int = 0,
        on_result: Callable[[EpisodeResult], None] | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        *,
        rig: tuple[Any, Any, Any] | None = None,
        shield: Any = None,
        manual: bool = False,
        subscribers: Sequence[Callable[[Any], None]] = (),
        on_case_start: Callable[[Case, int], None] | None = None,
        rate_hz: float | None = None,
        model: str = "",
        label: str = "",
        episodes_per_category: int | None = None,
    ) -> None:
        if episodes_per_category is not None and episodes_per_category < 1:
            raise ConfigError("episodes per category must be at least 1")
        if episodes_per_case < 1:
            raise ConfigError("episodes per case must be at least 1")
        if max_steps < 1:
            raise ConfigError("max steps must be at least 1")
        self.suite = suite
        self.policy_factory = policy_factory
        self.episodes_per_case = episodes_per_case
        self.episodes_per_category = episodes_per_category
        self.seed = seed
        self.on_result = on_result
        self.max_steps = max_steps
        self.rig = rig
        self.shield = shield
        self.manual = manual
        self.subscribers = list(subscribers)
        self.on_case_start = on_case_start
        self.rate_hz = rate_hz
        self.model = model
        self.label = label
        self._stop = threading.Event()
        self._loop: Any = None
        self._lock = threading.Lock()
        # The report being filled in, readable while the run goes on (live tables, periodic saves).
        self.report: EvalReport | None = None

    def stop(self) -> None:
        """End the run within one control step (thread-safe); the report keeps finished episodes."""
        self._stop.set()
        with self._lock:
            loop = self._loop
        if loop is not None:
            loop.stop()

    def episodes_for(self, case: Case) -> int:
        """Episodes to run for `case`: the per-case count, or with `episodes_per_category` N an
        even share of N over the category's cases, rounded up (RT-2 reports per category)."""
        if self.episodes_per_category is None:
            return self.episodes_per_case
        peers = sum(c.category == case.category for c in self.suite.cases)
        return -(-self.episodes_per_category // peers)

    def total_episodes(self) -> int:
        return sum(self.episodes_for(c) for c in self.suite.cases)

    def _rate_hz(self) -> float:
        # The simulator has no wall clock to keep up with, so it runs as fast as the policy allows;
        # a real robot keeps the console's control rate.
        if self.rate_hz is not None:
            return self.rate_hz
        return 10.0 if self.manual else 1e6

    def run(self) -> EvalReport:
        from rt2_cot.control_loop import ControlLoop

        if self.rig is not None:
            sim, arm, camera = self.rig
        else:
            sim, arm, camera = _make_sim_rig()
            arm.connect()
            camera.connect()
        t0 = time.monotonic()
        report: EvalReport | None = None
        try:
            shield = self.shield if self.shield is not None else _make_shield(sim, arm)
            tasks = {} if self.manual else {c.id: build_task(c, self.suite.path) for c in self.suite.cases}
            policy = self.policy_factory(sim)
            report = EvalReport(
                suite=self.suite.name,
                policy=getattr(policy, "name", type(policy).__name__),
                model=self.model,
                mode="manual" if self.manual else "sim",
                seed=self.seed,
                episodes_per_case=self.episodes_per_case,
                episodes_per_category=self.episodes_per_category,
                max_steps=self.max_steps,
                suite_path=self.suite.path,
                label=self.label,
            )
            self.report = report
            for case in self.suite.cases:
                for episode, scene_seed in enumerate(case.episode_seeds(self.seed, self.episodes_for(case))):
                    result = None
                    if not self._stop.is_set():
                        result = self._run_episode(
                            ControlLoop, (sim, arm, camera), shield, policy, case, tasks, episode, scene_seed
                        )
                    if result is None:  # stopped (or e-stopped): an interrupted episode has no verdict
                        report.stopped = True
                        return report
                    report.results.append(result)
                    if self.on_result is not None:
                        self.on_result(result)
        finally:
            if report is not None:
                report.duration_s = time.monotonic() - t0
            if self.rig is None:  # a rig we built is ours to release
                camera.disconnect()
                arm.disconnect()
                sim.close()
        return report

    def _run_episode(
        self,
        loop_cls: Any,
        rig: tuple[Any, Any, Any],
        shield: Any,
        policy: Any,
        case: Case,
        tasks: dict[str, Any],
        episode: int,
        scene_seed: int,
    ) -> EpisodeResult | None:
        sim, arm, camera = rig
        if self.on_case_start is not None:
            self.on_case_start(case, episode)
            if self._stop.is_set():  # stopped while the operator was setting the scene up
                return None
        target_point = reference_point = None
        if not self.manual:
            sim.reset(tasks[case.id], seed=scene_seed)
            target_point = _image_point(sim, tasks[case.id].target)
            if tasks[case.id].goal in ("near", "on") and tasks[case.id].reference:
                reference_point = _image_point(sim, tasks[case.id].reference)
            # A watchdog hold latches the sim arm until it is homed; every episode starts fresh.
            home = getattr(arm, "home", None)
            if home is not None:
                home()
        collector = _EpisodeCollector()
        loop = loop_cls(
            camera,
            shield,
            policy,
            subscribers=[collector, *self.subscribers],
            rate_hz=self._rate_hz(),
            max_steps=self.max_steps,
            success_fn=None if self.manual else sim.success,
        )
        with self._lock:
            self._loop = loop
        try:
            ended = loop.run_episode(case.instruction)
        finally:
            with self._lock:
                self._loop = None
        if ended.reason == "estop" or (ended.reason == "stop" and self._stop.is_set()):
            # An e-stop ends the whole run (the operator must reset it); a stopped episode has no
            # meaningful verdict, so neither is reported.
            self._stop.set()
            return None
        # In the simulator the predicate on the final state is the verdict, whatever ended the
        # episode (the model may terminate right after a successful grasp, before success_fn runs).
        success = None if self.manual else bool(ended.success) or bool(sim.success())
        first_plan = next((p for p in collector.plans if p.strip()), "")
        plans = [p for p in collector.plans if p.strip()]
        step_acc = (
            sum(plan_names_object(p, case.expected_plan_object) for p in plans) / len(plans) if plans else 0.0
        )
        error = (
            ended.message if ended.reason == "error" else (collector.errors[0] if collector.errors else "")
        )
        result = EpisodeResult(
            case_id=case.id,
            category=case.category,
            instruction=case.instruction,
            split=case.split,
            episode=episode,
            seed=scene_seed,
            expected_plan_object=case.expected_plan_object,
            criterion=case.success.describe(),
            success=success,
            end_reason=ended.reason,
            steps=collector.steps,
            valid_steps=collector.valid,
            plan=first_plan,
            plan_correct=plan_names_object(first_plan, case.expected_plan_object),
            plan_step_accuracy=round(step_acc, 4),
            plan_point_error=_point_error(first_plan, target_point),
            plan_reference_error=_point_error(first_plan, reference_point, which=1),
            mean_step_ms=round(sum(collector.step_ms) / len(collector.step_ms), 2)
            if collector.step_ms
            else 0.0,
            ttft_ms=collector.ttft_ms,
            error=error,
        )
        logger.info(
            "{} ep {} seed {}: {} in {} steps ({}), plan {!r} {}",
            case.id,
            episode,
            scene_seed,
            _yes_no(result.passed),
            result.steps,
            result.end_reason,
            result.plan if len(result.plan) <= 80 else result.plan[:77] + "...",
            "names the object" if result.plan_correct else f"misses {case.expected_plan_object[0]!r}",
        )
        return result


def run_suite(
    suite: Suite,
    policy_factory: PolicyFactory,
    episodes_per_case: int = 1,
    seed: int = 0,
    on_result: Callable[[EpisodeResult], None] | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    **kwargs: Any,
) -> EvalReport:
    """Run every case `episodes_per_case` times closed loop and return the graded report.

    `policy_factory(sim)` builds the policy once per run (the oracle needs the simulator; a model
    policy ignores it). Keyword arguments go to `SuiteRun` (rig, shield, manual, subscribers,
    on_case_start, rate_hz, model, label); use `SuiteRun` directly to stop a run from another thread.
    """
    return SuiteRun(suite, policy_factory, episodes_per_case, seed, on_result, max_steps, **kwargs).run()


def _make_sim_rig() -> tuple[Any, Any, Any]:
    from robot_io.sim import make_sim_rig

    return make_sim_rig()


def _make_shield(sim: Any, arm: Any) -> Any:
    """The same shield the console and `rt2-cot sim` put between every policy and the arm."""
    try:
        from robot_io.safety import SafetyLimits, SafetyShield
    except ImportError as exc:  # nothing may move without the shield, not even in an evaluation
        raise Rt2CotError(
            f"robot_io.safety is not available ({exc}); evaluation runs only behind the shield"
        ) from exc
    return SafetyShield(arm, SafetyLimits())
