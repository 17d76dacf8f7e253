"""`rt2-cot eval`: run a reasoning test suite closed loop in the simulator and report the numbers.

The suite is validated (and every case posed to the simulator) before any model loads, so a
malformed suite fails in a second with one line naming the file, the case and the field.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from loguru import logger

from rt2_cot.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suite", required=True, type=Path, help="suite file, e.g. prompts/suites/rt2_core.yaml"
    )
    parser.add_argument(
        "--model", default="builtin", help="builtin (default), a checkpoint folder, or http(s)://host:port/v1"
    )
    parser.add_argument(
        "--policy",
        default="model",
        choices=["model", "oracle"],
        help="model: the VLA given by --model; oracle: the simulator's scripted expert (is the suite solvable?)",
    )
    parser.add_argument("--episodes", type=int, default=1, help="episodes per case (default 1)")
    parser.add_argument(
        "--episodes-per-category",
        type=int,
        help="instead of --episodes: at least N episodes per category, shared evenly over its cases",
    )
    parser.add_argument("--seed", type=int, default=0, help="run seed: picks each case's scene seeds")
    parser.add_argument("--max-steps", type=int, default=80, help="step limit per episode (default 80)")
    parser.add_argument("--category", action="append", help="only this category (repeatable)")
    parser.add_argument("--split", help="only cases of this split (train, heldout_phrasing, ...)")
    parser.add_argument("--case", action="append", help="only this case id (repeatable)")
    parser.add_argument(
        "--replan-every", type=int, default=1, help="model policy: write a new plan every N steps (0 = once)"
    )
    parser.add_argument(
        "--hold-reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help='model policy: keep where the plan put each reference ("on the triangle at X Y") at its '
        "first reading for the whole episode (default on; see rt2_cot.vla_policy)",
    )
    parser.add_argument(
        "--plan-source",
        default="model",
        choices=["model", "oracle", "oracle-ungrounded"],
        help="model policy: who writes the plan. oracle: the simulator gives the task's plan with the "
        "objects' true image points, the model only acts (diagnostic); oracle-ungrounded: without points",
    )
    parser.add_argument(
        "--action-readout",
        choices=["argmax", "expected"],
        help="model policy, local checkpoints: how greedy decoding reads the motion bins "
        "(default: what the checkpoint's config says; see rt2_cot.constrained)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        help="built-in model: the fast path's decoder precision (default: $RT2_PRECISION or auto: bf16 where the CPU has it natively)",
    )
    parser.add_argument("--report", type=Path, help="write a Markdown report here")
    parser.add_argument("--csv", type=Path, help="write one CSV row per episode here")
    parser.add_argument("--save", type=Path, help="write the full results as JSON (for --compare-with)")
    parser.add_argument("--compare-with", type=Path, help="a saved run (--save) to compare this one against")
    parser.add_argument("--label", default="", help="a name for this run in reports and comparisons")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _policy_factory(args: argparse.Namespace):
    if args.policy == "oracle":
        from rt2_cot.oracle_policy import OraclePolicy

        return OraclePolicy
    from rt2_cot.backends import load_backend
    from rt2_cot.vla_policy import VLAPolicy

    if args.action_readout and args.model.startswith(("http://", "https://")):
        raise ConfigError("--action-readout applies to local checkpoints; a server decides its own readout")
    options = {"action_readout": args.action_readout} if args.action_readout else {}
    if args.precision:
        from rt2_cot.backends import is_builtin_model

        if not is_builtin_model(args.model):
            raise ConfigError("--precision applies to the built-in model (rt2-cot-mini checkpoints)")
        options["precision"] = args.precision
    backend = load_backend(args.model, **options)  # loaded once; every case reuses it
    if args.plan_source != "model":
        from rt2_cot.vla_policy import OraclePlanPolicy

        grounded = args.plan_source == "oracle"
        return lambda sim: OraclePlanPolicy(backend, sim, grounded=grounded)
    return lambda _sim: VLAPolicy(backend, replan_every=args.replan_every, hold_reference=args.hold_reference)


def run(args: argparse.Namespace) -> int:
    from rt2_cot.evaluation import SuiteRun, compare, load_report, load_suite

    if args.episodes < 1:
        raise ConfigError("--episodes must be at least 1")
    if args.episodes_per_category is not None and args.episodes_per_category < 1:
        raise ConfigError("--episodes-per-category must be at least 1")
    if args.max_steps < 1:
        raise ConfigError("--max-steps must be at least 1")
    suite = load_suite(args.suite)
    if args.category or args.split or args.case:
        suite = suite.select(args.category, args.split, args.case)
    previous = load_report(args.compare_with) if args.compare_with else None
    factory = _policy_factory(args)
    run_ = SuiteRun(
        suite,
        factory,
        episodes_per_case=args.episodes,
        seed=args.seed,
        max_steps=args.max_steps,
        model=args.model if args.policy == "model" else "",
        label=args.label,
        episodes_per_category=args.episodes_per_category,
    )
    total = run_.total_episodes()
    logger.info(
        f"suite {suite.name}: {len(suite.cases)} cases, {total} episodes, policy {args.policy}"
        + (f" ({args.model})" if args.policy == "model" else "")
    )
    done = [0]

    def progress(result) -> None:
        done[0] += 1
        logger.debug(f"[{done[0]}/{total}] {result.case_id}: {result.passed}")
        # Long model runs keep what they have: a crash or Ctrl-C loses at most a few episodes.
        if args.save and done[0] % 20 == 0 and run_.report is not None:
            run_.report.save(args.save)

    run_.on_result = progress
    try:
        report = run_.run()
    except KeyboardInterrupt:
        if args.save and run_.report is not None:
            run_.report.save(args.save)
            logger.warning(f"interrupted: {len(run_.report.results)} finished episodes saved to {args.save}")
        raise
    if args.report:
        _write(args.report, report.to_markdown())
    if args.csv:
        _write(args.csv, report.to_csv())
    if args.save:
        report.save(args.save)
    comparison = compare(previous, report) if previous is not None else None
    if args.json:
        out = report.to_dict()
        if comparison is not None:
            out["comparison_markdown"] = comparison
        print(json.dumps(out))
    else:
        s = report.summary()
        lines = [f"{report.suite} ({report.policy}): {s['episodes']} episodes"]
        lines.append(
            f"  success {_pct(s['success_rate'])}, plan accuracy {_pct(s['plan_accuracy'])}, "
            f"valid actions {_pct(s['valid_action_rate'])}"
        )
        for cat, c in report.by_category().items():
            lines.append(
                f"  {cat:<22} {c['episodes']:>4} ep  success {_pct(c['success_rate']):>5}  "
                f"plan {_pct(c['plan_accuracy']):>5}"
            )
        print("\n".join(lines))
        if comparison is not None:
            print(comparison)
    sys.stdout.flush()
    return 0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    logger.info(f"wrote {path}")
