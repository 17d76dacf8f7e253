"""Closed-loop evaluation: the oracle solves the smoke suite, useless policies score nothing, plan
grading is robust to wording, and the Markdown/CSV/JSON reports and comparisons say the right thing."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from pathlib import Path

import pytest

from robot_io.types import EndEffectorCommand
from rt2_cot.errors import ConfigError
from rt2_cot.evaluation import (
    EpisodeResult,
    EvalReport,
    SuiteRun,
    compare,
    load_report,
    load_suite,
    plan_names_object,
    run_suite,
)
from rt2_cot.policy import PolicyOutput

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "prompts" / "suites" / "smoke.yaml"


# -- plan grading ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("plan", "expected", "names_it"),
    [
        ("pick up the red block", "red block", True),
        ("Plan: Pick up the RED blocks.", "red block", True),
        ("place the red ball on the number three", "number 3", True),
        ("place the red ball on the number 3", ["number 3", "three"], True),
        ("pick up the grey rock", "rock", True),
        ("pick up the gray can", "grey can", True),
        ("move the blue block near the red ball", "red block", False),
        ("pick up the red can", "red block", False),
        ("place the red ball on the number 13", "number 3", False),
        ("", "red block", False),
        ("pick up the drink", "red can", False),
        ("place the red ball at 40 50 on the number 3 at 3 100", "number 3", True),
        ("pick up the red can at 3 12", "3", False),  # image points are not number words
    ],
)
def test_plan_names_object_matches_meaning_not_spelling(plan, expected, names_it):
    assert plan_names_object(plan, expected) is names_it


# -- reports from known results ----------------------------------------------------------------------
def _result(case_id, category, passed, plan_ok=True, steps=10, valid=10, split="train", episode=0):
    return EpisodeResult(
        case_id=case_id,
        category=category,
        instruction=f"do {case_id}",
        split=split,
        episode=episode,
        seed=100 + episode,
        expected_plan_object=("red block",),
        criterion="the red block is lifted off the table",
        success=passed,
        end_reason="success" if passed else "step_limit",
        steps=steps,
        valid_steps=valid,
        plan="pick up the red block" if plan_ok else "pick up the blue | ball",
        plan_correct=plan_ok,
        plan_step_accuracy=1.0 if plan_ok else 0.0,
    )


def _report(policy="a", passes=(True, True, False, False)):
    results = [
        _result("s1", "seen_tasks", passes[0]),
        _result("s1", "seen_tasks", passes[1], episode=1),
        _result("r1", "reasoning", passes[2], plan_ok=False, steps=20, valid=15, split="heldout_phrasing"),
        _result("c1", "chain_of_thought", passes[3], steps=10, valid=5),
    ]
    return EvalReport(
        suite="demo", policy=policy, results=results, seed=3, episodes_per_case=2, started_at=0.0
    )


def test_report_numbers_per_run_category_and_split():
    report = _report()
    d = report.to_dict()
    assert d["episodes"] == 4
    assert d["success_rate"] == 0.5
    assert d["plan_accuracy"] == 0.75
    assert d["valid_action_rate"] == pytest.approx(40 / 50)
    assert d["by_category"]["seen_tasks"] == {
        "episodes": 2,
        "graded": 2,
        "success_rate": 1.0,
        "plan_accuracy": 1.0,
        "valid_action_rate": 1.0,
        "mean_steps": 10.0,
        "mean_step_ms": 0.0,
        "plan_point_error": None,
        "plan_reference_error": None,
    }
    assert d["by_category"]["reasoning"]["success_rate"] == 0.0
    assert d["by_split"]["heldout_phrasing"]["episodes"] == 1
    assert len(d["results"]) == 4 and d["results"][0]["passed"] is True
    json.dumps(d)  # the CLI prints exactly this


def test_markdown_report_shows_totals_categories_cases_and_failures():
    md = _report().to_markdown()
    assert "# Evaluation: demo" in md
    assert "**success: 50%**, plan accuracy: 75%, valid actions: 80%" in md
    assert "| seen_tasks | 2 | 100% | 100% | 100% |" in md
    assert "| reasoning | 1 | 0% | 0% | 75% |" in md
    assert "| r1 | reasoning | do r1 | 0% | 0% | 20.0 |" in md
    assert "## Failures" in md
    # A pipe inside generated text must not break the table.
    assert "pick up the blue \\| ball" in md
    assert "## By split" in md


def test_csv_report_has_one_row_per_episode():
    rows = list(csv.DictReader(io.StringIO(_report().to_csv())))
    assert len(rows) == 4
    assert rows[0]["case_id"] == "s1" and rows[0]["passed"] == "True" and rows[0]["suite"] == "demo"
    assert rows[2]["split"] == "heldout_phrasing" and rows[2]["valid_steps"] == "15"
    assert rows[0]["grade"] == ""  # not graded by an operator


def test_manual_grades_override_and_fill_in_results(tmp_path):
    report = _report()
    for r in report.results:
        r.success = None  # a real robot: nobody judged automatically
    assert report.summary()["success_rate"] is None
    assert "success: n/a" in report.to_markdown()
    assert "4 episode(s) still need an operator grade" in report.to_markdown()
    report.set_grade("s1", 0, True, "clean grasp")
    report.set_grade("c1", 0, False, "took the apple")
    s = report.summary()
    assert (s["graded"], s["success_rate"]) == (2, 0.5)
    assert len(report.ungraded()) == 2
    # Saved and loaded, grades and notes survive (the console compares saved runs).
    back = load_report(report.save(tmp_path / "run.json"))
    assert back.summary() == report.summary()
    assert [r.note for r in back.results] == [r.note for r in report.results]
    with pytest.raises(Exception, match="no result for case"):
        report.set_grade("nope", 0, True)
    (tmp_path / "junk.json").write_text('["not", "a", "report"]')
    with pytest.raises(ConfigError, match="not an evaluation report"):
        load_report(tmp_path / "junk.json")


def test_compare_puts_two_runs_side_by_side():
    a = _report("a", passes=(True, False, False, False))
    b = _report("b", passes=(True, True, True, False))
    a.label, b.label = "before", "after"
    md = compare(a, b)
    assert "- A: before" in md and "- B: after" in md
    assert "| **all** | 25% | 75% | +50 pp |" in md
    assert "| seen_tasks | 50% | 100% | +50 pp |" in md
    assert "| chain_of_thought | 0% | 0% | = |" in md
    assert "## Cases that changed" in md
    assert "| r1 | 0% | 100% | +100 pp |" in md
    assert "| c1 |" not in md.split("## Cases that changed")[1]
    assert "No case changed" in compare(a, a)
    assert "Not like for like" not in md
    b.seed = 4
    assert "Not like for like: the runs differ in seed (3 vs 4)." in compare(a, b)


# -- closed loop in the simulator ---------------------------------------------------------------------
class HoldStill:
    """A useless policy: a valid action every step, which never moves anything."""

    name = "hold-still"

    def reset(self, instruction: str) -> None:
        pass

    def step(self, observation, on_event=None) -> PolicyOutput:
        cmd = EndEffectorCommand.hold(observation.arm.gripper)
        return PolicyOutput(command=cmd, tokens=(0, 128, 128, 128, 128, 128, 128, 255), plan="hold still")


class Babble:
    """A policy whose text never parses: nothing may move, every step counts as invalid."""

    name = "babble"

    def reset(self, instruction: str) -> None:
        pass

    def step(self, observation, on_event=None) -> PolicyOutput:
        return PolicyOutput(
            command=None, tokens=None, plan="", text="banana banana", error="no action in text"
        )


@pytest.fixture(scope="module")
def rig():
    from robot_io.sim import make_sim_rig

    sim, arm, camera = make_sim_rig(width=96, height=72)  # small frames: the policies here do not look
    arm.connect()
    camera.connect()
    yield sim, arm, camera
    sim.close()


try:  # the real shield (robot_io.safety, another engineer's) whenever it is there
    from robot_io.safety import SafetyLimits, SafetyShield
except ImportError:
    SafetyShield = None


class PassThroughShield:
    """Stand-in with the shield's interface, only while robot_io.safety has not landed."""

    def __init__(self, arm):
        self.arm, self.estopped, self.last_notes = arm, False, ()

    def send(self, command):
        return None if command is None else self.arm.apply(command)


