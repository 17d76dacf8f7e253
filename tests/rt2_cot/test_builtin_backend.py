"""The built-in fast path must give exactly the tokens of transformers `generate()` under the
runtime's action grammar, for a randomly initialised rt2-cot-mini (speed and equality do not
depend on trained weights), with and without drafts from the previous step."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

pytest.importorskip(
    "rt2_cot.constrained", reason="the runtime's grammar (rt2_cot.constrained) has not landed"
)

import rt2_cot.model as rt2_model
from rt2_cot.backends.base import GenerationRequest, request_prompt
from rt2_cot.backends.builtin import BuiltinBackend
from rt2_cot.constrained import ActionGrammarProcessor
from rt2_cot.errors import ModelLoadError
from rt2_cot.streaming import StreamParser

WORDS = [
    *[
        "plan",
        "pick",
        "up",
        "the",
        "rock",
        "can",
        "apple",
        "block",
        "red",
        "blue",
        "green",
        "near",
        "move",
        "to",
        "left",
        "of",
        "action",
    ],
    ":",
    ".",
]


@pytest.fixture(
    scope="module",
    params=[
        (4, False, False, False),
        (8, True, False, False),
        (8, True, True, False),
        (8, True, True, True),
        (8, True, True, "prompt"),
        (8, True, True, "once"),
    ],
    ids=[
        "grid4",
        "grid8-stride8",
        "grid8-pointer",
        "grid8-pointer-copy",
        "grid8-pointer-copy-prompt",
        "grid8-pointer-copy-once",
    ],
)
def checkpoint(request, tmp_path_factory):
    """A random rt2-cot-mini with a realistic output vocabulary, saved like the real checkpoint, in
    both image-prefix layouts (16 tokens from two maps; 64 tokens from three), with the pointer
    readout on the integers, and with a copy head on the words (from any earlier text, from the
    prompt only, or each prompt word at most once)."""
    torch.manual_seed(0)
    tok = rt2_model.load_tokenizer()
    integers = tok.convert_tokens_to_ids([str(i) for i in range(256)])
    ids = sorted(set(tok.convert_tokens_to_ids([*WORDS, "[SEP]"])) | set(integers))
    grid, stride8, pointer, copy = request.param
    model = rt2_model.Rt2CotMiniForConditionalGeneration(
        rt2_model.Rt2CotMiniConfig(
            output_token_ids=ids,
            vision_grid=grid,
            vision_stride8=stride8,
            pointer_readout=pointer,
            integer_token_ids=integers if pointer else None,
            copy_token_ids=tok.convert_tokens_to_ids(WORDS[:-2]) if copy else None,
            copy_from_prompt_only=copy in ("prompt", "once"),
            copy_each_word_once=copy == "once",
        )
    ).eval()
    model.load_pretrained_parts()
    with torch.no_grad():
        # A random projector barely moves the pretrained language model; louder image tokens make
        # the untrained model's output depend on the image, as a trained one does.
        model.projector.out_norm.weight.mul_(8.0)
        if pointer:  # a pointer that speaks (x and y roles), with image-dependent bumps
            model.pointer.role.bias.copy_(torch.tensor([2.0, 2.0, 0.0]))
            model.pointer.offset.weight.normal_(0, 0.5)
        if copy:  # a copy head that copies: the gate half open, an attention that prefers some words
            model.copy.gate.bias.zero_()
            model.copy.query.weight.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("rt2-cot-mini-random")
    model.save_pretrained(path)
    rt2_model.Rt2CotMiniProcessor(tokenizer=tok).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def backend(checkpoint):
    # One intra-op thread: the suite shares the machine (idle OpenMP threads spin under load);
    # the backend sets a process-wide thread count, so restore it for the tests that follow.
    threads = torch.get_num_threads()
    # fp32: these tests hold the fast path to generate()'s exact tokens (bf16 is tested on its own).
    yield BuiltinBackend(checkpoint, num_threads=1, precision="fp32")
    torch.set_num_threads(threads)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((240, 320, 3)) * 255).astype(np.uint8) for _ in range(n)]


def reference_ids(backend: BuiltinBackend, request: GenerationRequest) -> list[int]:
    """transformers generate() with the runtime's grammar processor, greedy."""
    spec = backend._spec(request.prompt_style, request.given_plan is not None, request.max_new_tokens)
    text = request_prompt(backend.model.config, request).text
    inputs = backend.processor(images=request.image, text=text)
    n = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        out = backend.model.generate(
            **inputs,
            logits_processor=[ActionGrammarProcessor(spec, n)],
            max_new_tokens=spec.max_new_tokens,
            do_sample=False,
        )
    return [t for t in out[0, n:].tolist() if t != spec.eos_id]


def run(backend: BuiltinBackend, request: GenerationRequest) -> tuple[str, list[int]]:
    text = "".join(backend.stream(request))
    return text, list(backend.last_stats.generated_ids)


def test_custom_layer_loop_is_in_use(backend):
    assert backend._custom_layers  # otherwise the fast path silently fell back to the model's layers


