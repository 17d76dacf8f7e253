"""`rt2-cot serve`: the OpenAI-compatible app over real HTTP on loopback, driven by the official
`openai` client. The backend is a small deterministic fake whose action depends on the image, so
the tests check what travels over the wire; the real model is exercised in test_builtin_backend."""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from PIL import Image

from rt2_cot.backends.base import GenerationRequest
from rt2_cot.errors import BackendError
from rt2_cot.serving import create_app
from rt2_cot.serving.guided import ACTION_TOKENS_REGEX, CONTINUATION_REGEX, matching_form

COT_REGEX = rf"Plan: [^\n]{{1,200}}\. Action: {ACTION_TOKENS_REGEX}"


class FakeBackend:
    """Plan text, then eight integers computed from the image (so images matter), one chunk a token."""

    name = "fake"

    def __init__(self, delay_s: float = 0.0, n_filler: int = 0, fail_after: int | None = None) -> None:
        self.delay_s, self.n_filler, self.fail_after = delay_s, n_filler, fail_after
        self.requests: list[GenerationRequest] = []
        self.produced = 0
        self.last_stop: threading.Event | None = None

    @staticmethod
    def action_for(image: np.ndarray) -> list[int]:
        means = image.reshape(-1, 3).mean(axis=0)
        return [0, int(means[0]), int(means[1]), int(means[2]), 128, 128, 128, 255]

    def stream(self, request: GenerationRequest, stop: threading.Event | None = None) -> Iterator[str]:
        self.requests.append(request)
        self.last_stop = stop
        words: list[str] = []
        if request.given_plan is None and request.prompt_style == "cot":
            words += ["Plan:", " pick", " up", " the", " rock."] + [" very"] * self.n_filler + [" Action:"]
        words += [f" {v}" for v in self.action_for(request.image)]
        for i, w in enumerate(words):
            if stop is not None and stop.is_set():
                return
            if self.fail_after is not None and i == self.fail_after:
                raise BackendError("the fake model fell over")
            if self.delay_s:
                time.sleep(self.delay_s)
            self.produced += 1
            yield w


def expected_text(image: np.ndarray, plan: bool = True) -> str:
    action = " ".join(str(v) for v in FakeBackend.action_for(image))
    return f"Plan: pick up the rock. Action: {action}" if plan else f" {action}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn on a free loopback port in a daemon thread."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


@pytest.fixture
def served():
    backend = FakeBackend()
    server = ServerThread(create_app(backend, "rt2-test"))
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=10)
    yield backend, server, client
    server.close()


def data_url(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image(rgb: tuple[int, int, int]) -> np.ndarray:
    img = np.zeros((48, 64, 3), np.uint8)
    img[:] = rgb
    img[0, 0] = (255, 255, 255)  # not perfectly uniform: the PNG must round-trip exactly
    return img


def user_message(img: np.ndarray, text: str = "Instruction: pick up the rock") -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(img)}},
            {"type": "text", "text": text},
        ],
    }


def test_models_and_health(served):
    _, server, client = served
    assert [m.id for m in client.models.list().data] == ["rt2-test"]
    health = httpx.get(server.base_url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["model"] == "rt2-test"


def test_non_streaming_returns_the_backend_text_for_that_image(served):
    backend, _, client = served
    red, blue = image((200, 10, 10)), image((10, 10, 200))
    out = [
        client.chat.completions.create(
            model="rt2-test", messages=[user_message(img)], extra_body={"guided_regex": COT_REGEX}
        )
        for img in (red, blue)
    ]
    assert out[0].choices[0].message.content == expected_text(red)
    assert out[1].choices[0].message.content == expected_text(blue)
    assert out[0].choices[0].message.content != out[1].choices[0].message.content
    assert out[0].choices[0].finish_reason == "stop"
    assert out[0].usage.completion_tokens == 14
    req = backend.requests[0]
    assert req.instruction == "pick up the rock" and req.prompt_style == "cot" and req.given_plan is None
    np.testing.assert_array_equal(req.image, red)


def test_streaming_sends_openai_chunks_that_add_up(served):
    _, _, client = served
    img = image((30, 140, 90))
    stream = client.chat.completions.create(
        model="rt2-test",
        messages=[user_message(img)],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"structured_outputs": {"regex": COT_REGEX}},
    )
    chunks = list(stream)
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) == 14  # one SSE event per generated token, not one blob
    assert "".join(contents) == expected_text(img)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 14


def test_plain_prompt_and_literal_extra_body_object(served):
    backend, server, _ = served
    img = image((5, 5, 5))
    body = {
        "model": "rt2-test",
        "messages": [user_message(img, "Q: what action should the robot take to pick up the can? A:")],
        "extra_body": {"guided_regex": ACTION_TOKENS_REGEX},
    }
    resp = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    assert backend.requests[-1].prompt_style == "plain"
    assert backend.requests[-1].instruction == "pick up the can"


def test_plan_prefill_is_given_to_the_backend_and_only_the_action_comes_back(served):
    backend, _, client = served
    img = image((100, 50, 25))
    out = client.chat.completions.create(
        model="rt2-test",
        messages=[user_message(img), {"role": "assistant", "content": "Plan: pick up the rock. Action:"}],
        extra_body={
            "continue_final_message": True,
            "add_generation_prompt": False,
            "guided_regex": CONTINUATION_REGEX,
        },
    )
    assert backend.requests[-1].given_plan == "pick up the rock"
    assert out.choices[0].message.content == expected_text(img, plan=False)