def _shield(arm):
    return SafetyShield(arm, SafetyLimits()) if SafetyShield is not None else PassThroughShield(arm)


def test_oracle_solves_the_smoke_suite_through_the_loop_and_shield(rig):
    from rt2_cot.oracle_policy import OraclePolicy

    suite = load_suite(SMOKE)
    seen = []
    report = run_suite(
        suite,
        OraclePolicy,
        episodes_per_case=2,
        seed=0,
        on_result=seen.append,
        max_steps=80,
        rig=rig,
        shield=_shield(rig[1]),
    )
    s = report.summary()
    assert s["episodes"] == 2 * len(suite.cases) == len(seen)
    assert s["success_rate"] >= 0.8, report.to_markdown()
    assert s["plan_accuracy"] == 1.0
    assert s["valid_action_rate"] == 1.0
    assert set(report.by_category()) == {c.category for c in suite.cases}
    assert all(r.steps > 1 for r in report.results)
    assert len({(r.case_id, r.seed) for r in report.results}) == len(report.results)  # no scene repeated


def test_a_policy_that_holds_still_scores_nothing(rig):
    report = run_suite(
        load_suite(SMOKE), lambda sim: HoldStill(), seed=0, max_steps=12, rig=rig, shield=_shield(rig[1])
    )
    s = report.summary()
    assert s["success_rate"] == 0.0
    assert s["plan_accuracy"] == 0.0
    assert s["valid_action_rate"] == 1.0
    assert all(r.end_reason == "step_limit" and r.steps == 12 for r in report.results)


