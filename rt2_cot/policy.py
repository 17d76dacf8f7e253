"""What the control loop asks of a policy: one observation in, one (unshielded) action out.

The scripted oracle, the VLA (local or remote) and a replayed session are all policies, so the
loop, the console and the evaluator cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from robot_io.types import ArmState, EndEffectorCommand, Frame
from rt2_cot.events import Event


@dataclass
class Observation:
    frame: Frame
    arm: ArmState
    instruction: str
    step: int


@dataclass
class PolicyOutput:
    """One step's decision. `command` is None when the output could not be parsed (nothing moves)."""

    command: EndEffectorCommand | None
    tokens: tuple[int, ...] | None
    plan: str = ""
    text: str = ""
    error: str | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    replanned: bool = True
    extras: dict = field(default_factory=dict)


class Policy(Protocol):
    name: str

    def reset(self, instruction: str) -> None:
        """Start a new episode (also called when the instruction changes)."""

    def step(self, observation: Observation, on_event: Callable[[Event], None] | None = None) -> PolicyOutput:
        """Decide one step. Streams events to `on_event` as they happen (plan tokens, actions)."""
        ...
