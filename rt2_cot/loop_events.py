"""What the control loop tells its subscribers (console, recorder, evaluator, CLI).

Subscribers are plain callables `(LoopEvent) -> None`, called on the loop's thread in order.
They must return quickly: anything slow (disk, browser) goes through the subscriber's own queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from robot_io.types import ArmState, EndEffectorCommand, Frame
from rt2_cot.events import Event
from rt2_cot.policy import PolicyOutput

EndReason = Literal["terminate", "success", "step_limit", "stop", "estop", "error"]


@dataclass(frozen=True)
class EpisodeStarted:
    episode_id: str
    instruction: str
    policy: str
    started_at: float  # time.time()
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StreamEvent:
    """A generation event (plan token, action token...) of the step in progress."""

    episode_id: str
    step: int
    event: Event


@dataclass(frozen=True)
class StepRecord:
    """One completed control step: what was seen, decided, requested and actually sent."""

    episode_id: str
    step: int
    timestamp_s: float  # seconds since the episode started
    instruction: str
    frame: Frame
    arm_state: ArmState  # before the command was applied
    output: PolicyOutput
    command_sent: EndEffectorCommand | None  # after the shield; None when nothing was sent
    shield_notes: tuple[str, ...] = ()  # e.g. ("clipped z to table floor",)
    loop_hz: float = 0.0


@dataclass(frozen=True)
class EpisodeEnded:
    episode_id: str
    reason: EndReason
    steps: int
    success: bool | None  # None when nobody can judge (real robot, not yet graded)
    message: str = ""


LoopEvent = EpisodeStarted | StreamEvent | StepRecord | EpisodeEnded
