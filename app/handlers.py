"""Gradio callbacks of the Live tab. Each one is short: identify the browser, ask the runtime,
render the snapshot. Refusals (no control, e-stop latched) come back as a one-line gr.Warning."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from app import views
from app.runtime import ConsoleError, ConsoleRuntime


def client_of(request: gr.Request | None) -> tuple[str, str]:
    """A stable id for this browser tab and the name other operators see."""
    if request is None:
        return "local", "local"
    sid = request.session_hash or "anonymous"
    user = getattr(request, "username", None)
    return sid, (f"{user} ({sid[:4]})" if user else f"browser {sid[:6]}")


class LiveHandlers:
    """Bound to one runtime; one instance serves every browser."""

    def __init__(self, runtime: ConsoleRuntime) -> None:
        self.rt = runtime

    # -- polling ------------------------------------------------------------------------------
    def tick_fast(self, seen: dict | None, request: gr.Request) -> tuple[Any, Any, Any]:
        """Live view + reasoning, sent only when they changed since this browser last saw them."""
        seen = dict(seen or {})
        p = self.rt.preview()
        s = self.rt.live()
        preview: Any = gr.skip()
        reasoning: Any = gr.skip()
        if p.frame_index != seen.get("frame") or not p.data_uri:
            seen["frame"] = p.frame_index
            preview = views.preview_html(p)
        key = (s.version, s.estopped)
        if key != seen.get("live"):
            seen["live"] = key
            reasoning = views.reasoning_html(s)
        return seen, preview, reasoning

    CONTROLS = 8  # components a read-only browser cannot use (see layout.build_ui)

    def tick_slow(self, seen: dict | None, request: gr.Request) -> tuple[Any, ...]:
        """Status strip, e-stop latch, history table, and the controls greyed out for a read-only
        browser; also the control-lease heartbeat."""
        seen = dict(seen or {})
        cid, _name = client_of(request)
        self.rt.lease.touch(cid)
        s = self.rt.live()
        status = self._status(s, cid)
        estop: Any = gr.skip()
        history: Any = gr.skip()
        if s.estopped != seen.get("estop") or s.estop_ms != seen.get("estop_ms"):
            seen["estop"], seen["estop_ms"] = s.estopped, s.estop_ms
            estop = views.estop_html(s)
        if s.history_version != seen.get("history"):
            seen["history"] = s.history_version
            history = views.history_frame(s.history)
        holder = self.rt.lease.holder_name()
        read_only = holder is not None and not self.rt.lease.holds(cid)
        controls: list[Any] = [gr.skip()] * self.CONTROLS
        if read_only != seen.get("read_only"):
            seen["read_only"] = read_only
            controls = [gr.update(interactive=not read_only)] * self.CONTROLS
        return (seen, status, estop, history, *controls)

    def _status(self, s: Any, cid: str) -> str:
        rt = self.rt
        return views.status_html(
            s,
            rt.preview(),
            rt.lease.holder_name(),
            rt.lease.holds(cid),
            rt.model_name,
            rt.camera_name,
            rt.arm_name,
        )

    # -- commands -------------------------------------------------------------------------------
    def _guard(self, fn: Any, *args: Any) -> Any:
        """Call fn; a refusal becomes a one-line warning in the browser and returns False."""
        try:
            return fn(*args)
        except ConsoleError as exc:
            gr.Warning(str(exc))
            return False

    def run(self, instruction: str, max_steps: float, request: gr.Request) -> Iterator[str]:
        cid, name = client_of(request)
        started = self._guard(self.rt.run, instruction, cid, name, int(max_steps)) is not False
        yield from self._stream_first_step(started)

    def step(self, instruction: str, request: gr.Request) -> Iterator[str]:
        cid, name = client_of(request)
        started = self._guard(self.rt.step, instruction, cid, name) is not False
        yield from self._stream_first_step(started)

    def _stream_first_step(self, started: bool, limit_s: float = 60.0) -> Iterator[str]:
        """Push the first step's plan to the browser that pressed Run as each token arrives
        (no polling delay on the number the operator watches most); the timer takes over after."""
        s = self.rt.live()
        yield views.reasoning_html(s)
        if not started:
            return
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and s.status == "running":
            if s.action is not None or s.error:
                return
            version = s.version
            s = self.rt.wait_change(version, timeout=0.5)
            if s.version != version:
                yield views.reasoning_html(s)

    def stop(self, request: gr.Request) -> str:
        cid, name = client_of(request)
        self._guard(self.rt.stop, cid, name)
        return views.reasoning_html(self.rt.live())

    def estop(self) -> str:
        """No lease check and no queue: whoever sees danger stops the robot."""
        return views.estop_html(self.rt.estop())

    def reset_estop(self, request: gr.Request) -> str:
        cid, name = client_of(request)
        self._guard(self.rt.reset_estop, cid, name)
        return views.estop_html(self.rt.live())

    def take_control(self, request: gr.Request) -> str:
        cid, name = client_of(request)
        if not self.rt.lease.acquire(cid, name):
            gr.Warning(
                f"{self.rt.lease.holder_name()} has control; they must release it (or close their tab)"
            )
        return self._status(self.rt.live(), cid)

    def release_control(self, request: gr.Request) -> str:
        cid, _ = client_of(request)
        self.rt.lease.release(cid)
        return self._status(self.rt.live(), cid)

    def set_replan(self, n: float, request: gr.Request) -> float:
        cid, name = client_of(request)
        try:
            self.rt.require_control(cid, name)
        except ConsoleError as exc:
            gr.Warning(str(exc))
            return float(self.rt.replan_every)
        return float(self.rt.set_replan_every(int(n)))

    def set_record(self, on: bool, request: gr.Request) -> bool:
        cid, name = client_of(request)
        try:
            self.rt.set_recording(bool(on), cid, name)
        except ConsoleError as exc:
            gr.Warning(str(exc))
        return self.rt.live().recording

    def new_scene(self, instruction: str, request: gr.Request) -> str:
        cid, name = client_of(request)
        result = self._guard(self.rt.new_scene, cid, name)
        return result or instruction
