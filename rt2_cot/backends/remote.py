"""A backend that streams from any OpenAI-compatible server: `rt2-cot serve`, vLLM, SGLang.

Wire format (the same conventions `rt2_cot.serving` accepts):
- one user message: the frame as a PNG data URL + the rendered prompt text;
- plan reuse: a final assistant message `Plan: {plan}. Action:` with `continue_final_message`
  (vLLM's prefill switch), so the server only generates the eight action integers;
- the action constraint as a guided-decoding regex, in both spellings servers know
  (`guided_regex` and `structured_outputs: {regex}`).

Failure policy: connect/read timeouts; bounded retries with backoff, but only before the first
token (text already yielded cannot be taken back); a `BackendError` with a message that says what
to check when the server is down or sends something that is not an OpenAI stream. The control loop
turns that into "no action this step", so the arm holds still. Depth is not sent (the chat API has
no place for it). Only httpx is needed here: no torch, no model code.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
from loguru import logger

from rt2_cot.backends.base import GenerationRequest, PromptStyle
from rt2_cot.errors import BackendError

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class _Retryable(Exception):
    """A failure before the first token that a retry may fix (connection, 5xx, early close)."""


def split_prompt(style: PromptStyle, instruction: str, given_plan: str | None = None) -> tuple[str, str]:
    """(user prompt, assistant prefill) from the runtime's templates; the prefill is empty unless
    a plan is given and the style has one (plain prompts have nothing to reuse)."""
    from rt2_cot.prompts import render_prompt

    rendered = render_prompt(style, instruction, given_plan)
    return rendered.prompt, rendered.continuation


def guided_regex(style: PromptStyle, prefilled: bool = False) -> str:
    """The regex sent to the server: the whole output, or only the action after a prefilled plan."""
    from rt2_cot.constrained import action_regex

    return action_regex(style, plan_given=prefilled)


def image_data_url(image: np.ndarray, image_format: str = "png") -> str:
    """HxWx3 uint8 RGB -> data URL. PNG by default so the server sees exactly our pixels."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise BackendError(f"image must be HxWx3 uint8 RGB, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    fmt = "JPEG" if image_format.lower() in ("jpg", "jpeg") else "PNG"
    Image.fromarray(arr).save(
        buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {"compress_level": 1})
    )
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


class RemoteBackend:
    """Backend protocol over HTTP. `base_url` ends in `/v1` (e.g. `http://gpu-box:8000/v1`)."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        retries: int = 2,
        retry_backoff_s: float = 0.25,
        api_key: str | None = None,
        image_format: str = "png",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise BackendError(f"remote model URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.name = f"remote:{self.base_url}"
        self.retries = max(0, int(retries))
        self.retry_backoff_s = retry_backoff_s
        self.image_format = image_format
        self._model = model
        self._model_lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # read timeout bounds the wait for *each* chunk: a hung server fails the step, not the loop.
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            headers=headers,
            follow_redirects=False,
        )

    # -- model id --------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The model id to request; asks `/v1/models` once when not given."""
        try:
            return self._resolve_model()
        except _Retryable as exc:
            raise BackendError(str(exc)) from exc

    def _resolve_model(self) -> str:
        with self._model_lock:
            if self._model is None:
                self._model = self._discover_model()
            return self._model

    def _discover_model(self) -> str:
        url = f"{self.base_url}/models"
        try:
            resp = self._client.get(url)
        except httpx.HTTPError as exc:
            raise _Retryable(
                f"cannot reach the model server at {self.base_url} ({_describe(exc)}); "
                "check that it is running (rt2-cot serve / vllm serve) and the URL ends in /v1"
            ) from exc
        if resp.status_code in _RETRY_STATUS:
            raise _Retryable(f"{url} answered HTTP {resp.status_code}: {_error_text(resp)}")
        if resp.status_code != 200:
            raise BackendError(f"{url} answered HTTP {resp.status_code}: {_error_text(resp)}")
        try:
            ids = [m["id"] for m in resp.json()["data"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"{url} did not return an OpenAI model list; is this an OpenAI-compatible server?"
            ) from exc
        if not ids:
            raise BackendError(f"the server at {self.base_url} serves no models")
        return str(ids[0])

    def close(self) -> None:
        self._client.close()

    # -- generation ------------------------------------------------------------------------------
    def build_body(self, request: GenerationRequest) -> dict:
        """The chat-completions JSON for one step (exposed for tests and for debugging a server)."""
        prompt, prefill = split_prompt(request.prompt_style, request.instruction, request.given_plan)
        messages: list[dict] = [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": image_data_url(request.image, self.image_format)},
                    },
                    {"type": "text", "text": prompt},
                ],
            }
        ]
        body: dict = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        state: dict = {}
        if request.gripper is not None:
            state["gripper"] = round(float(request.gripper), 4)
        if request.ee_xyz is not None:
            state["ee_xyz"] = [round(float(v), 5) for v in request.ee_xyz]
        if request.gripper_command is not None:
            state["gripper_command"] = round(float(request.gripper_command), 4)
        if state:
            body["robot_state"] = state
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        regex = guided_regex(request.prompt_style, prefilled=bool(prefill))
        body["guided_regex"] = regex
        body["structured_outputs"] = {"regex": regex}
        return body

    def stream(self, request: GenerationRequest, stop: threading.Event | None = None) -> Iterator[str]:
        body: dict | None = None
        url = f"{self.base_url}/chat/completions"
        attempts = self.retries + 1
        last: str = ""
        for attempt in range(attempts):
            if stop is not None and stop.is_set():
                return
            started = False
            try:
                if body is None:
                    self._resolve_model()  # a server that is still starting is retried like any other
                    body = self.build_body(request)
                for text in self._stream_once(url, body, stop):
                    started = True
                    yield text
                return
            except _Retryable as exc:
                last = str(exc)
            except httpx.HTTPError as exc:
                if started:
                    raise BackendError(
                        f"the model server at {self.base_url} failed mid-generation ({_describe(exc)})"
                    ) from exc
                last = _describe(exc)
            if attempt + 1 < attempts:
                logger.warning("remote model: {}; retry {}/{}", last, attempt + 1, self.retries)
                if stop is not None and stop.wait(self.retry_backoff_s * (2**attempt)):
                    return
                if stop is None:
                    time.sleep(self.retry_backoff_s * (2**attempt))
        raise BackendError(
            f"the model server at {self.base_url} did not answer after {attempts} attempt(s): {last}; "
            "check that it is running and reachable"
        )

    def _stream_once(self, url: str, body: dict, stop: threading.Event | None) -> Iterator[str]:
        yielded = 0
        with self._client.stream("POST", url, json=body, headers={"Accept": "text/event-stream"}) as resp:
            if resp.status_code != 200:
                resp.read()
                message = f"HTTP {resp.status_code}: {_error_text(resp)}"
                if resp.status_code in _RETRY_STATUS:
                    raise _Retryable(message)
                raise BackendError(f"the model server at {self.base_url} refused the request ({message})")
            if "text/event-stream" not in resp.headers.get("content-type", ""):
                # A server that ignored `stream: true` and answered with one JSON completion.
                resp.read()
                yield _completion_text(resp.content, self.base_url)
                return
            for data in _sse_data(resp):
                if stop is not None and stop.is_set():
                    return
                if data == "[DONE]":
                    return
                text = _chunk_text(data, self.base_url)
                if text:
                    yielded += 1
                    yield text
        # The connection ended without [DONE]: a crash or a proxy cutting the stream.
        if yielded:
            raise BackendError(
                f"the model server at {self.base_url} closed the stream mid-generation after {yielded} chunk(s)"
            )
        raise _Retryable("the server closed the stream before sending anything")


