"""Events streamed while the model generates one step, in the order a reader sees them.

The streaming parser (`rt2_cot.streaming`) turns raw generated text into these; the console,
the CLI and the recorder only ever see events, never half-parsed text.
"""

from __future__ import annotations

from dataclasses import dataclass

from robot_io.types import EndEffectorCommand


@dataclass(frozen=True)
class TextDelta:
    """Raw generated text, exactly as the model produced it (for a raw-output pane)."""

    text: str


@dataclass(frozen=True)
class PlanDelta:
    """More of the natural-language plan; `plan` is everything so far (without `Plan:`)."""

    text: str
    plan: str


@dataclass(frozen=True)
class ActionTokenEvent:
    """One action token, as soon as it is complete. `index` 0..7."""

    index: int
    value: int


@dataclass(frozen=True)
class ActionComplete:
    """All eight tokens arrived and decoded inside the codec's ranges."""

    tokens: tuple[int, ...]
    command: EndEffectorCommand
    plan: str
    text: str


@dataclass(frozen=True)
class ParseFailure:
    """The text cannot be a valid action. Nothing moves; the operator sees `message`."""

    message: str
    text: str


Event = TextDelta | PlanDelta | ActionTokenEvent | ActionComplete | ParseFailure
