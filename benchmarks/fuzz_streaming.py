"""Seeded fuzz run of the streaming parser: N random texts, each split into random chunks.

Checks, for every input: nothing but ActionParseError escapes (and not even that, for valid use),
every completed action has eight integers 0..255 decoded inside the codec's ranges, and the result
does not depend on the chunking (same plan, same tokens or same failure as one whole chunk).

    .venv/bin/python benchmarks/fuzz_streaming.py [--n 100000] [--seed 0] [--json]

Exit status 1 if any input breaks a guarantee; the first few offenders are printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rt2_cot.action_codec import ActionCodec
from rt2_cot.events import ActionComplete, ActionTokenEvent, ParseFailure, PlanDelta, TextDelta
from rt2_cot.streaming import StreamParser

FRAGMENTS = [
    "Plan:", "plan :", "PLAN", "Plan", "Action:", "action :", "ACTION :", "act", "ion", ":", ".", " ", "  ",
    "\n", ",", "\t", "-", "transaction:", "0", "1", "7", "25", "99", "128", "255", "256", "999", "1000", "007",
    "pick up the rock", "move the 7up can near the apple", "a", "p", "</s>", "<eos>", "[SEP]", "é", "🤖", "½",
]  # fmt: skip
CODEC = ActionCodec()


def random_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:  # well-formed, possibly with odd spacing and case
        plan = " ".join(
            rng.choice(["pick", "up", "the", "rock", "can", "bowl", "blue"]) for _ in range(rng.randint(0, 6))
        )
        marker = rng.choice(["Plan:", "plan :", "PLAN:", ""])
        sep = rng.choice([" ", "  ", "\n", ","])
        ints = [
            rng.randint(0, 255) if rng.random() < 0.97 else rng.randint(256, 999)
            for _ in range(rng.choice([8, 8, 8, 7, 9]))
        ]
        return f"{marker} {plan}. {rng.choice(['Action:', 'action :'])} {sep.join(map(str, ints))}"
    if kind < 0.8:  # grammar fragments in random order
        return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 30)))
    alphabet = "PlanActio: .,0123456789\n-é"
    return "".join(
        rng.choice(alphabet) if rng.random() < 0.8 else chr(rng.randint(0, 0x2FFF))
        for _ in range(rng.randint(0, 80))
    )


def chunks_of(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 10))))
    points = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(points)]


def parse(chunks: list[str], style: str, given_plan: str | None) -> tuple[list, tuple]:
    parser = StreamParser(style=style, given_plan=given_plan, codec=CODEC)
    events = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.finish())
    plan = "".join(e.text for e in events if isinstance(e, PlanDelta))
    finals = [e for e in events if isinstance(e, (ActionComplete, ParseFailure))]
    final = None
    if len(finals) == 1:
        f = finals[0]
        final = ("ok", f.tokens, f.plan) if isinstance(f, ActionComplete) else ("fail", f.message)
    elif finals:
        final = ("several", len(finals))
    return events, (plan, final)


def violations(events: list, text: str) -> list[str]:
    found = []
    for e in events:
        if isinstance(e, ActionComplete):
            c = e.command
            if len(e.tokens) != 8 or not all(0 <= t <= 255 for t in e.tokens):
                found.append(f"tokens out of range {e.tokens}")
            if (
                any(abs(v) > CODEC.max_translation_m + 1e-12 for v in c.delta_xyz_m)
                or any(abs(v) > CODEC.max_rotation_rad + 1e-12 for v in c.delta_rpy_rad)
                or not 0.0 <= c.gripper <= 1.0
            ):
                found.append(f"command outside the ranges {c}")
        if isinstance(e, ActionTokenEvent) and not 0 <= e.value <= 255:
            found.append(f"token event out of range {e}")
    if "".join(e.text for e in events if isinstance(e, TextDelta)) != text:
        found.append("text deltas do not add up to the input")
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    counts: Counter[str] = Counter()
    offenders: list[str] = []
    start = time.perf_counter()
    for _ in range(args.n):
        text = random_text(rng)
        style = rng.choice(["cot", "cot", "plain"])
        given_plan = "pick up the rock" if rng.random() < 0.2 else None
        try:
            whole_events, whole = parse([text], style, given_plan)
            chunk_events, chunked = parse(chunks_of(text, rng), style, given_plan)
        except Exception as exc:  # any exception from valid use is a bug
            counts["exception"] += 1
            offenders.append(f"{type(exc).__name__}: {exc} for {text!r}")
            continue
        problems = violations(whole_events, text) + violations(chunk_events, text)
        if whole != chunked:
            problems.append(f"chunking changed the result: {whole} vs {chunked}")
        if problems:
            counts["violation"] += 1
            offenders.append(f"{problems[0]} for {text!r}")
        counts["action" if whole[1] and whole[1][0] == "ok" else "parse_failure"] += 1
    elapsed = time.perf_counter() - start
    summary = {
        "inputs": args.n,
        "seed": args.seed,
        "actions": counts["action"],
        "parse_failures": counts["parse_failure"],
        "exceptions": counts["exception"],
        "violations": counts["violation"],
        "seconds": round(elapsed, 1),
        "inputs_per_s": round(args.n / elapsed),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{args.n} inputs (seed {args.seed}) in {elapsed:.1f} s: {counts['action']} valid actions, "
            f"{counts['parse_failure']} parse failures, {counts['exception']} exceptions, "
            f"{counts['violation']} guarantee violations"
        )
    for line in offenders[:5]:
        print("  ", line, file=sys.stderr)
    return 1 if offenders else 0


if __name__ == "__main__":
    raise SystemExit(main())
