"""Guided-decoding regexes: which ones mean "the RT-2 action grammar", and how we check that.

Local backends always decode under the RT-2 action constraint (logits processors), so a regex
sent by a client is not compiled into a token automaton here; it is *verified* to describe the
same grammar and otherwise refused with a 400 that shows what is supported. Verification is by
probing: a regex is accepted when, for one output form (chain-of-thought, bare action, or the
action-only continuation used for plan reuse), it matches every valid probe and no invalid one
(out-of-range bins, seven or nine tokens, non-digits). Equivalent spellings of the grammar
(vLLM users write their own) therefore pass, while `.*` or `(\\d+ ){7}\\d+` do not.
"""

from __future__ import annotations

import re

# One integer 0..255, without leading zeros beyond what "0" needs.
BIN_REGEX = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Exactly eight bins separated by single spaces: the action after the marker.
ACTION_TOKENS_REGEX = rf"{BIN_REGEX}(?: {BIN_REGEX}){{7}}"
# What is generated after a given plan ("Plan: ... Action:" was fed as text): the bins only.
CONTINUATION_REGEX = rf" ?{ACTION_TOKENS_REGEX}"

_ACTIONS = (
    "0 131 119 96 128 128 128 255",
    "1 0 255 128 12 200 128 0",
    "0 128 128 128 128 128 128 128",
    "0 250 5 99 100 255 1 64",
)
_BAD_ACTIONS = (
    "0 131 119 96 128 128 128 256",  # out of range
    "0 131 119 96 128 128 999 255",
    "0 131 119 96 128 128 128",  # seven tokens
    "0 131 119 96 128 128 128 255 7",  # nine tokens
    "0 131 x 96 128 128 128 255",  # not a number
    "0 131 -1 96 128 128 128 255",
)
_PLANS = ("pick up the rock", "move the red block near the blue can")

# form name -> (how a valid output looks given an action string, plans used)
_FORMS: dict[str, list[str]] = {
    "cot": [f"Plan: {p}. Action: {{a}}" for p in _PLANS],
    "cot_uncased": [f"plan : {p}. action : {{a}}" for p in _PLANS],
    "plain": ["{a}"],
    "plain_marker": ["Action: {a}"],
    "continuation": [" {a}"],
}


def supported_regexes() -> dict[str, str]:
    """The regexes this server advertises for each prompt style (shown in 400 messages)."""
    out = {"continuation (plan reuse)": CONTINUATION_REGEX, "plain": ACTION_TOKENS_REGEX}
    try:  # the runtime's own spelling, when its module is present
        from rt2_cot.constrained import action_regex

        for style in ("cot", "plain"):
            out[style] = action_regex(style)
    except Exception:  # advertising is best effort; verification below does not need it
        out.setdefault("cot", rf"Plan: [^\n]{{1,200}}\. Action: {ACTION_TOKENS_REGEX}")
    return out


def matching_form(regex: str) -> str | None:
    """Name of the output form whose grammar `regex` describes exactly (on the probes), else None."""
    try:
        compiled = re.compile(regex)
    except re.error:
        return None
    for form, templates in _FORMS.items():
        valid = [t.format(a=a) for t in templates for a in _ACTIONS]
        invalid = [t.format(a=a) for t in templates for a in _BAD_ACTIONS]
        if all(compiled.fullmatch(s) for s in valid) and not any(compiled.fullmatch(s) for s in invalid):
            return form
    return None


def explain_rejection(regex: str) -> str:
    """A 400 message: why `regex` was refused and what to send instead."""
    try:
        re.compile(regex)
        why = "it does not describe the RT-2 action grammar (eight integers 0..255 after the action marker)"
    except re.error as exc:
        why = f"it is not a valid regular expression ({exc})"
    options = "; ".join(f"{k}: {v}" for k, v in supported_regexes().items())
    return (
        f"guided regex refused: {why}. This server always decodes under the RT-2 action constraint; "
        f"omit the field or send one of: {options}"
    )
