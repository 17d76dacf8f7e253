"""The shipped reasoning suites: every case poses a real simulator scene, RT-2's categories are all
covered, and a malformed suite fails with one line that names the file, the case and the field."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rt2_cot.errors import ConfigError
from rt2_cot.evaluation import CATEGORIES, build_task, list_suites, load_suite, plan_names_object

REPO = Path(__file__).resolve().parents[2]
SUITES = list_suites(REPO / "prompts" / "suites")


def test_the_shipped_suites_are_found():
    names = {p.name for p in SUITES}
    assert {"rt2_core.yaml", "smoke.yaml"} <= names


@pytest.fixture(scope="module")
def sim():
    from robot_io.sim.env import TabletopSim

    s = TabletopSim()
    yield s
    s.close()


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_every_case_of_every_suite_resets_the_simulator(path, sim):
    suite = load_suite(path)
    assert suite.cases
    for case in suite.cases:
        task = build_task(case, path)
        seed = case.episode_seeds(0, 1)[0]
        assert case.seeds[0] <= seed < case.seeds[1]
        sim.reset(task, seed=seed)
        names = {o.name for o in sim.objects}
        assert case.success.object in names, f"{case.id}: {case.success.object} missing from {names}"
        if case.success.goal == "near":
            assert case.success.reference in names, case.id
        if case.success.goal == "on":
            assert case.success.reference in {t.name for t in sim.tiles}, case.id
        for required in case.scene.get("objects", []):
            assert required in names, case.id
        if "background" in case.scene:
            assert sim.task.background == case.scene["background"], case.id
        # The simulator's own plan names what the suite grades plans against.
        assert plan_names_object(task.plan, case.expected_plan_object), case.id
        # A freshly reset scene is not already solved (else the case grades nothing).
        assert not sim.success(), f"{case.id} is solved before the policy moves"


def test_rt2_core_covers_every_rt2_category_with_several_cases():
    suite = load_suite(REPO / "prompts" / "suites" / "rt2_core.yaml")
    per_category = Counter(c.category for c in suite.cases)
    for category in CATEGORIES:
        assert per_category[category] >= 5, f"{category}: only {per_category[category]} cases"
    by_id = {c.id: c for c in suite.cases}
    # Held-out categories are posed with the simulator's held-out splits; seen tasks are not.
    assert all(c.split == "train" for c in suite.cases if c.category == "seen_tasks")
    for category, split in [
        ("paraphrases", "heldout_phrasing"),
        ("unseen_objects", "heldout_objects"),
    ]:
        assert all(c.split == split for c in suite.cases if c.category == category), category
    assert {c.split for c in suite.cases if c.category == "unseen_backgrounds"} == {
        "heldout_background",
        "heldout_distractors",
    }
    # The examples the issue names exist, with the right answers.
    instructions = {c.instruction.lower(): c for c in suite.cases}
    assert instructions["put the red block on the sum of two plus one"].success.reference == "3"
    assert instructions["i am thirsty"].expected_plan_object == ("red can",)
    assert instructions["pick up something you could hammer a nail with"].success.object == "rock"
    reasoning = " ".join(c.instruction for c in suite.cases if c.category == "reasoning")
    for word in ("smallest", "largest", "closest", "same colour", "plus", "minus"):
        assert word in reasoning, word
    assert by_id["unseen_pick_lemon"].success.object == "lemon"


# -- malformed suites ---------------------------------------------------------------------------------
GOOD_CASE = """
  - id: c1
    category: seen_tasks
    instruction: pick up the red block
    task: {family: pick}
    success: {goal: lift, object: red block}
    expected_plan_object: red block
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


MALFORMED = [
    ("name: x\ncases: []\n", "`cases` must be a non-empty list", None),
    ("name: x\ncases:\n  - [1, 2\n", "not valid YAML at line", None),
    ("cases:" + GOOD_CASE, "`name` must be a non-empty string", None),
    ("name: x\nsuite: y\ncases:" + GOOD_CASE, "unknown top-level field(s) suite", None),
    ("name: x\ncases:" + GOOD_CASE.replace("seen_tasks", "seen"), "category 'seen' is not one of", "c1"),
    ("name: x\ncases:" + GOOD_CASE + GOOD_CASE, "duplicate case id", "c1"),
    (
        "name: x\ncases:" + GOOD_CASE.replace("    success: {goal: lift, object: red block}\n", ""),
        "`success` must be",
        "c1",
    ),
    (
        "name: x\ncases:" + GOOD_CASE.replace("goal: lift", "goal: grasp"),
        "`success.goal` must be one of",
        "c1",
    ),
    (
        "name: x\ncases:"
        + GOOD_CASE.replace("{goal: lift, object: red block}", "{goal: near, object: red block}"),
        "needs a `reference`",
        "c1",
    ),
    (
        "name: x\ncases:" + GOOD_CASE.replace("expected_plan_object: red block", "expected_plan_object: 3.5"),
        "expected_plan_object",
        "c1",
    ),
    (
        "name: x\ncases:" + GOOD_CASE.replace("instruction:", "instrucion:"),
        "unknown field(s) instrucion",
        "c1",
    ),
    ("name: x\ncases:" + GOOD_CASE + "    scene: {seeds: [5, 2]}\n", "`scene.seeds` must be", "c1"),
    ("name: x\ncases:" + GOOD_CASE + "    split: heldout_colours\n", "`split` must be one of", "c1"),
    # The simulator rejects what it cannot pose, and the suite cannot claim to test something else.
    (
        "name: x\ncases:" + GOOD_CASE.replace("object: red block", "object: golden block"),
        "unknown object 'golden block'",
        "c1",
    ),
    (
        "name: x\ncases:" + GOOD_CASE.replace("family: pick", "family: juggle"),
        "unknown task family 'juggle'",
        "c1",
    ),
    (
        "name: x\ncases:"
        + GOOD_CASE.replace("    task: {family: pick}\n", "").replace(
            "pick up the red block", "put the red ball on the sum of two plus two"
        ),
        "the simulator poses",
        "c1",
    ),
    (
        "name: x\ncases:"
        + GOOD_CASE.replace("expected_plan_object: red block", "expected_plan_object: blue ball"),
        "does not name any of",
        "c1",
    ),
]