def _sse_data(resp: httpx.Response) -> Iterator[str]:
    """Server-sent events -> the `data` payload of each event (comments/keep-alives skipped)."""
    lines: list[str] = []
    for line in resp.iter_lines():
        if line == "":
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            lines.append(value[1:] if value.startswith(" ") else value)
    if lines:
        yield "\n".join(lines)


def _chunk_text(data: str, base_url: str) -> str:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise BackendError(
            f"the model server at {base_url} sent something that is not JSON: {data[:80]!r}"
        ) from exc
    if not isinstance(obj, dict):
        raise BackendError(f"the model server at {base_url} sent an unexpected event: {data[:80]!r}")
    if "error" in obj:
        err = obj["error"]
        message = err.get("message", err) if isinstance(err, dict) else err
        raise BackendError(f"the model server at {base_url} reported an error: {message}")
    try:
        choices = obj["choices"]
        if not choices:  # usage-only chunk
            return ""
        content = choices[0].get("delta", {}).get("content")
    except (KeyError, TypeError, AttributeError) as exc:
        raise BackendError(
            f"the model server at {base_url} sent a chunk that is not an OpenAI chat chunk: {data[:80]!r}"
        ) from exc
    if content is not None and not isinstance(content, str):
        raise BackendError(f"the model server at {base_url} sent non-text content: {data[:80]!r}")
    return content or ""


def _completion_text(raw: bytes, base_url: str) -> str:
    try:
        return str(json.loads(raw)["choices"][0]["message"]["content"] or "")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BackendError(
            f"the model server at {base_url} answered with something that is not an OpenAI completion: {raw[:80]!r}"
        ) from exc


def _error_text(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if err:
            return str(err)
    except (ValueError, AttributeError):
        pass
    return resp.text[:200] or resp.reason_phrase


def _describe(exc: httpx.HTTPError) -> str:
    kind = {
        httpx.ConnectError: "connection refused or host unreachable",
        httpx.ConnectTimeout: "connect timed out",
        httpx.ReadTimeout: "timed out waiting for the next token",
        httpx.RemoteProtocolError: "connection closed unexpectedly",
    }
    for cls, text in kind.items():
        if isinstance(exc, cls):
            return f"{text}: {exc}" if str(exc) else text
    return f"{type(exc).__name__}: {exc}"
