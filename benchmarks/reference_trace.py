"""Where does each step's plan put the target and the reference? A closed-loop trace per episode.

`rt2-cot eval` scores the first plan only (`plan_point_error`, `plan_reference_error`). This runs
cases of a suite through the same control loop and shield and, at every step, measures the fresh
plan's two points (the object, and where it goes: "on the triangle at X Y") against where they are
in that step's image, so a plan that starts right and loses its reference on the way shows up:

    python benchmarks/reference_trace.py --case symbol_green_ball_on_triangle --episodes 6
    python benchmarks/reference_trace.py --case symbol_green_ball_on_triangle --episodes 6 --no-hold-reference

One line per episode on stdout: the verdict, then `target/reference` errors (0..255 image units)
step by step, `-` where the plan has no such point. `--json` prints one object instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere


def _error(point, truth) -> int | None:
    if point is None or truth is None:
        return None
    return round(math.hypot(point[1] - truth[0], point[2] - truth[1]))


def trace(
    suite_path: str, cases: list[str], model: str, episodes: int, max_steps: int, seed: int, hold: bool
):
    from rt2_cot.backends import load_backend
    from rt2_cot.data.grounding import located_points
    from rt2_cot.evaluation import SuiteRun, _image_point, _make_sim_rig, build_task, load_suite
    from rt2_cot.loop_events import StepRecord
    from rt2_cot.vla_policy import VLAPolicy

    suite = load_suite(suite_path).select(None, None, cases)
    tasks = {c.id: build_task(c, suite.path) for c in suite.cases}
    sim, arm, camera = _make_sim_rig()
    arm.connect()
    camera.connect()
    backend = load_backend(model)
    current: dict = {"case": None, "steps": []}

    def on_step(event) -> None:
        if not isinstance(event, StepRecord):
            return
        task = tasks[current["case"]]
        located = located_points(event.output.plan)
        truths = [
            _image_point(sim, task.target),
            _image_point(sim, task.reference) if task.reference else None,
        ]
        current["steps"].append([_error(located[i] if len(located) > i else None, truths[i]) for i in (0, 1)])

    def on_case_start(case, _episode) -> None:
        current["case"], current["steps"] = case.id, []

    episodes_out: list[dict] = []

    def on_result(result) -> None:
        episodes_out.append(
            {
                "case": result.case_id,
                "seed": result.seed,
                "passed": bool(result.passed),
                "end_reason": result.end_reason,
                "first_plan": result.plan,
                "errors": current["steps"],
            }
        )

    run = SuiteRun(
        suite,
        lambda _sim: VLAPolicy(backend, replan_every=1, hold_reference=hold),
        episodes_per_case=episodes,
        seed=seed,
        max_steps=max_steps,
        rig=(sim, arm, camera),
        subscribers=[on_step],
        on_case_start=on_case_start,
        on_result=on_result,
    )
    try:
        run.run()
    finally:
        camera.disconnect()
        arm.disconnect()
        sim.close()
    return episodes_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default=str(REPO / "prompts/suites/rt2_core.yaml"))
    parser.add_argument("--case", action="append", required=True, help="case id (repeatable)")
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--episodes", type=int, default=6, help="episodes per case")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hold-reference", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out = trace(
        args.suite, args.case, args.model, args.episodes, args.max_steps, args.seed, args.hold_reference
    )
    if args.json:
        print(json.dumps({"hold_reference": args.hold_reference, "episodes": out}))
        return 0
    for ep in out:
        cells = " ".join("/".join("-" if e is None else str(e) for e in step) for step in ep["errors"])
        print(f"{ep['case']} seed {ep['seed']}: {'pass' if ep['passed'] else 'fail'} ({ep['end_reason']})")
        print(f"    {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
