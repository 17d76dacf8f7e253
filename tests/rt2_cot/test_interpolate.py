"""Weight-space interpolation of two checkpoints (WiSE-FT): `python -m rt2_cot.model.interpolate`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rt2_cot.errors import ConfigError
from rt2_cot.model.interpolate import interpolate

BUILTIN = Path(__file__).resolve().parents[2] / "checkpoints" / "rt2-cot-mini"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    """The built-in checkpoint with every floating tensor moved by +1 (a stand-in for a fine-tune)."""
    folder = tmp_path_factory.mktemp("tuned") / "ckpt"
    shutil.copytree(BUILTIN, folder, ignore=shutil.ignore_patterns("README.md"))
    weights = load_file(folder / "model.safetensors")
    save_file(
        {k: (v + 1 if v.is_floating_point() else v) for k, v in weights.items()},
        str(folder / "model.safetensors"),
    )
    return folder


def test_interpolation_is_the_weighted_mean_and_loads_as_a_model(tuned, tmp_path):
    record = interpolate(BUILTIN, tuned, 0.25, tmp_path / "mix")
    a, b = load_file(BUILTIN / "model.safetensors"), load_file(tuned / "model.safetensors")
    mixed = load_file(tmp_path / "mix" / "model.safetensors")
    assert record["tensors"] == len(a) == len(mixed)
    for name, wa in a.items():
        assert mixed[name].dtype == b[name].dtype
        if wa.is_floating_point():
            expected = (0.75 * wa.float() + 0.25 * b[name].float()).to(wa.dtype)
            torch.testing.assert_close(mixed[name], expected, atol=2e-3, rtol=0)
            assert not torch.equal(mixed[name], wa)
    assert json.loads((tmp_path / "mix" / "interpolation.json").read_text())["alpha"] == 0.25
    from transformers import AutoModelForImageTextToText

    import rt2_cot.model  # noqa: F401  (registers the Auto classes)

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "mix")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_the_ends_give_back_each_checkpoint(tuned, tmp_path):
    interpolate(BUILTIN, tuned, 0.0, tmp_path / "a")
    interpolate(BUILTIN, tuned, 1.0, tmp_path / "b")
    for end, source in (("a", BUILTIN), ("b", tuned)):
        got, want = load_file(tmp_path / end / "model.safetensors"), load_file(source / "model.safetensors")
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_config_that_spells_out_a_default_is_the_same_model(tuned, tmp_path):
    # The committed config.json predates `pointer_names`; a checkpoint trained from it today stores
    # the default ([]) explicitly. Same architecture, so they must interpolate.
    config = json.loads((tuned / "config.json").read_text())
    assert "pointer_names" not in config
    spelled = tmp_path / "spelled"
    shutil.copytree(tuned, spelled)
    (spelled / "config.json").write_text(json.dumps({**config, "pointer_names": []}))
    assert interpolate(BUILTIN, spelled, 0.5, tmp_path / "mix")["tensors"] > 0
    (spelled / "config.json").write_text(json.dumps({**config, "pointer_names": ["lemon"]}))
    with pytest.raises(ConfigError, match="pointer_names"):
        interpolate(BUILTIN, spelled, 0.5, tmp_path / "mix2")


def test_two_different_models_are_refused_and_nothing_is_written(tuned, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tuned, other)
    config = json.loads((other / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        interpolate(BUILTIN, other, 0.5, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="between 0"):
        interpolate(BUILTIN, tuned, 1.5, tmp_path / "out")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot read"):
        interpolate(BUILTIN, tmp_path / "broken", 0.5, tmp_path / "out")


def test_the_command_reports_a_bad_folder_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rt2_cot.model.interpolate",
            str(BUILTIN),
            str(tmp_path),
            "--alpha",
            "0.5",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert (
        result.returncode == 2
        and result.stderr.startswith("error: ")
        and "not a checkpoint folder" in result.stderr
    )
    assert not (tmp_path / "o").exists()