def test_robot_state_reaches_the_backend_and_bad_state_is_refused(served):
    backend, _, client = served
    img = image((10, 20, 30))
    client.chat.completions.create(
        model="rt2-test",
        messages=[user_message(img)],
        extra_body={"robot_state": {"gripper": 0.5, "ee_xyz": [0.45, 0, 0.2], "gripper_command": 0}},
    )
    assert backend.requests[-1].gripper == 0.5 and backend.requests[-1].ee_xyz == (0.45, 0.0, 0.2)
    assert backend.requests[-1].gripper_command == 0.0
    client.chat.completions.create(model="rt2-test", messages=[user_message(img)])
    assert backend.requests[-1].gripper is None and backend.requests[-1].ee_xyz is None
    for bad in (
        {"gripper": 2},
        {"gripper": "open"},
        {"gripper_command": -1},
        {"joints": [0, 1]},
        [0.5],
        {"ee_xyz": [0.1, 0.2]},
        {"ee_xyz": ["a", 0, 0]},
    ):
        with pytest.raises(openai.BadRequestError, match="robot_state"):
            client.chat.completions.create(
                model="rt2-test", messages=[user_message(img)], extra_body={"robot_state": bad}
            )


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"guided_regex": ".*"}, "does not describe the RT-2 action grammar"),
        ({"guided_regex": r"(\d+ ){7}\d+"}, "does not describe the RT-2 action grammar"),
        ({"guided_regex": "(unclosed"}, "not a valid regular expression"),
        ({"structured_outputs": {"json": {"type": "object"}}}, "supports only {regex"),
        ({"guided_json": {"type": "object"}}, "not supported"),
    ],
)
def test_unsupported_constraints_are_refused_with_a_400_that_says_what_works(served, extra, needle):
    backend, _, client = served
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="rt2-test", messages=[user_message(image((1, 2, 3)))], extra_body=extra
        )
    assert needle in str(err.value)
    if "grammar" in needle:
        assert ACTION_TOKENS_REGEX in str(err.value)  # the message shows a regex that is accepted
    assert backend.requests == []  # nothing was generated


def test_bad_requests_give_clear_errors(served):
    _, _, client = served
    with pytest.raises(openai.BadRequestError, match="no image"):
        client.chat.completions.create(
            model="rt2-test", messages=[{"role": "user", "content": "pick up the rock"}]
        )
    with pytest.raises(openai.BadRequestError, match="does not fetch URLs"):
        client.chat.completions.create(
            model="rt2-test",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                        {"type": "text", "text": "Instruction: x"},
                    ],
                }
            ],
        )
    bad_png = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    with pytest.raises(openai.BadRequestError, match="not a readable image"):
        client.chat.completions.create(
            model="rt2-test",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": bad_png}}]}],
        )
    with pytest.raises(openai.NotFoundError, match="serves 'rt2-test'"):
        client.chat.completions.create(model="gpt-4o", messages=[user_message(image((1, 1, 1)))])


def test_backend_failure_mid_stream_reaches_the_client_as_an_error(served):
    backend, _, client = served
    backend.fail_after = 3
    stream = client.chat.completions.create(
        model="rt2-test", messages=[user_message(image((9, 9, 9)))], stream=True
    )
    with pytest.raises(openai.APIError, match="fell over"):
        list(stream)
    backend.fail_after = None
    # and the server keeps serving afterwards
    out = client.chat.completions.create(model="rt2-test", messages=[user_message(image((9, 9, 9)))])
    assert out.choices[0].message.content == expected_text(image((9, 9, 9)))


@pytest.mark.parametrize("streaming", [True, False])
def test_client_disconnect_cancels_generation(streaming):
    backend = FakeBackend(delay_s=0.05, n_filler=400)  # ~20 s if nobody stopped it
    server = ServerThread(create_app(backend, "rt2-test"))
    try:
        body = {"model": "rt2-test", "messages": [user_message(image((1, 2, 3)))], "stream": streaming}
        with httpx.Client(timeout=10) as http:
            if streaming:
                with http.stream("POST", f"{server.base_url}/chat/completions", json=body) as resp:
                    lines = resp.iter_lines()
                    got = [next(lines) for _ in range(6)]  # a few events, then hang up
                    assert any('"content"' in line for line in got)
            else:
                with pytest.raises(httpx.ReadTimeout):
                    http.post(f"{server.base_url}/chat/completions", json=body, timeout=0.5)
        deadline = time.monotonic() + 5
        while not (backend.last_stop is not None and backend.last_stop.is_set()):
            assert time.monotonic() < deadline, "generation was not cancelled after the client left"
            time.sleep(0.02)
        produced = backend.produced
        time.sleep(0.3)
        assert backend.produced <= produced + 1  # the backend stopped generating
        assert backend.produced < 100
    finally:
        server.close()


def test_guided_regex_verification_probes():
    assert matching_form(COT_REGEX) == "cot"
    assert matching_form(ACTION_TOKENS_REGEX) == "plain"
    assert matching_form(CONTINUATION_REGEX) in ("plain", "continuation")
    # case-insensitive spelling for uncased tokenizers is the same grammar
    assert matching_form(rf"(?i)plan ?: [^\n]+\. ?action ?: {ACTION_TOKENS_REGEX}") == "cot"
    for wrong in (
        ".*",
        r"Plan: .*\. Action: (\d+ ){7}\d+",
        r"(\d{1,3} ){6}\d{1,3}",
        "0 128 128 128 128 128 128 255",
    ):
        assert matching_form(wrong) is None, wrong


def test_runtime_action_regexes_are_accepted():
    constrained = pytest.importorskip(
        "rt2_cot.constrained", reason="the runtime's constrained module has not landed"
    )
    for style in ("cot", "plain"):
        assert matching_form(constrained.action_regex(style)) is not None, style


def test_cli_serve_refuses_a_busy_port_with_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "rt2_cot", "serve", "--model", "builtin", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "already in use" in lines[0], proc.stderr
