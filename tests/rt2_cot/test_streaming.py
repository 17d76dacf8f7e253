"""The streaming parser: tolerant of real tokenizers' output, strict about what may move the arm."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rt2_cot.action_codec import ActionCodec
from rt2_cot.errors import ActionParseError
from rt2_cot.events import ActionComplete, ActionTokenEvent, ParseFailure, PlanDelta, TextDelta
from rt2_cot.streaming import StreamParser, parse_text

CODEC = ActionCodec()


def run(chunks, **kwargs):
    parser = StreamParser(**kwargs)
    events = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.finish())
    return parser, events


def outcome(events):
    """What a user sees at the end: the plan as streamed, and the action or the failure."""
    plan = "".join(e.text for e in events if isinstance(e, PlanDelta))
    final = [e for e in events if isinstance(e, (ActionComplete, ParseFailure))]
    assert len(final) <= 1, final
    if not final:
        return plan, None
    last = final[0]
    return plan, (last.tokens, last.plan) if isinstance(last, ActionComplete) else ("fail", last.message)


@pytest.mark.parametrize(
    ("text", "plan"),
    [
        ("Plan: pick up the rock. Action: 0 131 119 96 128 128 128 255", "pick up the rock"),
        ("plan : pick up the rock. action : 0 131 119 96 128 128 128 255", "pick up the rock"),  # WordPiece
        (" PLAN:pick up the rock ACTION:0 131 119 96 128 128 128 255.", "pick up the rock"),
        ("pick up the rock. Action: 0 131 119 96 128 128 128 255", "pick up the rock"),  # no Plan:
        ("Plan: pick up the rock. Action:\n0,131,119,96,128,128,128,255\n", "pick up the rock"),
        (
            "Plan: record the transaction: done. Action: 0 131 119 96 128 128 128 255",
            "record the transaction: done",
        ),
    ],
)
def test_cot_outputs_parse(text, plan):
    complete = parse_text(text)
    assert complete.tokens == (0, 131, 119, 96, 128, 128, 128, 255)
    assert complete.plan == plan
    assert complete.command == CODEC.decode(complete.tokens)


def test_plain_prompt_needs_no_plan_and_tolerates_markers():
    assert parse_text(" 1 143 129 123 145 114 115 127", style="plain").tokens == (
        1,
        143,
        129,
        123,
        145,
        114,
        115,
        127,
    )
    assert parse_text("Action: 1 143 129 123 145 114 115 127", style="plain").plan == ""
    assert parse_text("Plan: go. Action: 1 2 3 4 5 6 7 8", style="plain").plan == "go"


def test_primed_with_a_given_plan():
    parser, events = run([" 0 1", "31 119 96 128 128 128 255"], given_plan="pick up the rock.")
    assert events[0] == PlanDelta("pick up the rock", "pick up the rock")
    assert parser.complete.plan == "pick up the rock"
    assert parser.complete.tokens == (0, 131, 119, 96, 128, 128, 128, 255)


def test_events_stream_in_order_and_tokens_arrive_as_soon_as_complete():
    parser = StreamParser()
    assert parser.feed("Pla") == [TextDelta("Pla")]  # could still be "Plan:"
    events = parser.feed("n: pick up the r")
    assert [e for e in events if isinstance(e, PlanDelta)] == [PlanDelta("pick up the r", "pick up the r")]
    events = parser.feed("ock. Act")  # "Act" may be the marker: held back, and so is the full stop
    assert [e.plan for e in events if isinstance(e, PlanDelta)] == ["pick up the rock"]
    events = parser.feed("ion: 0 13")
    assert not [e for e in events if isinstance(e, (PlanDelta, ActionTokenEvent))][1:]
    assert [e for e in events if isinstance(e, ActionTokenEvent)] == [ActionTokenEvent(0, 0)]
    events = parser.feed("1 119 96 128 128 128 25")
    assert [e.value for e in events if isinstance(e, ActionTokenEvent)] == [131, 119, 96, 128, 128, 128]
    events = parser.finish()
    assert events[0] == ActionTokenEvent(7, 25)
    assert isinstance(events[1], ActionComplete) and events[1].plan == "pick up the rock"
    assert events[1].text == "Plan: pick up the rock. Action: 0 131 119 96 128 128 128 25"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Plan: pick up the rock. Action: 0 131 119 96 128 128 128 256", "integer 8 of 8"),
        ("Plan: pick up the rock. Action: 0 131 119 96", "after 4 of 8"),
        ("Plan: pick up the rock.", "without 'Action:'"),
        ("Plan: x. Action: 0 131 one 96 128 128 128 255", "integer 3 of 8"),
        ("Plan: x. Action: -1 131 119 96 128 128 128 255", "integer 1 of 8"),
        ("", "without 'Action:'"),
    ],
)
def test_invalid_outputs_fail_with_a_reason(text, message):
    parser, events = run([text])
    assert parser.complete is None and not [e for e in events if isinstance(e, ActionComplete)]
    failures = [e for e in events if isinstance(e, ParseFailure)]
    assert len(failures) == 1 and message in failures[0].message
    with pytest.raises(ActionParseError, match=message.split()[0]):
        parse_text(text)


def test_text_after_the_action_is_ignored_and_nothing_follows_completion():
    parser, events = run(["Plan: x. Action: 1 2 3 4 5 6 7 8 9 10 <eos>"])
    assert parser.complete.tokens == (1, 2, 3, 4, 5, 6, 7, 8)
    assert sum(isinstance(e, ActionComplete) for e in events) == 1


def test_misuse_raises_only_action_parse_error():
    parser = StreamParser()
    parser.finish()
    with pytest.raises(ActionParseError):
        parser.feed("more")
    with pytest.raises(ActionParseError):
        StreamParser().feed(b"bytes")  # type: ignore[arg-type]


# -- fuzzing -----------------------------------------------------------------------------------
# Text drawn to hit the grammar's edges: markers in odd case and spacing, digits, separators, junk.
FRAGMENTS = st.sampled_from(
    ["Plan:", "plan :", "PLAN", "Action:", "action :", "act", "ion", ":", ".", " ", "\n", ",", "-", "transaction:",
     "0", "1", "25", "255", "256", "999", "1000", "007", "12", "pick up the rock", "a", "p", "</s>", "\u00e9"]
)  # fmt: skip
TEXTS = st.one_of(st.text(max_size=120), st.lists(FRAGMENTS, max_size=40).map("".join))


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(text)) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def check_events(events) -> None:
    for event in events:
        if isinstance(event, ActionComplete):
            assert len(event.tokens) == 8 and all(0 <= t <= 255 for t in event.tokens)
            c = event.command
            assert all(abs(v) <= CODEC.max_translation_m + 1e-12 for v in c.delta_xyz_m)
            assert all(abs(v) <= CODEC.max_rotation_rad + 1e-12 for v in c.delta_rpy_rad)
            assert 0.0 <= c.gripper <= 1.0
        if isinstance(event, ActionTokenEvent):
            assert 0 <= event.value <= 255 and 0 <= event.index < 8


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=TEXTS,
    cuts=st.lists(st.integers(0, 200), max_size=12),
    style=st.sampled_from(["cot", "plain"]),
    primed=st.booleans(),
)
def test_fuzz_any_text_any_chunking(text, cuts, style, primed):
    given_plan = "pick up the rock" if primed else None
    _, whole = run([text], style=style, given_plan=given_plan)
    _, chunked = run(split(text, cuts), style=style, given_plan=given_plan)
    check_events(whole)
    check_events(chunked)
    # How the text was cut into chunks never changes what the user sees at the end.
    assert outcome(chunked) == outcome(whole)
    assert "".join(e.text for e in chunked if isinstance(e, TextDelta)) == text


@settings(max_examples=200, deadline=None)
@given(
    plan=st.lists(
        st.sampled_from(["pick", "up", "the", "rock", "7up", "can", "near", "blue", "bowl"]), min_size=1
    ).map(" ".join),
    tokens=st.lists(st.integers(0, 255), min_size=8, max_size=8),
    plan_marker=st.sampled_from(["Plan:", "plan :", "PLAN :", ""]),
    action_marker=st.sampled_from(["Action:", "action :", "ACTION:"]),
    sep=st.sampled_from([" ", "  ", "\n", ", "]),
    cuts=st.lists(st.integers(0, 200), max_size=10),
)
def test_fuzz_well_formed_outputs_always_parse(plan, tokens, plan_marker, action_marker, sep, cuts):
    text = f"{plan_marker} {plan}. {action_marker} {sep.join(map(str, tokens))}"
    parser, events = run(split(text, cuts))
    assert parser.complete is not None, parser.failure
    assert parser.complete.tokens == tuple(tokens)
    assert parser.complete.plan == plan
    assert "".join(e.text for e in events if isinstance(e, PlanDelta)) == plan
    assert [e.value for e in events if isinstance(e, ActionTokenEvent)] == tokens
