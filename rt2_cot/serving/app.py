"""The OpenAI-compatible HTTP app: `/v1/chat/completions` (streaming and not), `/v1/models`, `/health`.

One backend, one generation at a time (a local model is not re-entrant and two requests on two
cores would only slow each other down); requests queue on a lock. Generation runs in a worker
thread and is cancelled through the backend's `stop` event as soon as the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from loguru import logger
from starlette.background import BackgroundTask

from rt2_cot.backends.base import Backend, GenerationRequest
from rt2_cot.errors import Rt2CotError
from rt2_cot.serving import protocol
from rt2_cot.serving.protocol import RequestError

_END = object()


class _Generation:
    """Runs `backend.stream` in a thread and hands chunks to the event loop through a queue."""

    def __init__(self, backend: Backend, lock: threading.Lock, request: GenerationRequest) -> None:
        self.stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._backend, self._lock, self._request = backend, lock, request
        self.thread = threading.Thread(target=self._work, name="rt2-serve-generate", daemon=True)
        self.thread.start()

    def _put(self, item: object) -> None:
        # RuntimeError: the event loop already closed (server shutting down), nobody to tell.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _work(self) -> None:
        try:
            with self._lock:
                if self.stop.is_set():  # the client left while we queued
                    return
                for text in self._backend.stream(self._request, self.stop):
                    if self.stop.is_set():
                        break
                    self._put(text)
        except Exception as exc:  # delivered to the client as an error
            self._put(exc)
        finally:
            self._put(_END)

    async def chunks(self) -> AsyncIterator[str]:
        try:
            while True:
                item = await self._queue.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.stop.set()  # normal end, error, or the client went away (CancelledError)


def _error(exc: Exception) -> JSONResponse:
    if isinstance(exc, RequestError):
        return JSONResponse(exc.body(), status_code=exc.status)
    if isinstance(exc, Rt2CotError):
        return JSONResponse(RequestError(str(exc), status=500, code="backend_error").body(), status_code=500)
    logger.exception("unexpected error while generating")
    return JSONResponse(
        RequestError(f"internal error: {type(exc).__name__}: {exc}", status=500).body(), status_code=500
    )


def create_app(backend: Backend, model_name: str = "rt2-cot") -> FastAPI:
    """An app serving `backend` under the model id `model_name`."""
    app = FastAPI(title="rt2-cot serve", docs_url=None, redoc_url=None)
    lock = threading.Lock()
    created = int(time.time())

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": model_name,
            "backend": getattr(backend, "name", type(backend).__name__),
        }

    @app.get("/v1/models")
    async def models() -> dict:
        entry = {"id": model_name, "object": "model", "created": created, "owned_by": "rt2-cot"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return _error(RequestError(f"request body is not valid JSON: {exc}"))
        try:
            chat = protocol.parse_chat_request(body)
            if chat.model != model_name:
                raise RequestError(
                    f"the model {chat.model!r} does not exist here; this server serves {model_name!r}",
                    status=404,
                    param="model",
                    code="model_not_found",
                )
        except RequestError as exc:
            return _error(exc)
        logger.debug(
            "chat request: style={} plan_given={} stream={} regex_form={}",
            chat.generation.prompt_style,
            chat.generation.given_plan is not None,
            chat.stream,
            chat.guided_form,
        )
        generation = _Generation(backend, lock, chat.generation)
        if chat.stream:
            # The background task runs once the response ends for any reason, including a client
            # that left before the first byte (when the body generator never started).
            return StreamingResponse(
                _sse(generation, chat),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
                background=BackgroundTask(generation.stop.set),
            )
        return await _complete(generation, chat, request)

    async def _complete(
        generation: _Generation, chat: protocol.ChatRequest, request: Request
    ) -> JSONResponse:
        parts: list[str] = []

        async def collect() -> None:
            async for text in generation.chunks():
                parts.append(text)

        task = asyncio.ensure_future(collect())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.05)
                if not task.done() and await request.is_disconnected():
                    logger.info("client disconnected: generation cancelled")
                    task.cancel()
                    generation.stop.set()
                    return JSONResponse({}, status_code=499)
            task.result()
        except Exception as exc:  # becomes an error body
            return _error(exc)
        finish = "length" if len(parts) >= chat.generation.max_new_tokens else "stop"
        cid = protocol.new_completion_id()
        return JSONResponse(protocol.completion(cid, model_name, "".join(parts), finish, len(parts)))

    async def _sse(generation: _Generation, chat: protocol.ChatRequest) -> AsyncIterator[str]:
        cid, now, n = protocol.new_completion_id(), int(time.time()), 0
        yield _event(protocol.chunk(cid, model_name, now, {"role": "assistant", "content": ""}))
        try:
            async for text in generation.chunks():
                n += 1
                yield _event(protocol.chunk(cid, model_name, now, {"content": text}))
        except Exception as exc:  # mid-stream errors travel as an SSE error object
            status = 500
            message = str(exc) if isinstance(exc, Rt2CotError) else f"{type(exc).__name__}: {exc}"
            logger.warning("generation failed mid-stream: {}", message)
            yield _event(RequestError(message, status=status, code="backend_error").body())
            yield "data: [DONE]\n\n"
            return
        finish = "length" if n >= chat.generation.max_new_tokens else "stop"
        yield _event(protocol.chunk(cid, model_name, now, {}, finish))
        if chat.include_usage:
            final = protocol.chunk(cid, model_name, now, {}, None)
            final["choices"] = []
            final["usage"] = protocol.usage(0, n)
            yield _event(final)
        yield "data: [DONE]\n\n"

    return app


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