@pytest.mark.parametrize(
    ("style", "given_plan"), [("cot", None), ("cot", "pick up the red block"), ("plain", None)]
)
def test_greedy_tokens_equal_generate(backend, style, given_plan):
    backend.reset_drafts()
    for image in frames(3, seed=len(style)):
        request = GenerationRequest(
            image=image, instruction="pick up the rock", prompt_style=style, given_plan=given_plan
        )
        _text, ids = run(backend, request)
        assert ids == reference_ids(backend, request)
        assert len([t for t in ids if backend.token_map.bin_of(t) is not None]) >= 8


def test_fallback_through_the_models_own_layers_gives_the_same_tokens(backend):
    """If the model's layer internals change, the backend falls back to `model.run_layers` with a
    DynamicCache (rejected drafts cropped); that path must give the same tokens too."""
    fallback = BuiltinBackend(
        model=backend.model, processor=backend.processor, num_threads=1, precision="fp32"
    )
    fallback._custom_layers = False
    images = frames(2, seed=21)
    for image in (images[0], images[1], images[1]):
        for given_plan in (None, "pick up the rock"):
            request = GenerationRequest(image=image, instruction="pick up the rock", given_plan=given_plan)
            assert run(fallback, request) == run(backend, request)


def test_drafts_are_lossless_and_skip_decoding_when_the_frame_repeats(backend):
    fast = backend
    fast.reset_drafts()
    plain = BuiltinBackend(
        model=backend.model, processor=backend.processor, drafts=False, num_threads=1, precision="fp32"
    )
    images = frames(4, seed=7)
    sequence = [images[0], images[0], images[1], images[2], images[2], images[3]]
    for image in sequence:
        request = GenerationRequest(image=image, instruction="move the can near the apple")
        assert run(fast, request) == run(plain, request)
    # The same frame twice: the whole previous output is the draft and every token is accepted.
    request = GenerationRequest(image=images[3], instruction="move the can near the apple")
    run(fast, request)
    stats = fast.last_stats
    assert stats.decode_steps == 0 and stats.accepted_draft_tokens == stats.draft_tokens - 1
    assert plain.last_stats.decode_steps > 8


def test_the_gripper_is_stated_only_to_a_model_trained_with_it(backend):
    image = frames(1, seed=5)[0]

    def request(gripper, plan=None):
        return GenerationRequest(
            image=image, instruction="pick up the rock", gripper=gripper, given_plan=plan
        )

    def prompt_tokens(req) -> int:
        backend.reset_drafts()  # no draft: the prefill is image + prompt + the forced "Plan:"
        run(backend, req)
        return backend.last_stats.prefill_tokens

    unstated = prompt_tokens(request(None))
    assert prompt_tokens(request(0.5)) == unstated  # not trained with it: the prompt is unchanged
    backend.model.config.gripper_in_prompt = True
    try:
        # "grip ##per : 50" is four more tokens; no reading (a still image) counts as open.
        assert prompt_tokens(request(0.5)) == prompt_tokens(request(None)) == unstated + 4
        for req in (request(0.5), request(0.0), request(None), request(0.5, plan="pick up the rock")):
            assert run(backend, req)[1] == reference_ids(backend, req)
    finally:
        backend.model.config.gripper_in_prompt = False


def test_the_gripper_motion_is_stated_only_to_a_model_trained_with_it(backend):
    image = frames(1, seed=7)[0]
    config = backend.model.config

    def prefill(gripper, command) -> int:
        backend.reset_drafts()
        req = GenerationRequest(
            image=image, instruction="pick up the rock", gripper=gripper, gripper_command=command
        )
        ids = run(backend, req)[1]
        assert ids == reference_ids(backend, req)  # generate() reads the same prompt
        return backend.last_stats.prefill_tokens

    config.gripper_in_prompt = True
    try:
        stated = prefill(0.5, None)
        assert prefill(0.5, 0.0) == stated  # gripper_in_prompt alone: no motion word
        config.gripper_motion_in_prompt = True
        assert prefill(0.5, 0.0) == prefill(0.5, 1.0) == stated + 1  # "closing" / "opening"
        assert prefill(0.5, None) == prefill(1.0, 1.0) == stated  # no command, or at rest
    finally:
        config.gripper_in_prompt = config.gripper_motion_in_prompt = False


def test_the_position_is_stated_to_a_model_trained_with_it_and_required(backend):
    from rt2_cot.errors import BackendError

    image = frames(1, seed=6)[0]
    config = backend.model.config
    config.position_in_prompt = True
    try:
        with pytest.raises(BackendError, match="end-effector position"):
            run(backend, GenerationRequest(image=image, instruction="pick up the rock"))
        for xyz in ((0.45, 0.0, 0.2), (0.3, -0.1, 0.05)):
            req = GenerationRequest(image=image, instruction="pick up the rock", ee_xyz=xyz, gripper=0.5)
            assert run(backend, req)[1] == reference_ids(backend, req)
    finally:
        config.position_in_prompt = False


