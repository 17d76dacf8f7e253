"""`rt2-cot act` as a user runs it: a subprocess, JSON on stdout, one-line errors on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rt2_cot.action_codec import ActionCodec
from rt2_cot.tiny_vlm import build_tiny_paligemma


@pytest.fixture(scope="session")
def tiny_paligemma(tmp_path_factory):
    return build_tiny_paligemma(tmp_path_factory.mktemp("cli_act") / "paligemma", seed=1)


@pytest.fixture(scope="session")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_act_img") / "scene.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


def act(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "rt2_cot", "act", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def test_act_json_prints_a_plan_and_a_decoded_action(tiny_paligemma, image_path, tmp_path, repo_root):
    depth = tmp_path / "depth.npy"
    np.save(depth, np.full((60, 80), 700, dtype=np.uint16))
    result = act(
        "--model", str(tiny_paligemma), "--image", str(image_path), "--depth", str(depth),
        "--instruction", "pick up the rock", "--seed", "5", "--temperature", "1.0", "--json",
        cwd=repo_root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert out["plan"].strip()
    assert len(out["action_tokens"]) == 8 and all(0 <= t <= 255 for t in out["action_tokens"])
    assert out["action"] == ActionCodec().to_dict(ActionCodec().decode(out["action_tokens"]))
    assert set(out["action"]) == {"terminate", "delta_xyz_m", "delta_rpy_rad", "gripper"}
    assert out["text"].endswith(" ".join(map(str, out["action_tokens"])))
    assert out["latency_ms"] > 0 and 0 < out["ttft_ms"] <= out["latency_ms"]
    # The plan streamed to stderr while it was generated.
    assert f"Plan: {out['plan']}. Action: {' '.join(map(str, out['action_tokens']))}" in result.stderr
    assert "Traceback" not in result.stderr


def test_act_without_json_streams_to_stdout(tiny_paligemma, image_path, repo_root):
    result = act(
        "--model", str(tiny_paligemma), "--image", str(image_path), "--instruction", "pick up the rock",
        "--prompt", "plain", cwd=repo_root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("Action: ") and len(lines[0].split()) == 9
    assert lines[1].startswith("action: terminate=")


@pytest.mark.parametrize(
    "case", ["missing image", "corrupt image", "not a checkpoint", "missing model", "bad depth"]
)
def test_bad_input_is_one_line_on_stderr(case, tiny_paligemma, image_path, tmp_path, repo_root):
    model, image, extra = str(tiny_paligemma), str(image_path), []
    if case == "missing image":
        image = str(tmp_path / "nope.png")
    elif case == "corrupt image":
        (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        image = str(tmp_path / "corrupt.png")
    elif case == "not a checkpoint":
        (tmp_path / "folder").mkdir()
        (tmp_path / "folder" / "notes.txt").write_text("hello")
        model = str(tmp_path / "folder")
    elif case == "missing model":
        model = str(tmp_path / "absent-model")
    elif case == "bad depth":
        (tmp_path / "depth.npy").write_bytes(b"junk")
        extra = ["--depth", str(tmp_path / "depth.npy")]
    result = act(
        "--model",
        model,
        "--image",
        image,
        "--instruction",
        "pick up the rock",
        "--json",
        *extra,
        cwd=repo_root,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
