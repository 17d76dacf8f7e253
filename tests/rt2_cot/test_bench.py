"""`rt2-cot bench`: one run measures the three paths on real simulator frames and reports the
contract's JSON keys. Timings are not asserted (the machine is shared); structure and consistency are."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("robot_io.sim.env", reason="the simulator has not landed")
pytest.importorskip("rt2_cot.vla_policy", reason="the runtime's policy has not landed")

CONTRACT_KEYS = {
    "cot_every_step_hz",
    "plan_reuse_hz",
    "naive_hz",
    "ttft_ms_p50",
    "step_ms_p50",
    "step_ms_p95",
    "rss_mb",
}


@pytest.fixture(scope="module")
def data() -> dict:
    """One real `rt2-cot bench --json` run (random weights: speed does not depend on them)."""
    cmd = [
        sys.executable,
        "-m",
        "rt2_cot",
        "bench",
        "--model",
        "random",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--precision",
        "fp32",  # generate()'s exact tokens; bf16 rounds the decoder (tests/rt2_cot/test_builtin_backend.py)
    ]
    proc = subprocess.run(
        [*cmd, "--replan-every", "2", "--json"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)  # exactly one JSON object on stdout, logs on stderr


def test_all_three_paths_measured_with_valid_actions(data):
    assert set(data) >= CONTRACT_KEYS
    for key in (
        "cot_every_step_hz",
        "plan_reuse_hz",
        "naive_hz",
        "step_ms_p50",
        "ttft_ms_p50",
        "tokens_per_s",
    ):
        assert data[key] > 0, key
    assert data["step_ms_p95"] >= data["step_ms_p50"] >= data["ttft_ms_p50"] * 0.99
    assert data["valid_action_fraction"] == 1.0  # the grammar holds on every step, random weights or not
    ratio = data["cot_every_step_hz"] / data["naive_hz"]
    assert data["speedup_cot_vs_naive"] == pytest.approx(ratio, rel=0.02)
    assert 100 < data["rss_mb"] < 8000
    assert data["sim_ms_p50"] > 0  # the simulator really rendered and stepped
    assert data["steps"] == 3 and data["replan_every"] == 2
    # The fast path is a faster way to the same answer: plan and tokens equal generate()'s.
    assert data["same_output_as_naive"] == 1.0 and data["precision"] == "fp32"


def test_cli_bad_model_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "rt2_cot", "bench", "--model", "/nonexistent/ckpt", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0]


def test_training_exports_get_the_fast_path(tmp_path):
    import torch

    import rt2_cot.model as rt2_model
    from rt2_cot.backends import load_backend
    from rt2_cot.backends.builtin import BuiltinBackend
    from rt2_cot.errors import ModelLoadError

    tok = rt2_model.load_tokenizer()
    ids = sorted(
        set(tok.convert_tokens_to_ids(["plan", "action", ":", ".", *(str(i) for i in range(256)), "[SEP]"]))
    )
    model = rt2_model.Rt2CotMiniForConditionalGeneration(rt2_model.Rt2CotMiniConfig(output_token_ids=ids))
    model.save_pretrained(tmp_path / "mini")
    rt2_model.Rt2CotMiniProcessor(tokenizer=tok).save_pretrained(tmp_path / "mini")
    threads = torch.get_num_threads()
    try:
        assert isinstance(load_backend(str(tmp_path / "mini")), BuiltinBackend)
    finally:
        torch.set_num_threads(threads)
    # Any other model type goes to the generic transformers path (here: a config with no weights).
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ModelLoadError):
        load_backend(str(tmp_path / "other"))
    from rt2_cot.backends import is_builtin_model

    assert is_builtin_model(str(tmp_path / "mini"))
    assert not is_builtin_model(str(tmp_path / "other"))
    assert not is_builtin_model("http://127.0.0.1:9/v1")
    assert not is_builtin_model(str(tmp_path / "nowhere"))