class PointsAt:
    """Holds still with a grounded plan that points `offset` units right of the target's true spot."""

    name = "points-at"

    def __init__(self, sim, offset: int):
        self.sim, self.offset = sim, offset

    def reset(self, instruction: str) -> None:
        from rt2_cot.data.grounding import scene_points

        self.point = scene_points(self.sim, 320, 240)[self.sim.task.target]

    def step(self, observation, on_event=None) -> PolicyOutput:
        x, y = self.point[0] + self.offset, self.point[1]
        cmd = EndEffectorCommand.hold(observation.arm.gripper)
        plan = f"pick up the {self.sim.task.target} at {x} {y}"
        return PolicyOutput(command=cmd, tokens=(0, 128, 128, 128, 128, 128, 128, 255), plan=plan)


@pytest.mark.parametrize("offset", [0, 12])
def test_plan_point_error_measures_how_far_a_grounded_plan_points_from_the_target(rig, offset):
    report = run_suite(
        load_suite(SMOKE),
        lambda sim: PointsAt(sim, offset),
        seed=0,
        max_steps=2,
        rig=rig,
        shield=_shield(rig[1]),
    )
    assert all(r.plan_point_error == pytest.approx(offset, abs=1.5) for r in report.results)
    assert report.summary()["plan_point_error"] == pytest.approx(offset, abs=1.5)
    assert report.to_dict()["plan_point_error"] == report.summary()["plan_point_error"]  # in --json
    assert "units (of 256) from the target" in report.to_markdown()
    # Plans without points (RT-2's plain plans) have no grounding error rather than a zero one.
    plain = run_suite(
        load_suite(SMOKE), lambda sim: HoldStill(), seed=0, max_steps=2, rig=rig, shield=_shield(rig[1])
    )
    assert plain.summary()["plan_point_error"] is None


class PointsAtBoth(PointsAt):
    """Names the target at its true spot and the goal (object or tile) `offset` units below its own."""

    name = "points-at-both"

    def reset(self, instruction: str) -> None:
        from rt2_cot.data.grounding import scene_points

        points = scene_points(self.sim, 320, 240)
        self.target, self.reference = points[self.sim.task.target], points.get(self.sim.task.reference)

    def step(self, observation, on_event=None) -> PolicyOutput:
        task = self.sim.task
        plan = f"move the {task.target} at {self.target[0]} {self.target[1]}"
        if self.reference is not None:
            label = f"number {task.reference}" if task.reference.isdigit() else task.reference
            plan += f" near the {label} at {self.reference[0]} {self.reference[1] + self.offset}"
        cmd = EndEffectorCommand.hold(observation.arm.gripper)
        return PolicyOutput(command=cmd, tokens=(0, 128, 128, 128, 128, 128, 128, 255), plan=plan)


