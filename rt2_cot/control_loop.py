"""The control loop every arm is driven by: observe, decide, shield, notify, check for the end.

Used by the console, `rt2-cot sim` and the evaluator alike; it talks to devices only through the
Camera interface and the safety shield, and to the model only through the Policy protocol, so the
simulator and a real robot, the oracle and the VLA, are interchangeable.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

from robot_io.cameras.base import Camera
from rt2_cot.events import Event
from rt2_cot.loop_events import EndReason, EpisodeEnded, EpisodeStarted, LoopEvent, StepRecord, StreamEvent
from rt2_cot.policy import Observation, Policy

Subscriber = Callable[[LoopEvent], None]


class ControlLoop:
    """Runs a policy closed loop at `rate_hz` until terminate, success, a step limit, stop or e-stop.

    `shield` is a `robot_io.safety.SafetyShield` (send / estopped / hold_if_stale / last_notes / arm).
    `success_fn` (e.g. `TabletopSim.success`) ends the episode early and grades it; without one the
    episode's `success` is None (nobody can judge: a real robot before the operator grades it).
    """

    def __init__(
        self,
        camera: Camera,
        shield: Any,
        policy: Policy,
        subscribers: Sequence[Subscriber] = (),
        rate_hz: float = 10.0,
        max_steps: int = 100,
        success_fn: Callable[[], bool] | None = None,
    ) -> None:
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.camera, self.shield, self.policy = camera, shield, policy
        self.subscribers = list(subscribers)
        self.rate_hz, self.max_steps, self.success_fn = rate_hz, max_steps, success_fn
        self._stop = threading.Event()
        self.episode_id = ""
        self.instruction = ""
        self.step_index = 0
        self._t_start = 0.0
        self._t_last_step = 0.0

    # -- public ------------------------------------------------------------------------------
    def stop(self) -> None:
        """End the running episode after the current step (thread-safe). Cancels a streaming step."""
        self._stop.set()
        cancel = getattr(self.policy, "stop_event", None)
        if isinstance(cancel, threading.Event):
            cancel.set()

    def run_episode(self, instruction: str) -> EpisodeEnded:
        """Reset the policy and run one episode to its end."""
        self._stop.clear()
        self._begin(instruction)
        period = 1.0 / self.rate_hz
        deadline = time.monotonic()
        reason: EndReason = "step_limit"
        message = ""
        try:
            while True:
                if (ended := self._end_reason(before_step=True)) is not None:
                    reason = ended
                    break
                record = self._step()
                command = record.output.command
                if (ended := self._end_reason(before_step=False)) is not None:
                    reason = ended
                    break
                if command is not None and command.terminate:
                    reason = "terminate"
                    break
                # Keep the target rate: sleep (interruptibly) when early, never burst to catch up.
                deadline += period
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    deadline = time.monotonic()
        except Exception as exc:  # a failing device or policy ends the episode, holding the arm
            logger.exception(f"episode {self.episode_id} failed: {exc}")
            reason, message = "error", str(exc)
            self._hold()
        success = self._judge()
        if reason == "step_limit":
            message = f"reached the step limit ({self.max_steps})"
        ended_event = EpisodeEnded(self.episode_id, reason, self.step_index, success, message)
        self._emit(ended_event)
        return ended_event

    def step_once(self, instruction: str) -> StepRecord:
        """One step (single-step mode in the console). A new instruction starts a new episode."""
        # A single step is an explicit request: an earlier stop() must not cancel it.
        self._stop.clear()
        cancel = getattr(self.policy, "stop_event", None)
        if isinstance(cancel, threading.Event):
            cancel.clear()
        if not self.episode_id or instruction != self.instruction:
            self._begin(instruction)
        return self._step()

    # -- internals ---------------------------------------------------------------------------
    def _begin(self, instruction: str) -> None:
        self.episode_id = uuid.uuid4().hex[:12]
        self.instruction = instruction
        self.step_index = 0
        self._t_start = self._t_last_step = time.monotonic()
        self.policy.reset(instruction)
        self._emit(
            EpisodeStarted(self.episode_id, instruction, getattr(self.policy, "name", "policy"), time.time())
        )

    def _end_reason(self, before_step: bool) -> EndReason | None:
        if self.shield.estopped:
            return "estop"
        if self._stop.is_set():
            return "stop"
        if not before_step and self.success_fn is not None and self.success_fn():
            return "success"
        if self.step_index >= self.max_steps:
            return "step_limit"
        return None

    def _step(self) -> StepRecord:
        hold_if_stale = getattr(self.shield, "hold_if_stale", None)
        if hold_if_stale is not None:
            hold_if_stale()  # the watchdog: hold the arm if the last valid action is too old
        t0 = time.monotonic()
        frame = self.camera.read()
        arm_state = self.shield.arm.state()
        step, episode_id = self.step_index, self.episode_id
        observation = Observation(frame=frame, arm=arm_state, instruction=self.instruction, step=step)

        def on_event(event: Event) -> None:
            self._emit(StreamEvent(episode_id, step, event))

        output = self.policy.step(observation, on_event)
        # Always through the shield: it refuses while e-stopped and holds the arm on a None command.
        sent = self.shield.send(output.command)
        notes = tuple(getattr(self.shield, "last_notes", ()) or ())
        loop_hz = 1.0 / max(t0 - self._t_last_step, 1e-6) if step > 0 else 0.0
        self._t_last_step = t0
        record = StepRecord(
            episode_id=episode_id,
            step=step,
            timestamp_s=t0 - self._t_start,
            instruction=self.instruction,
            frame=frame,
            arm_state=arm_state,
            output=output,
            command_sent=sent,
            shield_notes=notes,
            loop_hz=loop_hz,
        )
        self.step_index += 1
        self._emit(record)
        return record

    def _hold(self) -> None:
        try:
            self.shield.send(None)
        except Exception as exc:  # already failing; the e-stop remains the operator's way out
            logger.warning(f"could not hold the arm after an error: {exc}")

    def _judge(self) -> bool | None:
        if self.success_fn is None:
            return None
        try:
            return bool(self.success_fn())
        except Exception as exc:
            logger.warning(f"success check failed: {exc}")
            return None

    def _emit(self, event: LoopEvent) -> None:
        for subscriber in self.subscribers:
            try:
                subscriber(event)
            except Exception as exc:  # one broken subscriber must not stop the arm's loop
                logger.exception(f"loop subscriber {subscriber!r} failed on {type(event).__name__}: {exc}")
