"""Constrained decoding: the output grammar enforced token by token, for local and remote models.

Local (transformers): `ActionGrammarProcessor` is a `LogitsProcessor` that walks this grammar

    [forced "Plan:"] free plan text (bounded) [forced ". Action:" if the model does not write it]
    exactly N action tokens (only the 256 ids of the token map) then forced end-of-sequence

and masks every other token to -inf, so even a randomly initialised model produces a well-formed
plan and an in-range action. The plan is free text but never special tokens, added tokens (image,
location) or, for tail vocabularies, action ids. With a given plan (plan reuse) or a prompt without
a plan, decoding starts at the action tokens. `StopEventCriteria` ends generation within one token
when a `threading.Event` is set. `ActionTextStreamer` turns action ids into their bin numbers as
text, so a tail vocabulary (whose ids decode to junk) streams `Action: 0 131 ...` like any other.

Action readout. Greedy decoding takes each action token's argmax. A model whose six motion bins were
trained as ordinal quantities (soft targets over neighbouring bins plus an L1 loss on the expected bin,
as rt2-cot-mini is) can instead be read out at the expected bin: `readout_dims(config)` lists the
action positions to read that way (`action_readout: expected` in the model config; terminate and
gripper stay argmax). Under uncertainty the argmax of such a head is the spike at "no motion" (128);
the expectation still moves toward the target. `ActionGrammarProcessor` then allows only the
expected bin's token at those positions, so generate() and the fast path give the same tokens.

Remote (OpenAI-compatible servers): `action_regex(style)` is the same grammar as a guided-decoding
regex (vLLM / SGLang `guided_regex`), with 0..255 enforced digit by digit.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, StoppingCriteria, TextIteratorStreamer

from rt2_cot.errors import ConfigError
from rt2_cot.prompts import get_template
from rt2_cot.streaming import ACTION_MARKER, clean_plan
from rt2_cot.token_map import ActionTokenMap

DEFAULT_MAX_PLAN_TOKENS = 32  # RT-2's plans are a short sentence; this bounds the latency of a step.
_BYTE_RANGE = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"  # 0..255 without leading zeros


class Phase(enum.Enum):
    PLAN_MARKER = "plan_marker"  # forcing "Plan:"
    PLAN = "plan"  # free text until the model writes the action marker or the budget ends
    ACTION_MARKER = "action_marker"  # forcing ". Action:" after the plan budget
    ACTION = "action"  # only action ids
    EOS = "eos"  # forcing end of sequence
    DONE = "done"


@dataclass(frozen=True)
class GrammarSpec:
    """Everything the grammar needs to know about one request and one tokenizer."""

    token_map: ActionTokenMap
    eos_id: int
    decode: Callable[[list[int]], str]
    expect_plan: bool
    num_action_tokens: int = 8
    plan_marker_ids: tuple[int, ...] = ()
    action_marker_ids: tuple[int, ...] = ()
    max_plan_tokens: int = DEFAULT_MAX_PLAN_TOKENS
    text_vocab_size: int = 0  # ids >= this are never plan text (added tokens, embedding padding)
    banned_in_plan: frozenset[int] = frozenset()
    banned_as_plan_start: frozenset[int] = frozenset()  # an empty plan is not a plan
    expected_dims: tuple[int, ...] = ()  # action positions read out as the expected bin (greedy only)

    @property
    def max_new_tokens(self) -> int:
        """The most tokens this grammar can produce, EOS included: generate() never cuts it short."""
        plan = (
            len(self.plan_marker_ids) + self.max_plan_tokens + len(self.action_marker_ids)
            if self.expect_plan
            else 0
        )
        return plan + self.num_action_tokens + 1

    def new_state(self) -> GrammarState:
        return GrammarState(self)

    @classmethod
    def for_tokenizer(
        cls,
        tokenizer,
        token_map: ActionTokenMap,
        style: str = "cot",
        given_plan: bool = False,
        max_new_tokens: int | None = None,
        max_plan_tokens: int = DEFAULT_MAX_PLAN_TOKENS,
        eos_id: int | None = None,
        expected_dims: tuple[int, ...] = (),
    ) -> GrammarSpec:
        """The grammar for a prompt style. `max_new_tokens` (if given) caps the plan budget to fit."""
        template = get_template(style)
        expect_plan = template.has_plan and not given_plan
        if eos_id is None:
            eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if eos_id is None:
            raise ConfigError("the tokenizer has no end-of-sequence token; constrained decoding needs one")

        def encode(text: str) -> tuple[int, ...]:
            return tuple(tokenizer.encode(text, add_special_tokens=False))

        plan_marker = encode(template.plan_marker) if expect_plan and template.plan_marker else ()
        action_marker = (
            encode(f". {template.action_marker}") if expect_plan and template.action_marker else ()
        )
        fixed = len(plan_marker) + len(action_marker) + template.num_action_tokens + 1
        if max_new_tokens is not None and expect_plan:
            if max_new_tokens - fixed < 1:
                raise ConfigError(
                    f"max_new_tokens={max_new_tokens} leaves no room for a plan; use at least {fixed + 1}"
                )
            max_plan_tokens = min(max_plan_tokens, max_new_tokens - fixed)
        special = set(getattr(tokenizer, "all_special_ids", []) or []) | {int(eos_id)}
        banned = special | (set(token_map.ids) if token_map.style == "tail" else set())
        starts = set()
        for word in ("Action", "action", " Action", " action", ".", ":"):
            ids = encode(word)
            if ids:
                starts.add(ids[0])
        return cls(
            token_map=token_map,
            eos_id=int(eos_id),
            decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
            expect_plan=expect_plan,
            num_action_tokens=template.num_action_tokens,
            plan_marker_ids=plan_marker,
            action_marker_ids=action_marker,
            max_plan_tokens=max_plan_tokens,
            text_vocab_size=int(getattr(tokenizer, "vocab_size", 0) or len(tokenizer)),
            banned_in_plan=frozenset(banned),
            banned_as_plan_start=frozenset(starts),
            expected_dims=tuple(expected_dims),
        )


class GrammarState:
    """Where one sequence is in the grammar. Advanced one generated token at a time."""

    def __init__(self, spec: GrammarSpec) -> None:
        self.spec = spec
        self.consumed = 0
        self.plan_ids: list[int] = []
        self.plan_text = ""
        self.actions = 0
        self._forced = 0
        if spec.expect_plan:
            self.phase = Phase.PLAN_MARKER if spec.plan_marker_ids else Phase.PLAN
        else:
            self.phase = Phase.ACTION

    def forced_id(self) -> int | None:
        if self.phase is Phase.PLAN_MARKER:
            return self.spec.plan_marker_ids[self._forced]
        if self.phase is Phase.ACTION_MARKER:
            return self.spec.action_marker_ids[self._forced]
        if self.phase in (Phase.EOS, Phase.DONE):
            return self.spec.eos_id
        return None

    def advance(self, token_id: int) -> None:
        self.consumed += 1
        spec = self.spec
        if self.phase is Phase.PLAN_MARKER:
            self._forced += 1
            if self._forced == len(spec.plan_marker_ids):
                self.phase, self._forced = Phase.PLAN, 0
        elif self.phase is Phase.PLAN:
            self.plan_ids.append(int(token_id))
            self.plan_text = spec.decode(self.plan_ids)
            if ACTION_MARKER.search(self.plan_text):
                self.phase = Phase.ACTION
            elif len(self.plan_ids) >= spec.max_plan_tokens:
                self.phase = Phase.ACTION_MARKER if spec.action_marker_ids else Phase.ACTION
        elif self.phase is Phase.ACTION_MARKER:
            self._forced += 1
            if self._forced == len(spec.action_marker_ids):
                self.phase = Phase.ACTION
        elif self.phase is Phase.ACTION:
            self.actions += 1
            if self.actions == spec.num_action_tokens:
                self.phase = Phase.EOS
        elif self.phase is Phase.EOS:
            self.phase = Phase.DONE

    def sync(self, generated: Iterable[int]) -> None:
        """Advance over the tokens of `generated` not seen yet (the processor sees whole sequences)."""
        generated = list(generated)
        for token_id in generated[self.consumed :]:
            self.advance(token_id)


MOTION_DIMS = (1, 2, 3, 4, 5, 6)  # dx dy dz droll dpitch dyaw (0 is terminate, 7 the gripper)
ACTION_READOUTS = ("argmax", "expected")


def readout_dims(config, override: str | None = None) -> tuple[int, ...]:
    """Action positions to read out as the expected bin: from `override` if given, else from the
    model config's `action_readout` ("argmax" when absent: any checkpoint not trained for it)."""
    readout = override or getattr(config, "action_readout", None) or "argmax"
    if readout not in ACTION_READOUTS:
        raise ConfigError(f"action readout must be one of {', '.join(ACTION_READOUTS)}, got {readout!r}")
    return MOTION_DIMS if readout == "expected" else ()


