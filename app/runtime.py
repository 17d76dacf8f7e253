"""`ConsoleRuntime`: the console's engine room, outside every Gradio callback.

It owns the devices' preview thread and the control-loop thread, subscribes to the loop's events
and keeps one thread-safe snapshot that every browser polls. Gradio callbacks only read that
snapshot or ask the runtime to start/stop things; nothing slow or unsafe ever runs inside them,
and the e-stop goes straight to the safety shield from whichever thread receives the click.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from app import rendering
from robot_io.types import ArmState, EndEffectorCommand, Frame
from rt2_cot.errors import Rt2CotError
from rt2_cot.events import ActionComplete, ActionTokenEvent, ParseFailure, PlanDelta, TextDelta
from rt2_cot.loop_events import EpisodeEnded, EpisodeStarted, LoopEvent, StepRecord, StreamEvent

HISTORY_LIMIT = 500  # rows kept for the history table; older steps stay in the recorded session


class ConsoleError(Rt2CotError):
    """An operator action the console refuses (no control, e-stop latched, already running)."""


# ---------------------------------------------------------------------------------------------
# Who may drive the robot
# ---------------------------------------------------------------------------------------------
class ControlLease:
    """One browser at a time holds control; the others watch read-only and see who holds it.

    A holder that stops polling (tab closed, laptop asleep) loses the lease after `stale_after_s`,
    so a forgotten tab never locks everybody out. The e-stop is deliberately not leased: anyone
    watching can stop the robot.
    """

    def __init__(self, stale_after_s: float = 15.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.stale_after_s = stale_after_s
        self._holder: str | None = None
        self._holder_name = ""
        self._last_seen = 0.0

    def _stale(self) -> bool:
        return self._holder is not None and self._clock() - self._last_seen > self.stale_after_s

    def touch(self, client_id: str) -> None:
        with self._lock:
            if client_id == self._holder:
                self._last_seen = self._clock()

    def acquire(self, client_id: str, name: str) -> bool:
        with self._lock:
            if self._holder in (None, client_id) or self._stale():
                if self._holder not in (None, client_id):
                    logger.info("control lease of {} expired; given to {}", self._holder_name, name)
                self._holder, self._holder_name, self._last_seen = client_id, name, self._clock()
                return True
            return False

    def release(self, client_id: str) -> bool:
        with self._lock:
            if self._holder == client_id:
                self._holder, self._holder_name = None, ""
                return True
            return False

    def holds(self, client_id: str) -> bool:
        with self._lock:
            return self._holder == client_id and not self._stale()

    def holder_name(self) -> str | None:
        with self._lock:
            return None if self._holder is None or self._stale() else self._holder_name


# ---------------------------------------------------------------------------------------------
# What every browser sees
# ---------------------------------------------------------------------------------------------
@dataclass
class StepRow:
    step: int
    plan: str
    tokens: str
    decoded: str
    latency_ms: float
    ttft_ms: float | None
    replanned: bool
    notes: str


@dataclass
class LiveState:
    """The snapshot browsers render. Copied under the runtime's lock; never mutated after."""

    version: int = 0
    status: str = "idle"  # idle | running | stopping
    estopped: bool = False
    episode_id: str = ""
    instruction: str = ""
    step: int = -1
    plan: str = ""
    plan_reused: bool = False
    raw_text: str = ""
    tokens: list[int | None] = field(default_factory=lambda: [None] * 8)
    action: EndEffectorCommand | None = None
    error: str = ""
    end_reason: str = ""
    end_message: str = ""
    loop_hz: float = 0.0
    ttft_ms: float | None = None
    latency_ms: float | None = None
    history: list[StepRow] = field(default_factory=list)
    history_version: int = 0
    # Run pressed -> first plan token reached the runtime, server clock (for the benchmark).
    run_to_first_plan_ms: float | None = None
    first_step_ttft_ms: float | None = None
    estop_ms: float | None = None  # click received -> arm reported holding
    stop_at_steps: int | None = None  # steps completed when Stop reached the runtime
    estop_at: float | None = None  # wall clock (time.time()) when the arm was confirmed holding
    recording: bool = False
    session_name: str = ""


