#!/usr/bin/env bash
# The issue's measurement: build a tiny random PaliGemma in a throwaway folder, run
# `rt2-cot act --json` N times (default 100) with different seeds and sampling, and count the runs
# that print 8 integers in 0..255 and a non-empty plan. Exit 0 only if every run is valid.
#
#   bash scripts/act_100_seeds.sh [N] [--in-process]
#
# --in-process calls the same CLI entry point (`rt2_cot.cli.main(["act", ...])`, which loads the
# checkpoint afresh each run) in one Python process: same code path without 100 interpreter and
# torch start-ups, for a busy machine.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100}"
MODE="${2:-subprocess}"
PY="${PY:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PY" - "$WORK" <<'PYEOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from rt2_cot.tiny_vlm import build_tiny_paligemma
work = Path(sys.argv[1])
build_tiny_paligemma(work / "paligemma", seed=0)
Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(work / "scene.png")
PYEOF

: > "$WORK/results.jsonl"
start=$(date +%s)
if [ "$MODE" = "--in-process" ]; then
  "$PY" - "$WORK" "$N" <<'PYEOF'
import contextlib, io, json, sys
from pathlib import Path
from rt2_cot.cli import main
work, n = Path(sys.argv[1]), int(sys.argv[2])
with open(work / "results.jsonl", "a") as results:
    for seed in range(1, n + 1):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["act", "--model", str(work / "paligemma"), "--image", str(work / "scene.png"),
                         "--instruction", "pick up the object you could hammer a nail with",
                         "--seed", str(seed), "--temperature", "1.0", "--json"])
        results.write(out.getvalue().strip() + "\n" if code == 0 else json.dumps({"seed": seed, "failed": True}) + "\n")
        if code != 0:
            print(err.getvalue().strip().splitlines()[-1:], file=sys.stderr)
PYEOF
else
for seed in $(seq 1 "$N"); do
  if ! "$PY" -m rt2_cot act --model "$WORK/paligemma" --image "$WORK/scene.png" \
      --instruction "pick up the object you could hammer a nail with" \
      --seed "$seed" --temperature 1.0 --json 2>"$WORK/stderr.txt" >>"$WORK/results.jsonl"; then
    echo "{\"seed\": $seed, \"failed\": true}" >>"$WORK/results.jsonl"
    tail -n 1 "$WORK/stderr.txt" >&2
  fi
done
fi
elapsed=$(( $(date +%s) - start ))

"$PY" - "$WORK/results.jsonl" "$N" "$elapsed" <<'PYEOF'
import json, statistics, sys
path, n, elapsed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [json.loads(line) for line in open(path) if line.strip()]
def valid(r):
    t = r.get("action_tokens")
    return (not r.get("failed") and isinstance(r.get("plan"), str) and r["plan"].strip() != ""
            and isinstance(t, list) and len(t) == 8 and all(isinstance(v, int) and 0 <= v <= 255 for v in t))
ok = sum(valid(r) for r in rows)
distinct = len({tuple(r["action_tokens"]) for r in rows if valid(r)})
lat = [r["latency_ms"] for r in rows if valid(r)]
print(json.dumps({"runs": n, "valid": ok, "distinct_actions": distinct,
                  "latency_ms_p50": round(statistics.median(lat), 1) if lat else None,
                  "wall_s": elapsed}))
sys.exit(0 if ok == n else 1)
PYEOF
