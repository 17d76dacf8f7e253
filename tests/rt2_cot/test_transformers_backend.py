"""TransformersBackend end to end on tiny random PaliGemma and LLaVA checkpoints built offline.

Random weights say nonsense; the constraint alone must still give a plan and a valid action every
time. The golden test guards against OpenVLA's silent failure: the image must change the output.
"""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from rt2_cot.backends import load_backend
from rt2_cot.backends.base import GenerationRequest
from rt2_cot.backends.transformers_backend import TransformersBackend
from rt2_cot.errors import ModelLoadError
from rt2_cot.events import ActionComplete, ActionTokenEvent, PlanDelta
from rt2_cot.step import run_step
from rt2_cot.tiny_vlm import build_tiny_llava, build_tiny_paligemma

INSTRUCTION = "pick up the rock"
RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {
        "paligemma": build_tiny_paligemma(root / "paligemma", seed=0),
        "llava": build_tiny_llava(root / "llava", seed=0),
    }


@pytest.fixture(scope="module")
def backends(checkpoints):
    return {name: TransformersBackend(path) for name, path in checkpoints.items()}


def request(**kwargs) -> GenerationRequest:
    kwargs.setdefault("image", IMAGE)
    kwargs.setdefault("instruction", INSTRUCTION)
    return GenerationRequest(**kwargs)


@pytest.mark.parametrize("family", ["paligemma", "llava"])
def test_sampling_always_gives_a_plan_and_a_valid_action(backends, family):
    backend = backends[family]
    assert backend.token_map.style == "integer"
    for seed in range(4):
        events = []
        out = run_step(backend, request(temperature=1.0, seed=seed), on_event=events.append)
        assert out.command is not None, out.error
        assert out.plan.strip() and len(out.tokens) == 8 and all(0 <= t <= 255 for t in out.tokens)
        assert [e.value for e in events if isinstance(e, ActionTokenEvent)] == list(out.tokens)
        assert "".join(e.text for e in events if isinstance(e, PlanDelta)) == out.plan
        assert isinstance(events[-1], ActionComplete)
        assert out.ttft_ms is not None and 0 < out.ttft_ms <= out.latency_ms


def test_seeded_sampling_is_reproducible_and_seeds_differ(backends):
    backend = backends["paligemma"]
    texts = ["".join(backend.stream(request(temperature=1.0, seed=s))) for s in (11, 11, 12, 13)]
    assert texts[0] == texts[1]
    assert len(set(texts[1:])) >= 2


@pytest.mark.parametrize("family", ["paligemma", "llava"])
def test_given_plan_generates_only_the_action(backends, family):
    out = run_step(backends[family], request(given_plan="pick up the rock."))
    assert out.command is not None and out.plan == "pick up the rock"
    assert re.fullmatch(r"( \d{1,3}){8}", out.text), out.text
    assert out.replanned is False


def test_plain_prompt_gives_eight_integers(backends):
    out = run_step(backends["llava"], request(prompt_style="plain", temperature=1.0, seed=1))
    assert out.command is not None and out.plan == ""
    assert re.fullmatch(r"( \d{1,3}){8}", out.text), out.text


def test_tail_token_vocabulary_streams_bins_as_numbers(checkpoints):
    backend = TransformersBackend(checkpoints["paligemma"], action_tokens="tail")
    assert backend.token_map.style == "tail"
    for seed in range(3):
        out = run_step(backend, request(temperature=1.0, seed=seed))
        assert out.command is not None, out.error
        assert re.search(r"action :( \d{1,3}){8}$", out.text), out.text


@pytest.mark.parametrize("family", ["paligemma", "llava"])
def test_golden_different_images_give_different_tokens(backends, family):
    backend = backends[family]
    black = np.zeros_like(IMAGE)
    noise = RNG.integers(0, 256, IMAGE.shape, dtype=np.uint8)
    texts = {
        name: "".join(backend.stream(request(image=img)))
        for name, img in (("black", black), ("noise", noise))
    }
    assert texts["black"] != texts["noise"], "the model ignored the image"
    assert "".join(backend.stream(request(image=black))) == texts["black"], (
        "greedy decoding must be deterministic"
    )


def test_chat_template_processors_get_the_image_in_the_message(checkpoints):
    backend = TransformersBackend(checkpoints["llava"])
    backend.processor.chat_template = (
        "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:"
    )
    inputs = backend.prepare_inputs(request(given_plan="go"))
    text = backend.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("<image>") == 16 and text.endswith("assistant : plan : go. action :")
    assert run_step(backend, request()).command is not None


def test_stop_event_cancels_within_a_token(backends):
    backend = backends["paligemma"]
    stop = threading.Event()
    stop.set()
    out = run_step(backend, request(), stop=stop)
    assert out.command is None and "stopped" in out.error
    stop.clear()
    chunks = 0

    def on_event(event):
        nonlocal chunks
        if isinstance(event, PlanDelta):
            chunks += 1
            stop.set()

    out = run_step(backend, request(), on_event=on_event, stop=stop)
    assert out.command is None and "stopped" in out.error
    assert len(out.text.split()) < 8, out.text  # a full plan would be dozens of words


def test_abandoned_stream_ends_the_worker_thread(backends):
    stream = backends["llava"].stream(request())
    next(stream)
    stream.close()
    deadline = time.monotonic() + 5
    while any(t.name.startswith("generate:") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name.startswith("generate:") for t in threading.enumerate())


def test_not_a_checkpoint_gives_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not a transformers checkpoint"):
        TransformersBackend(tmp_path)
    with pytest.raises(ModelLoadError, match="not found"):
        TransformersBackend(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match="config"):
        TransformersBackend(tmp_path)


def test_checkpoint_without_weights_gives_model_load_error(checkpoints, tmp_path):
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        (tmp_path / name).write_bytes((checkpoints["paligemma"] / name).read_bytes())
    with pytest.raises(ModelLoadError):
        TransformersBackend(tmp_path)


def test_load_backend_dispatch(checkpoints, tmp_path, monkeypatch):
    assert isinstance(load_backend(str(checkpoints["llava"])), TransformersBackend)
    monkeypatch.setenv("RT2_BUILTIN_CHECKPOINT", str(tmp_path / "absent"))
    with pytest.raises(ModelLoadError, match="built-in checkpoint not found"):
        load_backend("builtin")
    remote = load_backend("http://127.0.0.1:9/v1")
    assert type(remote).__name__ == "RemoteBackend"
    with pytest.raises(ModelLoadError):
        load_backend(str(tmp_path / "nowhere"))


def test_generation_failure_is_a_backend_error_not_a_hang(backends, monkeypatch):
    from rt2_cot.errors import BackendError

    backend = backends["llava"]

    def broken_generate(**kwargs):
        raise RuntimeError("CUDA out of memory (pretend)")

    monkeypatch.setattr(backend.model, "generate", broken_generate)
    with pytest.raises(BackendError, match="out of memory"):
        list(backend.stream(request()))
