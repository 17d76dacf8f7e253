"""Constrained decoding without a model: random and adversarial logits through the grammar.

Whatever the logits say, the result must be `Plan: <non-empty>. Action: <8 ints 0..255>` + EOS,
for both the integer-token (MiniLM WordPiece) and tail-token (digit-splitting) vocabularies.
"""

from __future__ import annotations

import re
import threading
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rt2_cot.constrained import (
    ActionGrammarProcessor,
    ActionTextStreamer,
    GrammarSpec,
    Phase,
    StopEventCriteria,
    action_regex,
)
from rt2_cot.errors import ConfigError
from rt2_cot.streaming import parse_text
from rt2_cot.tiny_vlm import _minilm_tokenizer
from rt2_cot.token_map import detect_token_map

PROMPT = [5, 6, 7]


@pytest.fixture(scope="module")
def wordpiece():
    return _minilm_tokenizer()


@pytest.fixture(scope="module")
def digit_splitting():
    """A small vocabulary where numbers are split into digits: no single token for "131"."""
    words = ["plan", "action", "pick", "up", "the", "rock", ":", ".", *"0123456789"]
    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2}
    for w in [*words, *(f"w{i}" for i in range(600))]:
        vocab[w] = len(vocab)
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.normalizer = normalizers.Lowercase()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    raw.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
    )


def generate(
    spec: GrammarSpec, tokenizer, seed: int, bias: dict[int, float] | None = None, extra_vocab: int = 0
):
    """Sample under the grammar from random logits; return (ids, streamed text)."""
    vocab = len(tokenizer) + extra_vocab
    processor = ActionGrammarProcessor(spec, prompt_length=len(PROMPT))
    streamer = ActionTextStreamer(tokenizer, spec)
    streamer.put(torch.tensor([PROMPT]))
    ids = list(PROMPT)
    g = torch.Generator().manual_seed(seed)
    for _ in range(spec.max_new_tokens):
        scores = torch.randn(1, vocab, generator=g) * 4
        for token_id, b in (bias or {}).items():
            scores[0, token_id] += b
        masked = processor(torch.tensor([ids]), scores)
        token = int(torch.multinomial(torch.softmax(masked, -1), 1, generator=g))
        ids.append(token)
        streamer.put(torch.tensor([token]))
        if token == spec.eos_id:
            break
    streamer.end()
    return ids[len(PROMPT) :], "".join(streamer)


def check_well_formed(spec: GrammarSpec, generated: list[int], text: str) -> None:
    assert generated[-1] == spec.eos_id and generated.count(spec.eos_id) == 1
    action_ids = [t for t in generated[-(spec.num_action_tokens + 1) : -1]]
    bins = [spec.token_map.bin_of(t) for t in action_ids]
    assert None not in bins, (generated, text)
    complete = parse_text(text)
    assert complete.tokens == tuple(bins)
    assert complete.plan.strip(), text


@pytest.mark.parametrize("seed", range(12))
def test_random_logits_give_a_plan_and_a_valid_action_integer_vocab(wordpiece, seed):
    spec = GrammarSpec.for_tokenizer(wordpiece, detect_token_map(wordpiece), "cot", max_new_tokens=48)
    assert spec.token_map.style == "integer"
    generated, text = generate(spec, wordpiece, seed, extra_vocab=64)
    check_well_formed(spec, generated, text)
    assert len(generated) <= 48
    assert re.fullmatch(r"plan : ?.+\. action :( \d{1,3}){8}", text), text


@pytest.mark.parametrize("seed", range(8))
def test_random_logits_give_a_plan_and_a_valid_action_tail_vocab(digit_splitting, seed):
    token_map = detect_token_map(digit_splitting)
    assert token_map.style == "tail"
    assert token_map.id_of(0) == digit_splitting.vocab_size - 1  # OpenVLA's order
    spec = GrammarSpec.for_tokenizer(digit_splitting, token_map, "cot", max_new_tokens=40)
    generated, text = generate(spec, digit_splitting, seed)
    check_well_formed(spec, generated, text)
    plan_part = generated[: -(spec.num_action_tokens + 1)]
    assert not set(plan_part) & set(token_map.ids), "action ids must not appear as plan text"


def test_adversarial_logits_cannot_break_the_grammar(wordpiece):
    token_map = detect_token_map(wordpiece)
    spec = GrammarSpec.for_tokenizer(wordpiece, token_map, "cot", max_new_tokens=48)
    # The model "wants" to stop at once, to emit special tokens, to start with "action :", and to
    # pick ids beyond the tokenizer (embedding padding).
    bias = {spec.eos_id: 1e4, wordpiece.pad_token_id: 1e4, wordpiece.unk_token_id: 1e4}
    bias.update({i: 1e3 for i in spec.banned_as_plan_start})
    bias.update({len(wordpiece) + i: 1e4 for i in range(8)})
    generated, text = generate(spec, wordpiece, seed=0, bias=bias, extra_vocab=8)
    check_well_formed(spec, generated, text)


def test_given_plan_and_plain_prompt_generate_only_actions(wordpiece):
    token_map = detect_token_map(wordpiece)
    for spec in (
        GrammarSpec.for_tokenizer(wordpiece, token_map, "cot", given_plan=True),
        GrammarSpec.for_tokenizer(wordpiece, token_map, "plain"),
    ):
        assert spec.max_new_tokens == 9
        generated, text = generate(spec, wordpiece, seed=3)
        assert len(generated) == 9 and generated[-1] == spec.eos_id
        assert re.fullmatch(r"( \d{1,3}){8}", text)
        assert parse_text(text, style="plain").tokens == tuple(token_map.bin_of(t) for t in generated[:8])