@pytest.mark.parametrize(("text", "fragment", "case_id"), MALFORMED, ids=[m[1][:40] for m in MALFORMED])
def test_a_malformed_suite_gives_one_clear_error(tmp_path, text, fragment, case_id):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    message = str(info.value)
    assert fragment in message
    assert str(path) in message
    if case_id:
        assert f"case {case_id!r}" in message
    assert "\n" not in message


def test_a_simulator_plan_that_misses_the_goal_is_refused(tmp_path, monkeypatch):
    """If the simulator ever poses a task whose canonical plan names another goal than the one it
    judges (an oracle plan would then teach the wrong thing), the suite refuses to load."""
    import dataclasses

    import robot_io.sim.tasks as tasks

    real = tasks.task_from_dict

    def wrong_plan(d, rng=None):
        spec = real(d, rng)
        return dataclasses.replace(spec, plan=spec.plan.replace("number 3", "number 1"))

    monkeypatch.setattr(tasks, "task_from_dict", wrong_plan)
    text = (
        GOOD_CASE.replace("    task: {family: pick}\n", "")
        .replace("pick up the red block", "put the red block on the sum of two plus one")
        .replace("{goal: lift, object: red block}", '{goal: "on", object: red block, reference: "3"}')
    )
    with pytest.raises(ConfigError, match="does not mention the goal '3'"):
        load_suite(_write(tmp_path, "name: x\ncases:" + text))


def test_the_good_case_loads_and_bare_yaml_on_is_read_as_the_on_goal(tmp_path):
    assert load_suite(_write(tmp_path, "name: x\ncases:" + GOOD_CASE)).cases[0].id == "c1"
    text = """name: x
cases:
  - id: star
    category: symbol_understanding
    instruction: place the red block on the star
    task: {family: place_on_symbol}
    success: {goal: on, object: red block, reference: star}
    expected_plan_object: star
"""
    case = load_suite(_write(tmp_path, text)).cases[0]
    assert case.success.goal == "on"
    assert case.success.describe() == "the red block ends on the star"


def test_a_missing_suite_file_says_where_suites_live(tmp_path):
    with pytest.raises(ConfigError, match="not found; suites live in prompts/suites"):
        load_suite(tmp_path / "nope.yaml")


def test_select_narrows_a_suite_and_rejects_unknown_names():
    suite = load_suite(REPO / "prompts" / "suites" / "rt2_core.yaml")
    only = suite.select(categories=["reasoning"], split="train")
    assert only.cases and all(c.category == "reasoning" and c.split == "train" for c in only.cases)
    with pytest.raises(ConfigError, match="no case"):
        suite.select(case_ids=["nope"])
    with pytest.raises(ConfigError, match="unknown categor"):
        suite.select(categories=["reasonin"])


def test_episode_seeds_are_reproducible_distinct_and_follow_the_run_seed():
    case = load_suite(REPO / "prompts" / "suites" / "smoke.yaml").cases[0]
    a = case.episode_seeds(0, 20)
    assert a == case.episode_seeds(0, 20)
    assert len(set(a)) == 20
    assert a != case.episode_seeds(1, 20)
    assert all(case.seeds[0] <= s < case.seeds[1] for s in a)


def test_cli_malformed_suite_exits_nonzero_with_one_stderr_line(tmp_path):
    path = _write(tmp_path, "name: x\ncases:" + GOOD_CASE.replace("seen_tasks", "seen"))
    proc = subprocess.run(
        [sys.executable, "-m", "rt2_cot", "eval", "--suite", str(path), "--policy", "oracle"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: malformed suite") and "case 'c1'" in lines[0]
    assert proc.stdout == ""


def _word_edits(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_no_augmentation_phrasing_is_a_heldout_case_in_other_words():
    """Instruction augmentation (robot_io.sim.tasks.AUGMENT_PHRASINGS) trains on more phrasings; none
    of them, filled with a held-out phrasing case's own objects, is within one word of that case
    ("please lift the X" would be for "please lift up the X")."""
    from robot_io.sim.tasks import AUGMENT_PHRASINGS, NUMBER_WORDS

    suite = load_suite(REPO / "prompts" / "suites" / "rt2_core.yaml")
    checked = 0
    for case in suite.cases:
        if case.split != "heldout_phrasing":
            continue
        task = build_task(case)
        slots = {"target": task.target, "reference": task.reference, "tile": task.reference}
        if task.reference.isdigit():
            slots["tileword"] = NUMBER_WORDS[int(task.reference)]
        words = case.instruction.lower().rstrip(".!?").split()
        for template in AUGMENT_PHRASINGS[task.family]:
            try:
                text = template.format(**slots)
            except KeyError:
                continue
            assert _word_edits(text.split(), words) >= 2, (case.id, text)
            checked += 1
    assert checked >= 10
