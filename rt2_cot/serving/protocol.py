"""OpenAI chat-completions requests -> GenerationRequest, and the response/chunk shapes back.

Wire conventions (shared with `rt2_cot.backends.remote`, and what vLLM/SGLang also accept):
- the user message carries the image as a data URL (`image_url` content part) and the rendered
  prompt as text (`Instruction: ...` for chain-of-thought, `Q: what action should the robot take
  to ...? A:` for the plain RT-2 prompt; any other text is taken as a chain-of-thought instruction);
- plan reuse is an assistant prefill: a final assistant message `Plan: {plan}. Action:` with
  `continue_final_message: true` (vLLM's spelling), so only the action tokens are generated;
- the constraint is a guided-decoding regex: `guided_regex` or `structured_outputs.regex`, at the
  top level or inside a literal `extra_body` object;
- robot state, for models trained with it, is structured data beside the messages, not prompt
  text: `robot_state: {"gripper": 0.5, "ee_xyz": [0.45, 0.0, 0.2], "gripper_command": 0.0}`
  (opening, 0 closed .. 1 open; end-effector position in metres, arm base frame; the opening the
  client's previous step commanded). Servers that do not know the field ignore it
  (vLLM logs and drops unknown fields), and so do models not trained with it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
import time
import uuid
from dataclasses import dataclass

import numpy as np

from rt2_cot.backends.base import GenerationRequest, PromptStyle
from rt2_cot.serving.guided import CONTINUATION_REGEX, explain_rejection, matching_form

MAX_IMAGE_BYTES = 20 * 1024 * 1024

_GIVEN_PLAN_RE = re.compile(r"^\s*plan\s*:\s*(?P<plan>.*?)\s*\.?\s*action\s*:\s*$", re.IGNORECASE | re.DOTALL)


PREFILL_REGEX_MESSAGE = (
    "with a prefilled plan (`continue_final_message`) only the eight action integers are generated, "
    f"so the guided regex must describe them alone (e.g. {CONTINUATION_REGEX}) or be omitted"
)


class RequestError(Exception):
    """A client mistake: becomes an OpenAI-style error body with this HTTP status."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """What the server needs from one chat-completions body."""

    generation: GenerationRequest
    model: str
    stream: bool
    include_usage: bool
    guided_form: str | None  # which output form the client's regex described (None: no regex sent)


def parse_chat_request(body: object) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    # A literal `extra_body` object (some clients forward it verbatim): its fields count as top level.
    extra = body.get("extra_body")
    if isinstance(extra, dict):
        body = {**body, **extra}

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("`model` is required (see GET /v1/models)", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("`messages` must be a non-empty list", param="messages")

    for unsupported in ("guided_json", "guided_choice", "guided_grammar", "tools", "functions"):
        if body.get(unsupported):
            raise RequestError(
                f"`{unsupported}` is not supported: this server only produces RT-2 actions; "
                "send `guided_regex` (or `structured_outputs: {regex: ...}`) or nothing",
                param=unsupported,
            )
    if body.get("n", 1) not in (1, None):
        raise RequestError("only n=1 is supported", param="n")

    guided_form = _guided_form(body)
    image, prompt_text = _user_content(messages)
    style, instruction = parse_prompt(prompt_text)
    given_plan = _given_plan(messages, body)
    if given_plan is not None and guided_form not in (None, "plain", "continuation"):
        raise RequestError(PREFILL_REGEX_MESSAGE, param="guided_regex")

    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 48
    temperature = body.get("temperature")
    seed = body.get("seed")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= 4096:
        raise RequestError("`max_tokens` must be an integer 1..4096", param="max_tokens")
    if temperature is None:
        temperature = 0.0
    if not isinstance(temperature, int | float) or not 0.0 <= float(temperature) <= 2.0:
        raise RequestError("`temperature` must be a number 0..2", param="temperature")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestError("`seed` must be an integer", param="seed")
    stream_options = body.get("stream_options") or {}
    gripper, ee_xyz, gripper_command = _robot_state(body)

    return ChatRequest(
        generation=GenerationRequest(
            image=image,
            instruction=instruction,
            prompt_style=style,
            given_plan=given_plan,
            gripper=gripper,
            gripper_command=gripper_command,
            ee_xyz=ee_xyz,
            max_new_tokens=max_tokens,
            temperature=float(temperature),
            seed=seed,
        ),
        model=model,
        stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
        guided_form=guided_form,
    )


def _tolerant(literal: str) -> str:
    """Regex for template text: any run of whitespace matches any whitespace, spaces allowed before
    ':' and '?' (WordPiece round trips write `instruction : ...`)."""
    out = []
    for part in re.split(r"(\s+)", literal):
        if not part:
            continue
        if part.isspace():
            out.append(r"\s+")
        else:
            out.append("".join(r"\s*" + re.escape(c) if c in ":?" else re.escape(c) for c in part))
    return "".join(out)


@functools.cache
def _template_patterns() -> list[tuple[str, re.Pattern]]:
    """One tolerant regex per prompt template (rt2_cot.prompts), longest prompt first."""
    try:
        from rt2_cot.prompts import load_templates

        templates = {name: t.prompt for name, t in load_templates().items()}
    except Exception:  # templates unreadable: fall back to the two DESIGN.md prompts
        templates = {
            "cot": "Instruction: {instruction}",
            "plain": "Q: what action should the robot take to {instruction}? A:",
        }
    patterns = []
    for name, prompt in sorted(templates.items(), key=lambda kv: -len(kv[1])):
        before, _, after = prompt.partition("{instruction}")
        regex = rf"^\s*{_tolerant(before)}(?P<instruction>.+?){_tolerant(after)}\s*$"
        patterns.append((name, re.compile(regex, re.IGNORECASE | re.DOTALL)))
    return patterns


def parse_prompt(text: str) -> tuple[PromptStyle, str]:
    """Rendered prompt -> (style, instruction). Unrecognised text is a chain-of-thought instruction."""
    for name, pattern in _template_patterns():
        if m := pattern.match(text):
            return name, m.group("instruction").strip()  # type: ignore[return-value]
    text = text.strip()
    if not text:
        raise RequestError("the user message has no instruction text", param="messages")
    return "cot", text


def _robot_state(body: dict) -> tuple[float | None, tuple[float, float, float] | None, float | None]:
    """(`robot_state.gripper` 0..1, `robot_state.ee_xyz` metres, `robot_state.gripper_command` 0..1),
    each None when absent."""
    state = body.get("robot_state")
    if state is None:
        return None, None, None
    if not isinstance(state, dict) or set(state) - {"gripper", "ee_xyz", "gripper_command"}:
        raise RequestError(
            '`robot_state` must be an object like {"gripper": 0.5, "ee_xyz": [0.45, 0.0, 0.2], '
            '"gripper_command": 0.0}',
            param="robot_state",
        )
    gripper, xyz, command = state.get("gripper"), state.get("ee_xyz"), state.get("gripper_command")
    for name, value in (("gripper", gripper), ("gripper_command", command)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0
        ):
            raise RequestError(f"`robot_state.{name}` must be a number 0..1", param="robot_state")
    if xyz is not None and (
        not isinstance(xyz, list)
        or len(xyz) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and abs(v) < 1e3 for v in xyz)
    ):
        raise RequestError("`robot_state.ee_xyz` must be three numbers (metres)", param="robot_state")
    return (
        None if gripper is None else float(gripper),
        None if xyz is None else (float(xyz[0]), float(xyz[1]), float(xyz[2])),
        None if command is None else float(command),
    )


def _guided_form(body: dict) -> str | None:
    regexes: list[tuple[str, object]] = []
    if "guided_regex" in body and body["guided_regex"] is not None:
        regexes.append(("guided_regex", body["guided_regex"]))
    structured = body.get("structured_outputs")
    if structured is not None:
        if not isinstance(structured, dict) or set(structured) - {"regex"}:
            raise RequestError(
                "`structured_outputs` supports only {regex: ...} here (RT-2 actions)",
                param="structured_outputs",
            )
        if structured.get("regex") is not None:
            regexes.append(("structured_outputs.regex", structured["regex"]))
    form = None
    for param, regex in regexes:
        if not isinstance(regex, str):
            raise RequestError(f"`{param}` must be a string", param=param)
        found = matching_form(regex)
        if found is None:
            raise RequestError(explain_rejection(regex), param=param)
        form = found
    return form


def _user_content(messages: list) -> tuple[np.ndarray, str]:
    """The image and text of the last user message."""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise RequestError("no user message: send the image and the instruction as a user message")
    content = users[-1].get("content")
    if isinstance(content, str):
        raise RequestError(
            "the user message has no image: send content parts with an `image_url` data URL "
            "(data:image/png;base64,...) and a `text` part",
            param="messages",
        )
    if not isinstance(content, list):
        raise RequestError("user message `content` must be a list of parts", param="messages")
    images, texts = [], []
    for part in content:
        if not isinstance(part, dict):
            raise RequestError("each content part must be an object", param="messages")
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") in ("image_url", "input_image"):
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            images.append(decode_data_url(url))
        else:
            raise RequestError(f"unsupported content part type {part.get('type')!r}", param="messages")
    if len(images) != 1:
        raise RequestError(f"send exactly one image per request, got {len(images)}", param="messages")
    return images[0], "\n".join(texts)


def decode_data_url(url: object) -> np.ndarray:
    """`data:image/...;base64,...` -> HxWx3 uint8 RGB. Remote URLs are refused (no fetching)."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(url, str) or not url.startswith("data:"):
        raise RequestError(
            "images must be inline data URLs (data:image/png;base64,...); this server does not fetch URLs",
            param="messages",
        )
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise RequestError("image data URLs must be base64 encoded", param="messages")
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise RequestError("image too large (max 20 MB)", param="messages")
    try:
        raw = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"image data URL is not valid base64: {exc}", param="messages") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise RequestError(f"image data URL is not a readable image: {exc}", param="messages") from exc


def _given_plan(messages: list, body: dict) -> str | None:
    """A final assistant prefill `Plan: ... Action:` means plan reuse; anything else is refused."""
    last = messages[-1]
    if not (isinstance(last, dict) and last.get("role") == "assistant"):
        return None
    content = last.get("content")
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise RequestError("assistant prefill must be text", param="messages")
    if body.get("continue_final_message") is False:
        raise RequestError("a final assistant message needs `continue_final_message: true`", param="messages")
    m = _GIVEN_PLAN_RE.match(content)
    if not m or not m.group("plan"):
        raise RequestError(
            "a final assistant message is a plan prefill and must read `Plan: <plan>. Action:`",
            param="messages",
        )
    return m.group("plan").strip()


# -- response shapes ---------------------------------------------------------------------------
def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def chunk(cid: str, model: str, created: int, delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(cid: str, model: str, text: str, finish_reason: str, completion_tokens: int) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(0, completion_tokens),
    }
