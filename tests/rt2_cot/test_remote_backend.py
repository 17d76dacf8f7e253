"""RemoteBackend against a real `rt2_cot.serving` app on loopback and against tiny misbehaving
servers (garbage, hang, early close, transient 503, refusal, nobody listening)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from rt2_cot.backends.base import GenerationRequest
from rt2_cot.backends.remote import RemoteBackend
from rt2_cot.errors import BackendError
from rt2_cot.serving import create_app


class EchoBackend:
    """Plan + an action computed from the image mean, one chunk a token."""

    name = "echo"

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    def stream(self, request: GenerationRequest, stop: threading.Event | None = None) -> Iterator[str]:
        self.requests.append(request)
        m = request.image.reshape(-1, 3).mean(axis=0).astype(int)
        words = [] if request.given_plan else ["Plan:", " pick", " up", " the", " rock.", " Action:"]
        words += [f" {v}" for v in (0, m[0], m[1], m[2], 128, 128, 128, 255)]
        for w in words:
            if stop is not None and stop.is_set():
                return
            yield w


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def real_server():
    backend = EchoBackend()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(backend, "rt2-echo"), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield backend, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=5)


def request(rgb=(120, 60, 30), **kw) -> GenerationRequest:
    img = np.zeros((32, 40, 3), np.uint8)
    img[:] = rgb
    return GenerationRequest(image=img, instruction="pick up the rock", **kw)


def test_streams_from_a_real_rt2_cot_server(real_server):
    backend, url = real_server
    remote = RemoteBackend(url)
    assert remote.model == "rt2-echo"  # discovered from /v1/models
    chunks = list(remote.stream(request()))
    assert len(chunks) == 14
    assert "".join(chunks) == "Plan: pick up the rock. Action: 0 120 60 30 128 128 128 255"
    seen = backend.requests[-1]
    assert seen.instruction == "pick up the rock" and seen.prompt_style == "cot" and seen.given_plan is None
    np.testing.assert_array_equal(seen.image, request().image)  # PNG data URL: exact pixels
    # different image -> different action over the wire
    assert "".join(remote.stream(request(rgb=(1, 2, 3)))).endswith("0 1 2 3 128 128 128 255")


def test_plan_reuse_travels_as_a_prefill_and_only_the_action_comes_back(real_server):
    backend, url = real_server
    remote = RemoteBackend(url, model="rt2-echo")
    text = "".join(remote.stream(request(given_plan="pick up the rock")))
    assert backend.requests[-1].given_plan == "pick up the rock"
    assert text.split() == ["0", "120", "60", "30", "128", "128", "128", "255"]


def test_plain_prompt_style(real_server):
    backend, url = real_server
    list(RemoteBackend(url).stream(request(prompt_style="plain")))
    assert backend.requests[-1].prompt_style == "plain"
    assert backend.requests[-1].instruction == "pick up the rock"


def test_body_carries_the_constraint_in_both_spellings():
    remote = RemoteBackend("http://127.0.0.1:9/v1", model="m")
    body = remote.build_body(request())
    assert body["guided_regex"] == body["structured_outputs"]["regex"]
    assert body["stream"] is True and body["model"] == "m"
    parts = body["messages"][0]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    reuse = remote.build_body(request(given_plan="pick up the rock"))
    assert reuse["continue_final_message"] is True
    assert reuse["messages"][-1]["role"] == "assistant"
    assert "pick up the rock" in reuse["messages"][-1]["content"]
    # Robot state is structured data beside the messages, never prompt text.
    assert "robot_state" not in body
    stated = remote.build_body(request(gripper=0.5, ee_xyz=(0.45, 0.0, 0.2), gripper_command=0.0))
    assert stated["robot_state"] == {"gripper": 0.5, "ee_xyz": [0.45, 0.0, 0.2], "gripper_command": 0.0}
    assert stated["messages"] == body["messages"]


def test_server_down_is_a_clear_backend_error_after_bounded_retries():
    port = free_port()  # nothing listens here
    remote = RemoteBackend(f"http://127.0.0.1:{port}/v1", model="m", retries=2, retry_backoff_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"did not answer after 3 attempt\(s\).*connection refused"):
        list(remote.stream(request()))
    assert time.monotonic() - t0 < 5
    with pytest.raises(BackendError, match="cannot reach the model server"):
        _ = RemoteBackend(f"http://127.0.0.1:{port}/v1").model
    # model discovery (no model given) is retried too, then reported the same way
    remote = RemoteBackend(f"http://127.0.0.1:{port}/v1", retries=1, retry_backoff_s=0.01)
    with pytest.raises(BackendError, match=r"after 2 attempt\(s\).*cannot reach the model server"):
        list(remote.stream(request()))


# -- tiny misbehaving servers ---------------------------------------------------------------------
class Misbehaving:
    """An HTTP server whose /v1/chat/completions answer is scripted per test."""

    def __init__(self, script) -> None:
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                outer.calls += 1
                script(self, outer.calls)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sse_headers(handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.end_headers()


def chunk(text: str) -> bytes:
    obj = {
        "id": "x",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }
    return f"data: {json.dumps(obj)}\n\n".encode()


@pytest.fixture
def misbehaving():
    servers: list[Misbehaving] = []

    def make(script) -> Misbehaving:
        servers.append(Misbehaving(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_garbage_stream_is_unparseable(misbehaving):
    def script(h, _):
        sse_headers(h)
        h.wfile.write(b"data: <html>hello</html>\n\n")

    server = misbehaving(script)
    with pytest.raises(BackendError, match="not JSON"):
        list(RemoteBackend(server.url, model="m", retries=2).stream(request()))
    assert server.calls == 1  # garbage is not retried: it would only come back again


def test_non_openai_json_is_unparseable(misbehaving):
    def script(h, _):
        sse_headers(h)
        h.wfile.write(b'data: {"tokens": [1, 2, 3]}\n\n')

    server = misbehaving(script)
    with pytest.raises(BackendError, match="not an OpenAI chat chunk"):
        list(RemoteBackend(server.url, model="m").stream(request()))


def test_hanging_server_times_out(misbehaving):
    release = threading.Event()

    def script(h, _):
        sse_headers(h)
        h.wfile.flush()
        release.wait(10)

    server = misbehaving(script)
    remote = RemoteBackend(server.url, model="m", timeout_s=0.3, retries=1, retry_backoff_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="timed out waiting for the next token"):
        list(remote.stream(request()))
    elapsed = time.monotonic() - t0
    release.set()
    assert server.calls == 2  # one retry: nothing had been yielded yet
    assert elapsed < 3


def test_close_mid_stream_fails_without_retry_after_tokens_were_yielded(misbehaving):
    def script(h, _):
        sse_headers(h)
        h.wfile.write(chunk("Plan:") + chunk(" pick"))
        h.wfile.flush()
        # connection closes here (HTTP/1.0, no [DONE])

    server = misbehaving(script)
    got: list[str] = []
    with pytest.raises(BackendError, match="mid-generation after 2 chunk"):
        for text in RemoteBackend(server.url, model="m", retries=3).stream(request()):
            got.append(text)
    assert got == ["Plan:", " pick"]
    assert server.calls == 1


def test_transient_503_is_retried_before_the_first_token(misbehaving):
    def script(h, call):
        if call == 1:
            h.send_response(503)
            h.send_header("Content-Type", "application/json")
            h.end_headers()
            h.wfile.write(b'{"error": {"message": "warming up"}}')
            return
        sse_headers(h)
        h.wfile.write(chunk("Plan: x.") + chunk(" Action: 0 1 2 3 4 5 6 7") + b"data: [DONE]\n\n")

    server = misbehaving(script)
    text = "".join(RemoteBackend(server.url, model="m", retries=2, retry_backoff_s=0.01).stream(request()))
    assert text == "Plan: x. Action: 0 1 2 3 4 5 6 7"
    assert server.calls == 2


def test_refusal_is_reported_with_the_servers_message_and_not_retried(misbehaving):
    def script(h, _):
        h.send_response(400)
        h.send_header("Content-Type", "application/json")
        h.end_headers()
        h.wfile.write(b'{"error": {"message": "guided_regex is not supported by this server"}}')

    server = misbehaving(script)
    with pytest.raises(BackendError, match=r"refused the request.*guided_regex is not supported"):
        list(RemoteBackend(server.url, model="m", retries=2).stream(request()))
    assert server.calls == 1


def test_server_side_error_event_becomes_backend_error(misbehaving):
    def script(h, _):
        sse_headers(h)
        h.wfile.write(chunk("Plan:") + b'data: {"error": {"message": "CUDA out of memory"}}\n\n')

    server = misbehaving(script)
    with pytest.raises(BackendError, match="CUDA out of memory"):
        list(RemoteBackend(server.url, model="m").stream(request()))


def test_stop_event_ends_the_stream(misbehaving):
    def script(h, _):
        sse_headers(h)
        for i in range(50):
            h.wfile.write(chunk(f" {i}"))
            h.wfile.flush()
            time.sleep(0.02)
        h.wfile.write(b"data: [DONE]\n\n")

    server = misbehaving(script)
    stop = threading.Event()
    got = []
    for text in RemoteBackend(server.url, model="m").stream(request(), stop):
        got.append(text)
        if len(got) == 3:
            stop.set()
    assert got == [" 0", " 1", " 2"]


def test_plain_prompt_with_a_plan_sends_no_prefill():
    remote = RemoteBackend("http://127.0.0.1:9/v1", model="m")
    body = remote.build_body(request(prompt_style="plain", given_plan="pick up the rock"))
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert "continue_final_message" not in body


# -- end to end: `rt2-cot serve` in a subprocess with a real (randomly initialised) checkpoint --------
@pytest.fixture(scope="module")
def served_checkpoint(tmp_path_factory):
    pytest.importorskip("rt2_cot.backends.transformers_backend")
    import os
    import subprocess
    import sys

    import httpx
    import torch

    import rt2_cot.model as rt2_model

    torch.manual_seed(1)
    tok = rt2_model.load_tokenizer()
    words = ["plan", "pick", "up", "the", "rock", "can", "red", "block", "action", ":", "."]
    ids = sorted(set(tok.convert_tokens_to_ids([*words, *(str(i) for i in range(256)), "[SEP]"])))
    model = rt2_model.Rt2CotMiniForConditionalGeneration(
        rt2_model.Rt2CotMiniConfig(output_token_ids=ids)
    ).eval()
    model.load_pretrained_parts()
    path = tmp_path_factory.mktemp("served-random")
    model.save_pretrained(path)
    rt2_model.Rt2CotMiniProcessor(tokenizer=tok).save_pretrained(path)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rt2_cot", "serve", "--model", str(path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        try:
            if httpx.get(url.removesuffix("/v1") + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "rt2-cot serve did not come up"
        time.sleep(0.3)
    yield path, url
    proc.terminate()
    proc.wait(timeout=10)


def test_remote_over_rt2_cot_serve_equals_the_local_model(served_checkpoint):
    from rt2_cot.backends.transformers_backend import TransformersBackend

    path, url = served_checkpoint
    remote = RemoteBackend(url)
    assert remote.model == path.name
    local = TransformersBackend(str(path))
    rng = np.random.default_rng(0)
    for given_plan in (None, "pick up the rock"):
        img = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
        req = GenerationRequest(image=img, instruction="pick up the rock", given_plan=given_plan)
        assert "".join(remote.stream(req)) == "".join(local.stream(req))