def test_plan_reference_error_measures_the_plans_point_for_where_to_put_the_object(rig):
    report = run_suite(
        load_suite(SMOKE),
        lambda sim: PointsAtBoth(sim, 9),
        seed=0,
        max_steps=2,
        rig=rig,
        shield=_shield(rig[1]),
    )
    assert {r.plan_reference_error for r in report.results if "lifted" in r.criterion} == {None}
    placed = [r for r in report.results if "lifted" not in r.criterion]
    assert len(placed) == 3  # near an object, on a symbol, on a sum
    assert all(r.plan_reference_error == pytest.approx(9, abs=1.5) for r in placed)
    assert all(r.plan_point_error == pytest.approx(0, abs=1.5) for r in placed)
    assert report.summary()["plan_reference_error"] == pytest.approx(9, abs=1.5)
    assert report.to_dict()["plan_reference_error"] == report.summary()["plan_reference_error"]
    assert "from the reference" in report.to_markdown()
    assert "plan_reference_error" in report.to_csv().splitlines()[0]


def test_point_errors_skip_the_grippers_point():
    from rt2_cot.evaluation import _point_error

    plan = "move the apple at 30 41 near the red ball at 200 97 with the gripper at 128 78"
    assert _point_error(plan, (30, 41)) == 0
    assert _point_error(plan, (200, 100), which=1) == 3
    # A plan that leaves out where the reference is has no reference error, not the gripper's.
    assert _point_error("move the apple at 30 41 with the gripper at 128 78", (128, 78), which=1) is None


def test_unparseable_output_moves_nothing_and_counts_as_invalid(rig):
    report = run_suite(
        load_suite(SMOKE), lambda sim: Babble(), seed=0, max_steps=5, rig=rig, shield=_shield(rig[1])
    )
    s = report.summary()
    assert (s["success_rate"], s["valid_action_rate"]) == (0.0, 0.0)
    assert all(r.error == "no action in text" for r in report.results)


@pytest.mark.skipif(SafetyShield is None, reason="robot_io.safety (the shield) is not in the tree yet")
def test_default_run_builds_its_own_sim_rig_and_shield():
    from rt2_cot.oracle_policy import OraclePolicy

    suite = load_suite(SMOKE).select(case_ids=["smoke_pick_red_block"])
    report = run_suite(suite, OraclePolicy, seed=1)
    assert report.summary()["success_rate"] == 1.0
    assert report.policy == "oracle" and report.mode == "sim"


def test_stop_from_another_thread_ends_the_run_within_a_step(rig):
    class Slow(HoldStill):
        def step(self, observation, on_event=None):
            time.sleep(0.02)
            return super().step(observation, on_event)

    run = SuiteRun(load_suite(SMOKE), lambda sim: Slow(), max_steps=1000, rig=rig, shield=_shield(rig[1]))
    threading.Timer(0.3, run.stop).start()
    t0 = time.monotonic()
    report = run.run()
    assert time.monotonic() - t0 < 5.0
    assert report.stopped
    assert report.results == []  # the interrupted episode has no verdict
    assert run.report is report


def test_manual_mode_waits_for_the_operator_and_leaves_grades_empty(rig):
    _sim, arm, camera = rig
    started = []
    report = run_suite(
        load_suite(SMOKE).select(case_ids=["smoke_thirsty", "smoke_move_near"]),
        lambda _sim: HoldStill(),
        max_steps=3,
        rig=(None, arm, camera),
        shield=_shield(arm),
        manual=True,
        rate_hz=200.0,
        on_case_start=lambda case, ep: started.append((case.id, ep)),
    )
    assert started == [("smoke_move_near", 0), ("smoke_thirsty", 0)]
    assert report.mode == "manual"
    assert all(r.success is None and r.grade is None for r in report.results)
    assert report.results[1].criterion == "the red can is lifted off the table"
    report.set_grade("smoke_thirsty", 0, True, "handed over the can")
    assert report.by_category()["chain_of_thought"]["success_rate"] == 1.0


