"""One model step: stream from a backend, parse into events, time it, decode the action.

Shared by the CLI, the policy and the benchmarks so they all measure and parse the same way.
A parse failure is an answer, not an exception: `PolicyOutput(command=None, error=...)`, nothing
moves. Backend failures (server gone, model crashed) raise BackendError for the caller to show.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from loguru import logger

from rt2_cot.action_codec import ActionCodec
from rt2_cot.backends.base import Backend, GenerationRequest
from rt2_cot.events import ActionComplete, Event, ParseFailure
from rt2_cot.policy import PolicyOutput
from rt2_cot.streaming import StreamParser


def run_step(
    backend: Backend,
    request: GenerationRequest,
    codec: ActionCodec | None = None,
    on_event: Callable[[Event], None] | None = None,
    stop: threading.Event | None = None,
) -> PolicyOutput:
    """Generate, parse and decode one action. `ttft_ms` is the time to the first generated chunk."""
    parser = StreamParser(
        style=request.prompt_style, given_plan=request.given_plan, codec=codec or ActionCodec()
    )
    start = time.perf_counter()
    ttft_ms: float | None = None

    def emit(events: list[Event]) -> None:
        if on_event is not None:
            for event in events:
                on_event(event)

    for chunk in backend.stream(request, stop=stop):
        if ttft_ms is None and chunk:
            ttft_ms = (time.perf_counter() - start) * 1000.0
        emit(parser.feed(chunk))
    emit(parser.finish())
    latency_ms = (time.perf_counter() - start) * 1000.0
    result = parser.complete
    if isinstance(result, ActionComplete):
        return PolicyOutput(
            command=result.command,
            tokens=result.tokens,
            plan=result.plan,
            text=parser.text,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            replanned=request.given_plan is None,
        )
    error = parser.failure or "no action"
    if stop is not None and stop.is_set():
        error = f"stopped before the action was complete ({error})"
    logger.debug("step produced no action: {}", error)
    emit([] if parser.failure else [ParseFailure(error, parser.text)])
    return PolicyOutput(
        command=None,
        tokens=None,
        plan=parser.plan,
        text=parser.text,
        error=error,
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        replanned=request.given_plan is None,
    )