def expected_bin_index(logits: torch.Tensor, bins: torch.Tensor) -> int:
    """Index (into `logits`/`bins`) of the bin nearest to the softmax-expected bin."""
    p = torch.softmax(logits.float(), dim=-1)
    mean = float((p * bins).sum())
    return int(torch.argmin((bins - round(mean)).abs()))


class ActionGrammarProcessor(LogitsProcessor):
    """Masks the logits of every sequence in the batch to what its grammar state allows next."""

    def __init__(self, spec: GrammarSpec, prompt_length: int) -> None:
        self.spec = spec
        self.prompt_length = int(prompt_length)
        self.states: list[GrammarState] = []
        self._plan_masks: dict[tuple[int, str, bool], torch.Tensor] = {}
        self._bins_by_device: dict[str, torch.Tensor] = {}

    def _bins(self, device: torch.device) -> torch.Tensor:
        """The bin each action id carries, in `token_map.ids` order (for the expected readout)."""
        key = str(device)
        if key not in self._bins_by_device:
            bins = [self.spec.token_map.bin_of(int(i)) for i in self.spec.token_map.ids]
            self._bins_by_device[key] = torch.tensor(bins, dtype=torch.float32, device=device)
        return self._bins_by_device[key]

    def _plan_mask(self, vocab: int, device: torch.device, plan_empty: bool) -> torch.Tensor:
        key = (vocab, str(device), plan_empty)
        if key not in self._plan_masks:
            allowed = torch.zeros(vocab, dtype=torch.bool, device=device)
            allowed[: min(vocab, self.spec.text_vocab_size or vocab)] = True
            banned = set(self.spec.banned_in_plan)
            if plan_empty:
                banned |= self.spec.banned_as_plan_start
            banned_ids = [i for i in banned if 0 <= i < vocab]
            if banned_ids:
                allowed[torch.tensor(banned_ids, device=device)] = False
            self._plan_masks[key] = allowed
        return self._plan_masks[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        while len(self.states) < input_ids.shape[0]:
            self.states.append(self.spec.new_state())
        out = torch.full_like(scores, float("-inf"))
        vocab = scores.shape[-1]
        for row, state in enumerate(self.states[: input_ids.shape[0]]):
            state.sync(input_ids[row, self.prompt_length :].tolist())
            forced = state.forced_id()
            if forced is not None:
                out[row, forced] = 0.0
            elif state.phase is Phase.ACTION:
                ids = torch.tensor(self.spec.token_map.ids, device=scores.device)
                if state.actions in self.spec.expected_dims:
                    out[row, ids[expected_bin_index(scores[row, ids], self._bins(scores.device))]] = 0.0
                else:
                    out[row, ids] = scores[row, ids]
            else:  # free plan text
                mask = self._plan_mask(vocab, scores.device, plan_empty=not clean_plan(state.plan_text))
                out[row] = scores[row].masked_fill(~mask, float("-inf"))
            if not torch.isfinite(out[row]).any():
                # Another processor (a checkpoint's suppress_tokens, min_length...) already ruled out
                # everything the grammar allows; the grammar wins, uniformly, rather than NaNs.
                allowed = torch.tensor(self.spec.token_map.ids, device=scores.device)
                if state.phase is Phase.PLAN:
                    allowed = self._plan_mask(vocab, scores.device, False).nonzero().squeeze(-1)
                out[row, allowed] = 0.0
        return out


class StopEventCriteria(StoppingCriteria):
    """Stops generation at the next token once any of the events is set (operator stop, client gone)."""

    def __init__(self, *events: threading.Event | None) -> None:
        self.events = [e for e in events if e is not None]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        stop = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class ActionTextStreamer(TextIteratorStreamer):
    """A TextIteratorStreamer that writes action ids as their bin numbers (` 131`).

    It follows the same grammar as the processor with its own state, so it knows which generated
    tokens are action tokens without sharing mutable state with the generation thread.
    """

    def __init__(self, tokenizer, spec: GrammarSpec, timeout: float | None = None) -> None:
        super().__init__(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
        self.state = spec.new_state()

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError("ActionTextStreamer streams one sequence at a time")
            value = value[0]
        if self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        for token_id in value.tolist():
            phase = self.state.phase
            self.state.advance(token_id)
            bin_ = self.state.spec.token_map.bin_of(token_id) if phase is Phase.ACTION else None
            if bin_ is not None:
                self._flush_text()
                self.on_finalized_text(f" {bin_}")
            elif phase not in (Phase.EOS, Phase.DONE):
                super().put(torch.tensor([token_id]))

    def _flush_text(self) -> None:
        if self.token_cache:
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            printable = text[self.print_len :]
            self.token_cache, self.print_len = [], 0
            if printable:
                self.on_finalized_text(printable)


def action_regex(style: str = "cot", plan_given: bool = False, max_plan_chars: int = 200) -> str:
    """The output grammar as a guided-decoding regex for remote servers (vLLM/SGLang `guided_regex`).

    cot:   `Plan: <1..max_plan_chars chars, no newline>. Action: <8 numbers 0..255>`
    plain, or any style with `plan_given`: ` <8 numbers 0..255>` (the prompt ends at the marker).
    """
    template = get_template(style)
    if style == "openvla":
        raise ConfigError(
            "OpenVLA actions are vocabulary-tail tokens, not text; constrain them with token ids"
        )
    n = template.num_action_tokens
    actions = rf"(?:{_BYTE_RANGE} ){{{n - 1}}}{_BYTE_RANGE}"
    if template.has_plan and not plan_given:
        plan, action = re.escape(template.plan_marker), re.escape(template.action_marker or "")
        return rf"{plan} [^\n]{{1,{max_plan_chars}}}\. {action} {actions}"
    return rf" ?{actions}"