@pytest.mark.skipif(SafetyShield is None, reason="robot_io.safety (the shield) is not in the tree yet")
def test_cli_eval_oracle_json_and_reports(tmp_path, capsys):
    from rt2_cot.cli import main

    md, csv_path, saved = tmp_path / "r.md", tmp_path / "r.csv", tmp_path / "r.json"
    code = main(
        [
            "eval",
            "--suite",
            str(SMOKE),
            "--policy",
            "oracle",
            "--episodes",
            "1",
            "--seed",
            "2",
            "--report",
            str(md),
            "--csv",
            str(csv_path),
            "--save",
            str(saved),
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episodes"] == 5 and out["success_rate"] >= 0.8
    assert out["plan_accuracy"] == 1.0 and out["valid_action_rate"] == 1.0
    assert set(out["by_category"]["reasoning"]) >= {"episodes", "success_rate", "plan_accuracy"}
    assert "## By category" in md.read_text()
    assert len(csv_path.read_text().splitlines()) == 6
    # A second run compared against the saved one.
    code = main(
        [
            "eval",
            "--suite",
            str(SMOKE),
            "--policy",
            "oracle",
            "--case",
            "smoke_thirsty",
            "--compare-with",
            str(saved),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "smoke (oracle): 1 episodes" in text and "# Comparison: smoke" in text


@pytest.mark.skipif(SafetyShield is None, reason="robot_io.safety (the shield) is not in the tree yet")
def test_cli_eval_drives_a_real_transformers_checkpoint(tmp_path, capsys):
    """`--model DIR` goes through load_backend + VLAPolicy: a random tiny VLM fails every case, but
    constrained decoding still makes every step a valid action."""
    from rt2_cot.cli import main
    from rt2_cot.tiny_vlm import build_tiny_paligemma

    path = build_tiny_paligemma(tmp_path / "tiny")
    code = main(
        [
            "eval",
            "--suite",
            str(SMOKE),
            "--model",
            str(path),
            "--case",
            "smoke_thirsty",
            "--max-steps",
            "2",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"].startswith("vla:") and out["model"] == str(path)
    assert out["episodes"] == 1 and out["valid_action_rate"] == 1.0
    assert out["success_rate"] == 0.0


def test_cli_eval_bad_model_or_options_fail_in_one_line(capsys, tmp_path):
    from rt2_cot.cli import main

    for argv, fragment in [
        (["--model", str(tmp_path / "missing")], "not found"),
        (["--policy", "oracle", "--episodes", "0"], "--episodes must be at least 1"),
        (["--policy", "oracle", "--category", "reasonin"], "unknown categor"),
    ]:
        assert main(["eval", "--suite", str(SMOKE), *argv]) == 2
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and fragment in errors[0], captured.err
        assert "Traceback" not in captured.err and captured.out == ""


def test_episodes_per_category_share_evenly_over_a_categorys_cases():
    suite = load_suite(SMOKE)  # seen_tasks has two cases, the other categories one each
    run = SuiteRun(suite, lambda sim: HoldStill(), episodes_per_category=3)
    per_case = {c.id: run.episodes_for(c) for c in suite.cases}
    assert per_case["smoke_pick_red_block"] == per_case["smoke_move_near"] == 2
    assert per_case["smoke_thirsty"] == 3
    assert run.total_episodes() == 2 * 2 + 3 * 3
    assert SuiteRun(suite, lambda sim: HoldStill(), episodes_per_case=4).total_episodes() == 20


class RecordingBackend:
    """Acts (holds still) without writing a plan; remembers what it was given."""

    name = "recording"

    def __init__(self) -> None:
        self.given: list[str | None] = []

    def stream(self, request, stop=None):
        self.given.append(request.given_plan)
        yield " 0 128 128 128 128 128 128 255"


@pytest.mark.parametrize("grounded", [True, False])
def test_oracle_plan_policy_gives_the_simulators_plan_and_the_model_only_acts(rig, grounded):
    from rt2_cot.data.grounding import plan_points, scene_points, strip_grounding
    from rt2_cot.vla_policy import OraclePlanPolicy

    backend = RecordingBackend()
    sim = rig[0]
    targets = []

    def factory(sim_):
        assert sim_ is sim
        policy = OraclePlanPolicy(backend, sim_, grounded=grounded)
        real_plan = policy.oracle_plan

        def plan_and_truth():
            targets.append(scene_points(sim_, 320, 240)[sim_.task.target])
            return real_plan()

        policy.oracle_plan = plan_and_truth
        return policy

    report = run_suite(load_suite(SMOKE), factory, seed=0, max_steps=3, rig=rig, shield=_shield(rig[1]))
    assert report.policy.startswith("vla+oracle-plan:")
    assert backend.given and all(g for g in backend.given)  # every step: a given plan, never written
    for given, truth in zip(backend.given, targets, strict=True):
        if grounded:
            _name, x, y = plan_points(given)[0]
            assert (x, y) == tuple(truth)  # the target's true point, this very step
        else:
            assert given == strip_grounding(given) and plan_points(given) == []
    if grounded:
        assert report.summary()["plan_point_error"] == pytest.approx(0, abs=1.5)
