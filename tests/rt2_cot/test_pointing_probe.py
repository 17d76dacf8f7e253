"""The pointing diagnostic runs end to end on the committed checkpoint: real scenes, real answers."""

from __future__ import annotations

import pytest

pytest.importorskip("mujoco")


def test_pointing_probe_reports_errors_in_image_units(monkeypatch):
    from pathlib import Path

    from rt2_cot.data.pointing_probe import pointing_probe

    ckpt = Path(__file__).resolve().parents[2] / "checkpoints" / "rt2-cot-mini"
    out = pointing_probe(str(ckpt), scenes=3, seed=1)
    assert out["scenes"] == 3 and out["unparsed"] == 0
    for key in ("gripper_error_mean", "target_error_mean", "plan_target_error_mean"):
        assert 0.0 <= out[key] <= 256 * 1.5
    assert 0.0 <= out["plan_target_heading_elsewhere_error_mean"] <= 256 * 1.5
    for key in ("gripper_within_8", "target_within_8", "target_nearer_another", "plan_follows_the_arm"):
        assert 0.0 <= out[key] <= 1.0
    for kind in ("number", "symbol"):  # two tiles on the table: asked and in the plan
        assert 0.0 <= out[f"{kind}_tile_asked_right"] <= 1.0
        assert 0.0 <= out[f"{kind}_tile_asked_error_mean"] <= 256 * 1.5
    # The trained model finds the big gripper far better than chance (~90 units for a random point).
    assert out["gripper_error_mean"] < 40


def test_naming_probe_scores_answers_and_plans_on_fresh_scenes():
    from pathlib import Path

    from rt2_cot.data.naming_probe import naming_probe

    ckpt = Path(__file__).resolve().parents[2] / "checkpoints" / "rt2-cot-mini"
    out = naming_probe(str(ckpt), scenes=2, seed=1, families=["pick", "smallest"])
    assert set(out["plan_names_target_by_family"]) == {"pick", "smallest"}
    assert all(v["n"] == 2 for v in out["plan_names_target_by_family"].values())
    assert {k: v["n"] for k, v in out["locate_names_target_by_family"].items()} == {"pick": 2, "smallest": 2}
    assert 0.0 <= out["locate_names_target"] <= 1.0
    assert out["vl_accuracy_by_kind"] and all(
        0.0 <= v["rate"] <= 1.0 for v in out["vl_accuracy_by_kind"].values()
    )
    # When the instruction names the object, the trained model's plan names it too.
    assert out["plan_names_target_by_family"]["pick"]["rate"] == 1.0
    misses = sum(round(v["n"] * (1 - v["rate"])) for v in out["plan_names_target_by_family"].values())
    assert len(out["plan_misses"]) == misses and all(m["plan"] for m in out["plan_misses"])


def test_probes_draw_their_scenes_from_the_split_asked_for(monkeypatch):
    """--split heldout_objects: every scene of both probes is laid out as that held-out split."""
    from pathlib import Path

    import robot_io.sim.tasks as tasks
    from rt2_cot.data.naming_probe import naming_probe
    from rt2_cot.data.pointing_probe import pointing_probe

    drawn, sample = [], tasks.sample_task
    monkeypatch.setattr(tasks, "sample_task", lambda *a, **kw: drawn.append(sample(*a, **kw)) or drawn[-1])
    ckpt = str(Path(__file__).resolve().parents[2] / "checkpoints" / "rt2-cot-mini")
    assert (
        naming_probe(ckpt, scenes=2, seed=1, families=["pick"], split="heldout_objects")["split"]
        == "heldout_objects"
    )
    assert pointing_probe(ckpt, scenes=1, seed=1, split="heldout_objects")["split"] == "heldout_objects"
    # 2 naming scenes + the pointing probe's pick, decoy-start and two tile scenes (each simulator
    # also draws one training task for its first reset).
    assert sum(t.split == "heldout_objects" for t in drawn) == 6