def scene(colour: tuple[int, int, int], corner: int) -> np.ndarray:
    """A flat background with one bright square: images that differ in content, not in noise."""
    img = np.zeros((240, 320, 3), np.uint8)
    img[:] = colour
    y, x = (40, 40) if corner == 0 else (160, 240)
    img[y : y + 60, x : x + 60] = (250, 250, 250)
    return img


def test_text_parses_into_an_action_and_differs_between_images(backend):
    backend.reset_drafts()
    outputs = []
    for image in (scene((200, 30, 30), 0), scene((30, 30, 200), 1)):
        request = GenerationRequest(image=image, instruction="pick up the rock")
        text, ids = run(backend, request)
        parser = StreamParser("cot")
        events = parser.feed(text) + parser.finish()
        complete = [e for e in events if type(e).__name__ == "ActionComplete"]
        assert len(complete) == 1, (text, events)
        outputs.append(ids)
    assert outputs[0] != outputs[1]  # the model looks at the image


def test_text_matches_the_transformers_backend(checkpoint, backend):
    tb = pytest.importorskip("rt2_cot.backends.transformers_backend", reason="TransformersBackend not landed")
    reference = tb.TransformersBackend(str(checkpoint))
    for image in frames(2, seed=11):
        for given_plan in (None, "pick up the rock"):
            request = GenerationRequest(image=image, instruction="pick up the rock", given_plan=given_plan)
            assert "".join(backend.stream(request)) == "".join(reference.stream(request))


def test_stop_event_ends_generation_early(backend):
    backend.reset_drafts()
    stop = threading.Event()
    chunks = []
    request = GenerationRequest(image=frames(1, seed=5)[0], instruction="pick up the rock")
    for chunk in backend.stream(request, stop):
        chunks.append(chunk)
        stop.set()
    # Set after the first chunk: nothing is decoded after the forward pass in flight.
    assert backend.last_stats.decode_steps == 0
    assert len(backend.last_stats.generated_ids) <= 3 and len(chunks) <= 3


def test_sampling_is_seeded_and_valid(backend):
    request = GenerationRequest(
        image=frames(1, seed=9)[0], instruction="pick up the rock", temperature=1.0, seed=3
    )
    a, b = run(backend, request), run(backend, request)
    assert a == b
    parser = StreamParser("cot")
    assert any(type(e).__name__ == "ActionComplete" for e in parser.feed(a[0]) + parser.finish())


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not an rt2-cot-mini checkpoint"):
        BuiltinBackend(tmp_path)


def test_expected_readout_equals_generate_and_differs_from_argmax(checkpoint, backend):
    """`action_readout="expected"` reads the six motion bins at their softmax expectation in both
    the fast path and generate() (through the grammar processor): same tokens, and not argmax's."""
    expected = BuiltinBackend(checkpoint, num_threads=1, action_readout="expected", precision="fp32")
    assert expected.expected_dims == (1, 2, 3, 4, 5, 6) and backend.expected_dims == ()
    differs = False
    for image in frames(3, seed=7):
        request = GenerationRequest(
            image=image, instruction="pick up the rock", given_plan="pick up the rock"
        )
        _text, ids = run(expected, request)
        assert ids == reference_ids(expected, request)
        _text, argmax_ids = run(backend, request)
        bins = [expected.token_map.bin_of(t) for t in ids]
        argmax_bins = [backend.token_map.bin_of(t) for t in argmax_ids]
        assert bins[0] == argmax_bins[0]  # terminate comes first and stays argmax
        differs |= bins[1:7] != argmax_bins[1:7]
    assert differs
    with pytest.raises(Exception, match="action readout"):
        BuiltinBackend(checkpoint, num_threads=1, action_readout="median")


def test_bf16_decoder_is_a_copy_and_stays_close_to_fp32(backend):
    from rt2_cot.backends.builtin import cpu_has_bf16
    from rt2_cot.errors import ModelLoadError

    fast = BuiltinBackend(model=backend.model, processor=backend.processor, num_threads=1, precision="bf16")
    assert fast.precision == "bf16"
    assert next(fast._fast_layers.parameters()).dtype == torch.bfloat16
    assert next(backend.model.layers.parameters()).dtype == torch.float32  # the model is untouched
    same = 0
    images = frames(6, seed=11)
    for image in images:
        request = GenerationRequest(image=image, instruction="move the can near the apple")
        text, ids = run(fast, request)
        parser = StreamParser("cot")
        events = parser.feed(text) + parser.finish()
        # Every step still ends in exactly one valid action.
        assert sum(type(e).__name__ == "ActionComplete" for e in events) == 1, text
        same += ids == run(backend, request)[1]
    assert same >= len(images) // 2, f"bf16 agreed with fp32 on only {same}/{len(images)} steps"
    auto = BuiltinBackend(model=backend.model, processor=backend.processor, num_threads=1, precision="auto")
    assert auto.precision == ("bf16" if cpu_has_bf16() else "fp32")
    with pytest.raises(ModelLoadError, match="precision"):
        BuiltinBackend(model=backend.model, processor=backend.processor, num_threads=1, precision="fp8")
