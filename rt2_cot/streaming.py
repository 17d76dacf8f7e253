"""Incremental parser: generated text chunks in, `rt2_cot.events` out, for any backend.

Grammar (RT-2 chain-of-thought; see prompts/templates.yaml):

    [Plan:] <plan text> Action: <int> <int> <int> <int> <int> <int> <int> <int>

Tolerances, because real tokenizers and models are untidy:
  * markers match case-insensitively with optional spaces before the colon (WordPiece decodes to
    `plan : pick up the rock. action : 0 131 ...`);
  * a missing `Plan:` is fine: for chain-of-thought, the text before `Action:` is the plan; for the
    plain and OpenVLA prompts the action integers may start right away (with or without `Action:`);
  * the parser can be primed with a given plan (plan reuse), then the text starts at the integers;
  * integers may be separated by spaces, newlines or commas; a full stop after the last is ignored.

Guarantees (fuzzed in tests/rt2_cot/test_streaming.py and benchmarks/fuzz_streaming.py): `feed` and
`finish` never raise anything but `ActionParseError` (only for misuse: feeding after `finish`, or a
non-string chunk), an `ActionComplete` only ever carries integers 0..255 decoded inside the codec's
ranges, and the outcome (plan text, tokens, failure message) does not depend on how the text was
split into chunks. Text after the last action integer is ignored.
"""

from __future__ import annotations

import enum
import re
from typing import Protocol

from robot_io.types import EndEffectorCommand
from rt2_cot.action_codec import NUM_BINS, ActionCodec
from rt2_cot.errors import ActionParseError
from rt2_cot.events import ActionComplete, ActionTokenEvent, Event, ParseFailure, PlanDelta, TextDelta

_PLAN_MARKER = re.compile(r"plan\s*:", re.IGNORECASE)
_ACTION_MARKER_AT_START = re.compile(r"action\s*:", re.IGNORECASE)
# Inside a plan the marker must start a word, so "transaction:" stays plan text.
ACTION_MARKER = re.compile(r"\baction\s*:", re.IGNORECASE)
# A plan's tail that may still become the action marker: held back until the next chunk decides.
_MARKER_PREFIX_AT_END = re.compile(r"\ba(?:c(?:t(?:i(?:o(?:n\s*)?)?)?)?)?\Z", re.IGNORECASE)
_UNDECIDED_START = re.compile(r"p(?:l(?:a(?:n\s*)?)?)?|a(?:c(?:t(?:i(?:o(?:n\s*)?)?)?)?)?", re.IGNORECASE)
_SEPARATOR = re.compile(r"[\s,]+")
_INTEGER = re.compile(r"\d{1,3}")
_PLAN_TRAILING = " \t\r\n\f\v."


class _Decoder(Protocol):
    def decode(self, tokens: list[int]) -> EndEffectorCommand: ...


class _State(enum.Enum):
    START = "start"  # nothing decisive seen yet
    PLAN = "plan"
    ACTION = "action"
    DONE = "done"
    FAILED = "failed"


def clean_plan(text: str) -> str:
    """The plan as shown and stored: no surrounding whitespace, no trailing full stop.

    Cleaning a prefix of a text always gives a prefix of the cleaned text, so streamed plan deltas
    add up to exactly the final plan.
    """
    return text.lstrip().rstrip(_PLAN_TRAILING)