def test_the_model_may_end_its_plan_itself(wordpiece):
    token_map = detect_token_map(wordpiece)
    spec = GrammarSpec.for_tokenizer(wordpiece, token_map, "cot")
    state = spec.new_state()
    for token_id in wordpiece.encode("plan : pick up the rock. action :", add_special_tokens=False):
        state.advance(token_id)
    assert state.phase is Phase.ACTION and state.plan_text == "pick up the rock. action :"


def test_plan_budget_must_fit(wordpiece):
    with pytest.raises(ConfigError, match="max_new_tokens"):
        GrammarSpec.for_tokenizer(wordpiece, detect_token_map(wordpiece), "cot", max_new_tokens=12)


def test_stop_event_criteria():
    event = threading.Event()
    criteria = StopEventCriteria(None, event)
    ids = torch.zeros((2, 4), dtype=torch.long)
    assert not criteria(ids, None).any()
    event.set()
    assert criteria(ids, None).all()


def test_action_regex_enforces_the_grammar_and_the_byte_range():
    cot = re.compile(action_regex("cot"))
    assert cot.fullmatch("Plan: pick up the rock. Action: 0 131 119 96 128 128 128 255")
    for bad in (
        "Plan: pick up the rock. Action: 0 131 119 96 128 128 128 256",
        "Plan: pick up the rock. Action: 0 131 119 96 128 128 128",
        "Plan: . Action: 0 1 2 3 4 5 6 7 8",
        "Plan: a\nb. Action: 0 1 2 3 4 5 6 7",
        "Action: 0 1 2 3 4 5 6 7",
    ):
        assert not cot.fullmatch(bad), bad
    actions_only = re.compile(action_regex("cot", plan_given=True))
    assert actions_only.fullmatch(" 1 143 129 123 145 114 115 127")
    assert re.fullmatch(action_regex("plain"), "250 251 252 253 254 255 0 9")
    assert not re.fullmatch(action_regex("plain"), "300 1 2 3 4 5 6 7")
    with pytest.raises(ConfigError):
        action_regex("openvla")


def test_grammar_wins_when_other_processors_ruled_everything_out(wordpiece):
    spec = GrammarSpec.for_tokenizer(wordpiece, detect_token_map(wordpiece), "cot", given_plan=True)
    processor = ActionGrammarProcessor(spec, prompt_length=len(PROMPT))
    scores = torch.full((1, len(wordpiece)), float("-inf"))
    out = processor(torch.tensor([PROMPT]), scores)
    allowed = torch.isfinite(out[0]).nonzero().squeeze(-1).tolist()
    assert sorted(allowed) == sorted(spec.token_map.ids)


def test_token_map_detection_and_overrides(wordpiece, digit_splitting):
    integer = detect_token_map(wordpiece)
    assert [wordpiece.decode([integer.id_of(b)]) for b in (0, 7, 131, 255)] == ["0", "7", "131", "255"]
    assert integer.bin_of(integer.id_of(200)) == 200 and integer.bin_of(wordpiece.eos_token_id) is None
    tail = detect_token_map(wordpiece, style="tail")  # an OpenVLA-style checkpoint on the same vocabulary
    assert tail.ids[0] == wordpiece.vocab_size - 1 and tail.ids[255] == wordpiece.vocab_size - 256
    with pytest.raises(ConfigError, match="single tokens"):
        detect_token_map(digit_splitting, style="integer")
    with pytest.raises(ConfigError, match="too small"):
        detect_token_map(digit_splitting, style="tail", vocab_size=300)
    # An added special token inside the tail would be sampled as an action: refuse the map.
    tokenizer_with_special_in_tail = SimpleNamespace(vocab_size=600, all_special_ids=[0, 550])
    with pytest.raises(ConfigError, match="special tokens"):
        detect_token_map(tokenizer_with_special_in_tail, style="tail")


def test_expected_bin_index_reads_the_mean_not_the_mode():
    import torch

    from rt2_cot.constrained import expected_bin_index

    bins = torch.arange(256, dtype=torch.float32)
    logits = torch.full((256,), -30.0)
    logits[128], logits[200] = 1.0, 0.8  # the spike at "no motion" wins argmax ...
    assert int(torch.argmax(logits)) == 128
    mean = (torch.softmax(logits, -1) * bins).sum()
    assert expected_bin_index(logits, bins) == round(float(mean)) and 160 < float(mean) < 168
    # ... and a confident head reads the same either way.
    sharp = torch.full((256,), -30.0)
    sharp[37] = 10.0
    assert expected_bin_index(sharp, bins) == 37


def test_readout_dims_from_config_or_override():
    from types import SimpleNamespace

    from rt2_cot.constrained import MOTION_DIMS, readout_dims
    from rt2_cot.errors import ConfigError

    assert readout_dims(SimpleNamespace()) == ()  # checkpoints that never heard of it: argmax
    assert readout_dims(SimpleNamespace(action_readout="expected")) == MOTION_DIMS
    assert readout_dims(SimpleNamespace(action_readout="expected"), "argmax") == ()
    with pytest.raises(ConfigError):
        readout_dims(SimpleNamespace(action_readout="mode"))