@dataclass
class PreviewState:
    frame_index: int = -1
    data_uri: str = ""
    width: int = 0
    height: int = 0
    captured_at: float = 0.0
    fps: float = 0.0
    camera_ok: bool = False
    camera_message: str = "waiting for the first frame"
    arm: ArmState | None = None
    arm_message: str = ""


def format_tokens(tokens: list[int | None] | tuple[int, ...] | None) -> str:
    if not tokens:
        return ""
    return " ".join("·" if t is None else str(t) for t in tokens)


def format_command(command: EndEffectorCommand | None) -> str:
    return "" if command is None else rendering.action_caption(command)


class ConsoleRuntime:
    """Devices + policy + loop, driven from the browser.

    `loop_factory(camera, shield, policy, subscribers, rate_hz, max_steps, success_fn)` builds a
    `rt2_cot.control_loop.ControlLoop`; `recorder_factory(root, fps)` a session recorder. Both are
    injectable so tests can run without a simulator or disk.
    """

    def __init__(
        self,
        camera: Any,
        arm: Any,
        shield: Any,
        policy: Any,
        *,
        sim: Any = None,
        sessions_root: Path = Path("sessions"),
        rate_hz: float = 10.0,
        max_steps: int = 100,
        preview_hz: float = 15.0,
        replan_every: int = 1,
        model_name: str = "",
        camera_name: str = "",
        arm_name: str = "",
        loop_factory: Callable[..., Any] | None = None,
        recorder_factory: Callable[[Path, float], Any] | None = None,
        seed: int = 0,
    ) -> None:
        self.camera, self.arm, self.shield, self.policy, self.sim = camera, arm, shield, policy, sim
        self.sessions_root = Path(sessions_root)
        self.rate_hz, self.max_steps, self.preview_hz = rate_hz, max_steps, preview_hz
        self.model_name, self.camera_name, self.arm_name = model_name, camera_name, arm_name
        self.camera_pose = rendering.camera_pose_of(sim if sim is not None else camera)
        self.lease = ControlLease()
        self._loop_factory = loop_factory
        self._recorder_factory = recorder_factory
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # wakes browsers streaming the live state
        self._state = LiveState()
        self._preview = PreviewState()
        self._depth_range: tuple[float, float] | None = None
        self._loop: Any = None
        self._step_loop: Any = None  # kept between Step presses so steps continue one episode
        self._step_instruction = ""
        self._episode_thread: threading.Thread | None = None
        self._recorder: Any = None
        self._recorder_lock = threading.Lock()
        self._record = False
        self._session_stamp: str | None = None
        self._run_requested_at: float | None = None
        self._stop_event = threading.Event()
        self._preview_thread: threading.Thread | None = None
        self._replan_every = 1
        self._scene_seed = seed
        self.set_replan_every(replan_every)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._preview_thread = threading.Thread(
            target=self._preview_loop, name="console-preview", daemon=True
        )
        self._preview_thread.start()

    def shutdown(self) -> None:
        self._stop_event.set()
        loop = self._loop
        if loop is not None:
            loop.stop()
        if self._episode_thread is not None:
            self._episode_thread.join(timeout=5)
        if self._preview_thread is not None:
            self._preview_thread.join(timeout=2)
        if self._recorder is not None:
            try:
                self._recorder.close()
            except Exception as exc:  # the console must still exit
                logger.warning("closing the session recorder failed: {}", exc)
        for device in (self.camera, self.arm):
            try:
                device.disconnect()
            except Exception as exc:
                logger.warning("disconnecting {} failed: {}", device, exc)

    # -- snapshots -----------------------------------------------------------------------------
    def live(self) -> LiveState:
        with self._lock:
            s = self._state
            return replace(s, tokens=list(s.tokens), history=list(s.history), estopped=self._estopped())

    def preview(self) -> PreviewState:
        with self._lock:
            return replace(self._preview)

    def _estopped(self) -> bool:
        return bool(getattr(self.shield, "estopped", False))

    def _bump(self) -> None:
        """Called with the lock held after every change of the live state."""
        self._state.version += 1
        self._changed.notify_all()

    def wait_change(self, version: int, timeout: float) -> LiveState:
        """The live state once its version differs from `version` (or after `timeout`)."""
        with self._changed:
            self._changed.wait_for(lambda: self._state.version != version, timeout=timeout)
        return self.live()

    @property
    def busy(self) -> bool:
        t = self._episode_thread
        return t is not None and t.is_alive()

    # -- operator actions ----------------------------------------------------------------------
    def require_control(self, client_id: str, name: str) -> None:
        if not self.lease.acquire(client_id, name):
            raise ConsoleError(
                f"read-only: {self.lease.holder_name()} holds control (ask them to release it)"
            )

    def run(self, instruction: str, client_id: str, name: str, max_steps: int | None = None) -> None:
        """Start a closed-loop episode on the loop thread and return at once."""
        self._start_episode(instruction, client_id, name, single_step=False, max_steps=max_steps)

    def step(self, instruction: str, client_id: str, name: str) -> None:
        """One control step of the current episode (a new one when the instruction changed)."""
        self._start_episode(instruction, client_id, name, single_step=True)

    def _start_episode(
        self, instruction: str, client_id: str, name: str, *, single_step: bool, max_steps: int | None = None
    ) -> None:
        instruction = instruction.strip()
        if not instruction:
            raise ConsoleError("type a command first (e.g. 'pick up the red block')")
        self.start_job(
            lambda: self._episode_main(instruction, single_step, max_steps or self.max_steps), client_id, name
        )

    def start_job(self, target: Callable[[], Any], client_id: str, name: str) -> None:
        """Run `target` on the loop thread (episodes, suite runs): one at a time, only for the
        browser holding control, never while the e-stop is latched."""
        self.require_control(client_id, name)
        if self._estopped():
            raise ConsoleError("E-stop is latched: check the robot, then press Reset E-stop")
        with self._lock:
            if self.busy:
                raise ConsoleError("already running: press Stop first")
            self._run_requested_at = time.monotonic()
            s = self._state
            s.run_to_first_plan_ms = s.first_step_ttft_ms = s.stop_at_steps = None
            s.status, s.end_reason, s.end_message = "running", "", ""
            self._new_step(s.step)  # the previous step's plan and tokens must not look like this run's
            self._bump()
            thread = threading.Thread(target=self._job_main, args=(target,), name="console-loop", daemon=True)
            self._episode_thread = thread
        thread.start()

    def attach_stoppable(self, obj: Any) -> None:
        """What Stop and the e-stop should stop while a job runs (a ControlLoop or a SuiteRun)."""
        self._loop = obj

    def _job_main(self, target: Callable[[], Any]) -> None:
        try:
            target()
        except Exception as exc:  # shown to the operator; the loop thread must never die silently
            logger.exception("control loop failed")
            with self._lock:
                self._state.error = f"{type(exc).__name__}: {exc}"
                self._bump()
        finally:
            with self._lock:
                self._loop = None
                self._state.status = "idle"
                self._bump()

    def _make_loop(self, max_steps: int, instruction: str) -> Any:
        factory = self._loop_factory
        if factory is None:
            from rt2_cot.control_loop import ControlLoop

            factory = ControlLoop
        subscribers: list[Callable[[LoopEvent], None]] = [self._on_loop_event]
        recorder = self._ensure_recorder() if self._record else None
        if recorder is not None:
            subscribers.append(recorder)
        # The simulator can only judge the task its scene was built for, not a free-text command.
        task = getattr(self.sim, "task", None)
        success_fn = self.sim.success if task is not None and task.instruction == instruction else None
        return factory(
            camera=self.camera,
            shield=self.shield,
            policy=self.policy,
            subscribers=subscribers,
            rate_hz=self.rate_hz,
            max_steps=max_steps,
            success_fn=success_fn,
        )

    def _episode_main(self, instruction: str, single_step: bool, max_steps: int) -> None:
        if single_step:
            if self._step_loop is None or instruction != self._step_instruction:
                self._step_loop = self._make_loop(max_steps, instruction)
                self._step_instruction = instruction
            self.attach_stoppable(self._step_loop)
            self._step_loop.step_once(instruction)
        else:
            self._step_loop = None
            loop = self._make_loop(max_steps, instruction)
            self.attach_stoppable(loop)
            loop.run_episode(instruction)

    def stop(self, client_id: str, name: str) -> None:
        """End the episode within one step (the arm holds; the e-stop is not latched)."""
        self.require_control(client_id, name)
        self._step_loop = None
        loop = self._loop
        if loop is not None:
            loop.stop()
        with self._lock:
            self._state.stop_at_steps = len(self._state.history)
            if self.busy:
                self._state.status = "stopping"
            self._bump()

    def estop(self) -> LiveState:
        """Latch the e-stop. Anyone may press it; it never waits for the loop or the lease."""
        t0 = time.monotonic()
        self.shield.estop()  # calls arm.stop() on this thread, before anything else
        loop = self._loop
        if loop is not None:
            loop.stop()
        self._step_loop = None
        holding = self._arm_holding()
        with self._lock:
            self._state.estop_ms = (time.monotonic() - t0) * 1000.0 if holding else None
            self._state.estop_at = time.time() if holding else None
            self._bump()
        logger.warning("E-STOP pressed (arm holding: {})", holding)
        return self.live()

    def _arm_holding(self) -> bool:
        try:
            return bool(self.arm.state().holding)
        except Exception:
            return False

    def reset_estop(self, client_id: str, name: str) -> None:
        self.require_control(client_id, name)
        if self.busy:
            raise ConsoleError("wait for the loop to finish stopping before resetting the E-stop")
        self.shield.reset_estop()
        with self._lock:
            self._state.estop_ms = None
            self._bump()
        logger.info("E-stop reset by {}", name)

    def set_replan_every(self, n: int) -> int:
        """Plan reuse: the policy re-plans every `n` steps and whenever the instruction changes
        (0 = once per instruction)."""
        n = max(0, int(n))
        self._replan_every = n
        if hasattr(self.policy, "replan_every"):
            self.policy.replan_every = n
        return n

    @property
    def replan_every(self) -> int:
        return self._replan_every

    def set_recording(self, on: bool, client_id: str, name: str) -> str:
        """Record the following episodes into this console run's session; returns its name."""
        self.require_control(client_id, name)
        self._record = bool(on)
        session = ""
        if on:
            recorder = self._ensure_recorder()
            session = getattr(recorder, "root", Path(self._session_name())).name
        with self._lock:
            self._state.recording = self._record
            self._state.session_name = session or self._state.session_name
            self._bump()
        return session

    def _session_name(self) -> str:
        """One session per console run, named by its start time (sorts chronologically)."""
        if self._session_stamp is None:
            self._session_stamp = datetime.now().strftime("session-%Y%m%d-%H%M%S")
        return self._session_stamp

    def _ensure_recorder(self) -> Any:
        # One recorder per console run: the Record toggle and a Run can race to create it, and
        # a second recorder on the same folder is refused by the session's owner lock.
        with self._recorder_lock:
            return self._ensure_recorder_locked()

    def _ensure_recorder_locked(self) -> Any:
        if self._recorder is None:
            factory = self._recorder_factory
            if factory is None:
                try:
                    from rt2_cot.sessions import SessionRecorder
                except ImportError as exc:
                    raise ConsoleError(f"recording is unavailable in this install: {exc}") from exc
                factory = SessionRecorder
            root = self.sessions_root / self._session_name()
            self.sessions_root.mkdir(parents=True, exist_ok=True)
            self._recorder = factory(root, self.rate_hz)
            logger.info("recording into {}", root)
        return self._recorder

    def new_scene(self, client_id: str, name: str, family: str | None = None) -> str:
        """Simulator only: a fresh randomised scene; returns its instruction for the command box."""
        self.require_control(client_id, name)
        if self.sim is None:
            raise ConsoleError("New scene needs the simulator (--camera sim --arm sim)")
        if self.busy:
            raise ConsoleError("press Stop before changing the scene")
        from robot_io.sim.tasks import sample_task

        self._scene_seed += 1
        rng = np.random.default_rng(self._scene_seed)
        task = sample_task(rng, family=family)
        self.sim.reset(task, seed=self._scene_seed)
        self._step_loop = None
        with self._lock:
            self._state.instruction = task.instruction
            self._bump()
        return task.instruction

    # -- loop events (called on the loop thread: must be quick) ---------------------------------
    def _on_loop_event(self, event: LoopEvent) -> None:
        with self._lock:
            s = self._state
            if isinstance(event, EpisodeStarted):
                s.episode_id, s.instruction, s.step = event.episode_id, event.instruction, -1
                s.history, s.end_reason, s.end_message, s.error = [], "", "", ""
                s.history_version += 1
                self._new_step(-1)
            elif isinstance(event, StreamEvent):
                if event.step != s.step:
                    self._new_step(event.step)
                self._apply_stream(event.event)
            elif isinstance(event, StepRecord):
                self._apply_step(event)
            elif isinstance(event, EpisodeEnded):
                s.end_reason, s.end_message = event.reason, event.message
                verdict = {True: "success", False: "not successful"}.get(event.success, "")
                if verdict and verdict not in s.end_message:
                    s.end_message = f"{s.end_message} ({verdict})" if s.end_message else verdict
                if event.reason == verdict:
                    s.end_message = ""
            self._bump()

    def _new_step(self, step: int) -> None:
        s = self._state
        s.step, s.plan, s.raw_text, s.tokens, s.action, s.error = step, "", "", [None] * 8, None, ""
        s.plan_reused = False

    def _apply_stream(self, ev: Any) -> None:
        s = self._state
        if isinstance(ev, PlanDelta):
            s.plan = ev.plan
            if s.run_to_first_plan_ms is None and self._run_requested_at is not None:
                s.run_to_first_plan_ms = (time.monotonic() - self._run_requested_at) * 1000.0
        elif isinstance(ev, TextDelta):
            s.raw_text += ev.text
        elif isinstance(ev, ActionTokenEvent):
            if 0 <= ev.index < 8:
                s.tokens[ev.index] = ev.value
        elif isinstance(ev, ActionComplete):
            s.tokens = list(ev.tokens)
            s.action = ev.command
            s.plan = ev.plan or s.plan
            s.raw_text = ev.text or s.raw_text
        elif isinstance(ev, ParseFailure):
            s.error = ev.message
            s.raw_text = ev.text or s.raw_text

    def _apply_step(self, rec: StepRecord) -> None:
        s = self._state
        out = rec.output
        if rec.step != s.step:
            self._new_step(rec.step)
        s.plan = out.plan or s.plan
        s.plan_reused = not out.replanned
        s.raw_text = out.text or s.raw_text
        if out.tokens is not None:
            s.tokens = list(out.tokens)
        s.action = out.command
        s.error = out.error or ""
        s.loop_hz, s.ttft_ms, s.latency_ms = rec.loop_hz, out.ttft_ms, out.latency_ms
        if s.first_step_ttft_ms is None:
            s.first_step_ttft_ms = out.ttft_ms
        if s.run_to_first_plan_ms is None and out.plan and self._run_requested_at is not None:
            # Policies that do not stream (the scripted oracle) show their plan with the step.
            s.run_to_first_plan_ms = (time.monotonic() - self._run_requested_at) * 1000.0
        sent = rec.command_sent
        s.history.append(
            StepRow(
                step=rec.step,
                plan=out.plan,
                tokens=format_tokens(out.tokens) if out.tokens else f"(no action: {out.error})",
                decoded=format_command(sent if sent is not None else out.command),
                latency_ms=round(out.latency_ms, 1),
                ttft_ms=None if out.ttft_ms is None else round(out.ttft_ms, 1),
                replanned=out.replanned,
                notes="; ".join(rec.shield_notes),
            )
        )
        del s.history[:-HISTORY_LIMIT]
        s.history_version += 1
        self._last_overlay = (
            np.asarray(rec.arm_state.ee_xyz_m, float),
            sent if sent is not None else out.command,
        )

    # -- preview thread ------------------------------------------------------------------------
    def _preview_loop(self) -> None:
        period = 1.0 / self.preview_hz
        last_index = None
        times: list[float] = []
        while not self._stop_event.is_set():
            t0 = time.monotonic()
            frame, message = self._grab_frame(last_index)
            arm_state, arm_message = self._read_arm()
            if frame is not None and frame.index != last_index:
                last_index = frame.index
                uri, w, h = self._compose(frame, arm_state)
                times = [t for t in [*times, t0] if t0 - t < 2.0]
                fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
                with self._lock:
                    self._preview = PreviewState(
                        frame_index=frame.index,
                        data_uri=uri,
                        width=w,
                        height=h,
                        captured_at=time.time(),
                        fps=fps,
                        camera_ok=message == "ok",
                        camera_message=message,
                        arm=arm_state,
                        arm_message=arm_message,
                    )
            else:
                with self._lock:
                    self._preview.camera_ok = frame is not None and message == "ok"
                    self._preview.camera_message = message
                    self._preview.arm, self._preview.arm_message = arm_state, arm_message
            self._stop_event.wait(max(0.0, period - (time.monotonic() - t0)))

    def _grab_frame(self, last_index: int | None) -> tuple[Frame | None, str]:
        """A frame the page has not shown yet: the loop's newest if it took one since the last
        preview, otherwise one read here. For live cameras this keeps the preview at its own rate
        whatever the loop does; for playback and the simulator it shows each new capture."""
        try:
            frame = self.camera.read_latest()
            if frame is None or frame.index == last_index:
                frame = self.camera.read()
            return frame, "ok"
        except Exception as exc:
            return self.camera.read_latest(), f"camera error: {exc}"

    def _read_arm(self) -> tuple[ArmState | None, str]:
        try:
            state = self.arm.state()
            return state, "connected" if state.connected else "disconnected"
        except Exception as exc:
            return None, f"arm error: {exc}"

    def _compose(self, frame: Frame, arm_state: ArmState | None) -> tuple[str, int, int]:
        color = frame.color
        h, w = color.shape[:2]
        overlay = getattr(self, "_last_overlay", None)
        command = overlay[1] if overlay is not None and self.busy else None
        ee = np.asarray(arm_state.ee_xyz_m, float) if arm_state is not None else None
        left = rendering.draw_action(color, frame.intrinsics, self.camera_pose, ee, command)
        if command is not None and self._state.plan:
            rendering.draw_plan_points(left, self._state.plan)  # a grounded plan's object locations
        depth_m = frame.depth_m()
        if depth_m is not None and self._depth_range is None:
            self._depth_range = rendering.depth_range(depth_m)
        near, far = self._depth_range or (0.2, 2.0)
        right = rendering.colorize_depth(depth_m, near, far, (h, w))
        jpeg = rendering.encode_jpeg(rendering.side_by_side(left, right), quality=75)
        return rendering.jpeg_data_uri(jpeg), w * 2 + 4, h