class StreamParser:
    """Feed generated text in chunks of any size; get events as soon as they are certain.

    `expect_plan`: the prompt asks for `Plan: ... Action: ...` (chain of thought). Defaults from
    the prompt style's template. `given_plan`: the prompt already ended in `Plan: ... Action:`, so
    the text starts at the integers. `codec`: anything with `decode(tokens) -> EndEffectorCommand`.
    """

    def __init__(
        self,
        style: str = "cot",
        given_plan: str | None = None,
        codec: _Decoder | None = None,
        num_tokens: int | None = None,
        expect_plan: bool | None = None,
    ) -> None:
        if num_tokens is None or expect_plan is None:
            from rt2_cot.prompts import get_template

            template = get_template(style)
            num_tokens = template.num_action_tokens if num_tokens is None else num_tokens
            expect_plan = template.has_plan if expect_plan is None else expect_plan
        self.codec = codec if codec is not None else ActionCodec()
        self.num_tokens = num_tokens
        self.expect_plan = bool(expect_plan) and given_plan is None
        self.given_plan = clean_plan(given_plan) if given_plan is not None else None
        self.text = ""  # everything fed so far
        self.plan = self.given_plan or ""
        self.tokens: list[int] = []
        self.failure: str | None = None
        self.complete: ActionComplete | None = None
        self._state = _State.ACTION if given_plan is not None else _State.START
        self._plan_start = 0  # index in self.text where the plan text begins
        self._action_start = 0  # index in self.text where the integers begin
        self._announced_given_plan = False
        self._finished = False

    # -- public API ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._state in (_State.DONE, _State.FAILED) or self._finished

    def feed(self, chunk: str) -> list[Event]:
        if self._finished:
            raise ActionParseError("StreamParser.feed() after finish(); make a new parser per step")
        if not isinstance(chunk, str):
            raise ActionParseError(f"generated text must be str, got {type(chunk).__name__}")
        events: list[Event] = self._announce_given_plan()
        if not chunk:
            return events
        events.append(TextDelta(chunk))
        self.text += chunk
        events.extend(self._advance(final=False))
        return events

    def finish(self) -> list[Event]:
        """The stream ended: complete a pending integer or report what is missing."""
        if self._finished:
            return []
        events: list[Event] = self._announce_given_plan()
        events.extend(self._advance(final=True))
        self._finished = True
        if self._state in (_State.START, _State.PLAN):
            what = "'Action:'" if self.expect_plan else "action integers"
            events.append(self._fail(f"the model output ended without {what}"))
        elif self._state is _State.ACTION:
            events.append(
                self._fail(
                    f"the model output ended after {len(self.tokens)} of {self.num_tokens} action integers"
                )
            )
        return events

    # -- state machine ---------------------------------------------------------------------
    def _announce_given_plan(self) -> list[Event]:
        if self.given_plan and not self._announced_given_plan:
            self._announced_given_plan = True
            return [PlanDelta(self.given_plan, self.given_plan)]
        return []

    def _advance(self, final: bool) -> list[Event]:
        events: list[Event] = []
        if self._state is _State.START:
            self._decide_start(final)
        if self._state is _State.PLAN:
            events.extend(self._advance_plan())
        if self._state is _State.ACTION:
            events.extend(self._advance_action(final))
        return events

    def _decide_start(self, final: bool) -> None:
        stripped = self.text.lstrip()
        offset = len(self.text) - len(stripped)
        if not stripped:
            return
        if m := _PLAN_MARKER.match(stripped):
            self._state, self._plan_start = _State.PLAN, offset + m.end()
        elif m := _ACTION_MARKER_AT_START.match(stripped):
            self._state, self._action_start = _State.ACTION, offset + m.end()
        elif _UNDECIDED_START.fullmatch(stripped) and not final:
            return  # "Pla" may become "Plan:", "Act" may become "Action:"
        elif self.expect_plan:
            self._state, self._plan_start = _State.PLAN, 0
        else:
            self._state, self._action_start = _State.ACTION, 0

    def _advance_plan(self) -> list[Event]:
        raw = self.text[self._plan_start :]
        marker = ACTION_MARKER.search(raw)
        if marker:
            visible = clean_plan(raw[: marker.start()])
            self._state, self._action_start = _State.ACTION, self._plan_start + marker.end()
        else:
            held = _MARKER_PREFIX_AT_END.search(raw)
            visible = clean_plan(raw[: held.start()] if held else raw)
        if len(visible) <= len(self.plan):
            return []
        delta, self.plan = visible[len(self.plan) :], visible
        return [PlanDelta(delta, visible)]

    def _advance_action(self, final: bool) -> list[Event]:
        raw = self.text[self._action_start :]
        parts = [p for p in _SEPARATOR.split(raw) if p]
        ends_with_separator = bool(raw) and _SEPARATOR.fullmatch(raw[-1]) is not None
        complete = parts if (final or ends_with_separator) else parts[:-1]
        events: list[Event] = []
        for part in complete[len(self.tokens) : self.num_tokens]:
            index = len(self.tokens)
            if index == self.num_tokens - 1 and part.endswith("."):
                part = part[:-1]  # "... 255." ends a sentence
            if not _INTEGER.fullmatch(part) or int(part) >= NUM_BINS:
                events.append(
                    self._fail(
                        f"action integer {index + 1} of {self.num_tokens} is {part[:20]!r}, not 0..255"
                    )
                )
                return events
            self.tokens.append(int(part))
            events.append(ActionTokenEvent(index, int(part)))
        if len(self.tokens) == self.num_tokens:
            events.append(self._complete())
        return events

    def _complete(self) -> Event:
        try:
            command = self.codec.decode(list(self.tokens))
        except ActionParseError as exc:  # the codec refuses: still nothing moves
            return self._fail(str(exc))
        self._state = _State.DONE
        self.complete = ActionComplete(tuple(self.tokens), command, self.plan, self.text)
        return self.complete

    def _fail(self, message: str) -> ParseFailure:
        self._state = _State.FAILED
        self.failure = message
        return ParseFailure(message, self.text)


def parse_text(
    text: str, style: str = "cot", given_plan: str | None = None, codec: _Decoder | None = None
) -> ActionComplete:
    """Parse a whole generated text at once. Raises ActionParseError with the reason if invalid."""
    parser = StreamParser(style=style, given_plan=given_plan, codec=codec)
    parser.feed(text)
    parser.finish()
    if parser.complete is None:
        raise ActionParseError(f"model output is not a valid action ({parser.failure}): {text[:120]!r}")
    return parser.complete
