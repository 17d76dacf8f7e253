"""`rt2-cot bench`: control rates with a plan every step, with plan reuse and with plain generate()."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="builtin",
        help="builtin (default), random (built-in config, random weights), a checkpoint folder or http(s)://.../v1",
    )
    parser.add_argument("--steps", type=int, default=30, help="timed control steps per path (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--replan-every", type=int, default=10, help="plan reuse: re-plan every N steps")
    parser.add_argument("--no-naive", action="store_true", help="skip the plain generate() baseline")
    parser.add_argument(
        "--no-drafts",
        action="store_true",
        help="built-in model: decode without drafts from the previous step",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: $RT2_NUM_THREADS or 1)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default=None,
        help="built-in model's decoder in the fast path (default: $RT2_PRECISION or auto: bf16 where the CPU has it natively)",
    )
    parser.add_argument("--seed", type=int, default=0, help="simulator scene and task seed")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    from rt2_cot.benchmark import check_model_spec, run_benchmark

    check_model_spec(args.model)
    result = run_benchmark(
        model=args.model,
        steps=args.steps,
        warmup=args.warmup,
        replan_every=args.replan_every,
        seed=args.seed,
        naive=not args.no_naive,
        threads=args.threads,
        drafts=not args.no_drafts,
        precision=args.precision,
    )
    data = result.to_dict()
    if args.json:
        print(json.dumps(data))
        return 0
    naive = f"{data['naive_hz']:.1f} Hz" if data["naive_hz"] is not None else "not measured"
    lines = [
        f"model               {data['weights']}",
        f"instruction         {data['instruction']!r}  ({data['steps']} steps, {data['threads']} threads, "
        f"drafts {'on' if data['drafts'] else 'off'}, {data['precision']})",
        f"CoT every step      {data['cot_every_step_hz']:.1f} Hz   (p50 {data['step_ms_p50']:.1f} ms, p95 {data['step_ms_p95']:.1f} ms, TTFT p50 {data['ttft_ms_p50']:.1f} ms)",
        f"plan reuse (1/{data['replan_every']})    {data['plan_reuse_hz']:.1f} Hz   (p50 {data['plan_reuse_step_ms_p50']:.1f} ms)",
        f"naive generate()    {naive}",
        f"CPU-time rates      CoT {data['cot_cpu_hz']:.1f} Hz, plan reuse {data['plan_reuse_cpu_hz']:.1f} Hz, naive "
        + (f"{data['naive_cpu_hz']:.1f} Hz" if data["naive_cpu_hz"] is not None else "-")
        + "  (1000 / CPU ms per step: one dedicated core)",
        f"tokens/s            {data['tokens_per_s']:.0f}",
        f"peak RSS            {data['rss_mb']:.0f} MB (model + simulator)",
        f"sim render+physics  {data['sim_ms_p50']:.1f} ms per step (not in the rates)",
    ]
    if data["speedup_cot_vs_naive"] is not None:
        lines.append(
            f"speed-up vs naive   CoT {data['speedup_cot_vs_naive']:.1f}x, plan reuse {data['speedup_reuse_vs_naive']:.1f}x"
        )
    if data.get("vision_ms_p50") is not None:
        lines.append(
            f"CoT step breakdown  image encoder {data['vision_ms_p50']:.1f} ms + prefill {data['prefill_ms_p50']:.1f} ms (p50)"
        )
    if data.get("same_output_as_naive") is not None:
        lines.append(
            f"same as generate()  {data['same_output_as_naive']:.0%} of steps (plan and tokens, plan every step)"
        )
    lines += [f"note                {n}" for n in data["notes"]]
    print("\n".join(lines), file=sys.stdout)
    return 0
