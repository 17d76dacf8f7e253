"""Which vocabulary ids carry the 256 action bins: a property of the model, not of the codec.

Two conventions exist:

  integer  PaLI-X / RT-2 style (and the built-in model): the bin is written as its decimal text and
           each of "0".."255" is one token ("▁131" or "Ġ131" also count). The id of bin b is the
           single token whose text is str(b), preferring the word-initial form so that decoded
           text keeps its spaces.
  tail     PaLM-E / OpenVLA style: the last 256 ids of the base vocabulary (`tokenizer.vocab_size`,
           which excludes added tokens such as `<image>` or padding). Following OpenVLA, the order
           is reversed: id = vocab_size - 1 - b, so `OpenVLAActionCodec` (which works on ids)
           and this map agree.

`detect_token_map(tokenizer)` picks `integer` when every bin has a single token, else `tail`;
pass `style=` to override (e.g. an OpenVLA checkpoint whose vocabulary also happens to hold numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from robot_io.types import EndEffectorCommand
from rt2_cot.action_codec import NUM_BINS, OpenVLAActionCodec
from rt2_cot.errors import ConfigError

TokenMapStyle = Literal["integer", "tail"]


@dataclass(frozen=True)
class ActionTokenMap:
    """bin (0..255) <-> vocabulary id. `ids[b]` is the id that carries bin b."""

    style: TokenMapStyle
    ids: tuple[int, ...]
    _bin_of: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.ids) != NUM_BINS or len(set(self.ids)) != NUM_BINS:
            raise ConfigError(f"an action token map needs {NUM_BINS} distinct ids, got {len(set(self.ids))}")
        object.__setattr__(self, "_bin_of", {i: b for b, i in enumerate(self.ids)})

    def bin_of(self, token_id: int) -> int | None:
        """The bin an id carries, or None if it is not an action token."""
        return self._bin_of.get(int(token_id))

    def id_of(self, bin_: int) -> int:
        return self.ids[int(bin_)]

    def __contains__(self, token_id: object) -> bool:
        return isinstance(token_id, int) and token_id in self._bin_of


def integer_token_ids(tokenizer) -> list[int] | None:
    """Ids of the single tokens "0".."255", or None if some number needs more than one token."""
    ids = []
    for b in range(NUM_BINS):
        found = None
        # Word-initial form first (" 131" -> "▁131"/"Ġ131"), so decoding a run of them keeps spaces.
        for text in (f" {b}", str(b)):
            encoded = tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1 and tokenizer.decode(encoded).strip() == str(b):
                found = encoded[0]
                break
        if found is None:
            return None
        ids.append(int(found))
    return ids if len(set(ids)) == NUM_BINS else None


def tail_token_ids(tokenizer, vocab_size: int | None = None) -> list[int]:
    """OpenVLA's ids: bin b -> vocab_size - 1 - b over the base vocabulary."""
    size = int(vocab_size if vocab_size is not None else tokenizer.vocab_size)
    if size < NUM_BINS * 2:
        raise ConfigError(f"vocabulary of {size} ids is too small to give its last {NUM_BINS} to actions")
    ids = [size - 1 - b for b in range(NUM_BINS)]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    clash = special.intersection(ids)
    if clash:
        raise ConfigError(
            f"special tokens {sorted(clash)} sit in the last {NUM_BINS} ids of a {size}-id vocabulary; "
            "pass vocab_size= for the base vocabulary or use the integer token map"
        )
    return ids


def detect_token_map(tokenizer, style: str = "auto", vocab_size: int | None = None) -> ActionTokenMap:
    """The action token map for a tokenizer: `auto`, `integer` or `tail`."""
    if style not in ("auto", "integer", "tail"):
        raise ConfigError(f"unknown action token style {style!r}; use auto, integer or tail")
    if style in ("auto", "integer"):
        ids = integer_token_ids(tokenizer)
        if ids is not None:
            return ActionTokenMap("integer", tuple(ids))
        if style == "integer":
            raise ConfigError(
                "this tokenizer does not have single tokens for 0..255; use the tail token map (OpenVLA style)"
            )
    return ActionTokenMap("tail", tuple(tail_token_ids(tokenizer, vocab_size)))


@dataclass(frozen=True)
class OpenVLABinDecoder:
    """Lets the stream parser decode OpenVLA actions: streamed bins -> tail ids -> OpenVLA's rule.

    The tail map streams bin b for id vocab_size - 1 - b; this maps it back so that
    `OpenVLAActionCodec` (q01/q99 un-normalisation, 7 tokens) does the decoding.
    Use as `StreamParser(style="openvla", codec=OpenVLABinDecoder(codec))`.
    """

    codec: OpenVLAActionCodec

    def decode(self, bins: list[int]) -> EndEffectorCommand:
        return self.codec.to_command([self.codec.vocab_size - 1 - int(b) for b in bins])
