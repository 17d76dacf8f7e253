"""RT-2 action codec: metric end-effector steps <-> eight integer bins <-> text.

Contract (RT-2 format, the built-in model's):

    tokens:  terminate dx dy dz droll dpitch dyaw gripper      eight integers, each 0..255

    terminate   0 continues; any other value ends the episode (stopping is the safe reading).
    dx dy dz    per-step translation in the base frame over [-r_xyz, +r_xyz] (default 0.05 m).
    droll..     per-step rotation over [-r_rpy, +r_rpy] (default 0.25 rad).
    gripper     absolute opening: value/255, 0 closed, 255 fully open.

    Bin rule for the six motion dimensions: 128 decodes to exactly zero, and 1..255 are 255
    uniformly spaced points from -r to +r, so one bin is r/127 wide (0.39 mm at 0.05 m).
    Bin 0 saturates to -r (same as bin 1) so that every byte decodes inside the range.
    Encoding rounds to the nearest point, so decode(encode(v)) is within half a bin of v for any
    v in range, and values outside the range are clipped first.

Which vocabulary ids carry these bins is a property of the model, not of this codec (see
`rt2_cot.token_map`). OpenVLA-family checkpoints use a different rule; see `OpenVLAActionCodec`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robot_io.types import EndEffectorCommand
from rt2_cot.errors import ActionParseError, ConfigError

NUM_BINS = 256
NUM_ACTION_TOKENS = 8
ZERO_BIN = 128
_HALF_SPAN = 127  # bins either side of ZERO_BIN that reach the range limit


@dataclass(frozen=True)
class ActionCodec:
    """Encode/decode RT-2's 8-integer actions. Ranges are symmetric limits per step."""

    max_translation_m: float = 0.05
    max_rotation_rad: float = 0.25

    @property
    def translation_bin_m(self) -> float:
        return self.max_translation_m / _HALF_SPAN

    @property
    def rotation_bin_rad(self) -> float:
        return self.max_rotation_rad / _HALF_SPAN

    # -- one dimension ---------------------------------------------------------------------
    @staticmethod
    def _encode_dim(value: float, limit: float) -> int:
        v = float(np.clip(value, -limit, limit))
        return int(np.clip(round(v / limit * _HALF_SPAN) + ZERO_BIN, 1, NUM_BINS - 1))

    @staticmethod
    def _decode_dim(bin_: int, limit: float) -> float:
        b = int(np.clip(bin_, 1, NUM_BINS - 1))
        return (b - ZERO_BIN) / _HALF_SPAN * limit

    # -- whole actions ---------------------------------------------------------------------
    def encode(self, command: EndEffectorCommand) -> list[int]:
        """Metric command -> eight bins."""
        t, r = self.max_translation_m, self.max_rotation_rad
        return [
            1 if command.terminate else 0,
            *(self._encode_dim(v, t) for v in command.delta_xyz_m),
            *(self._encode_dim(v, r) for v in command.delta_rpy_rad),
            int(np.clip(round(float(command.gripper) * 255), 0, 255)),
        ]

    def decode(self, tokens: list[int] | tuple[int, ...] | np.ndarray) -> EndEffectorCommand:
        """Eight bins -> metric command. Raises ActionParseError unless exactly eight ints 0..255."""
        bins = validate_tokens(tokens)
        t, r = self.max_translation_m, self.max_rotation_rad
        return EndEffectorCommand(
            terminate=bins[0] != 0,
            delta_xyz_m=tuple(self._decode_dim(b, t) for b in bins[1:4]),
            delta_rpy_rad=tuple(self._decode_dim(b, r) for b in bins[4:7]),
            gripper=bins[7] / 255.0,
        )

    # -- text ------------------------------------------------------------------------------
    @staticmethod
    def to_text(tokens: list[int]) -> str:
        return " ".join(str(b) for b in validate_tokens(tokens))

    @staticmethod
    def from_text(text: str) -> list[int]:
        """'0 131 119 96 128 128 128 255' -> bins. Anything else raises ActionParseError."""
        parts = text.split()
        if len(parts) != NUM_ACTION_TOKENS or not all(re.fullmatch(r"\d{1,3}", p) for p in parts):
            raise ActionParseError(f"expected {NUM_ACTION_TOKENS} integers 0..255, got {text!r}")
        return validate_tokens([int(p) for p in parts])

    def to_dict(self, command: EndEffectorCommand) -> dict:
        """The JSON shape of the CLI contract's `action` field."""
        return {
            "terminate": bool(command.terminate),
            "delta_xyz_m": [round(v, 6) for v in command.delta_xyz_m],
            "delta_rpy_rad": [round(v, 6) for v in command.delta_rpy_rad],
            "gripper": round(float(command.gripper), 6),
        }


def validate_tokens(tokens: list[int] | tuple[int, ...] | np.ndarray) -> list[int]:
    bins = [int(b) for b in tokens]
    if len(bins) != NUM_ACTION_TOKENS:
        raise ActionParseError(f"an action has {NUM_ACTION_TOKENS} tokens, got {len(bins)}")
    if any(b < 0 or b >= NUM_BINS for b in bins):
        raise ActionParseError(f"action tokens must be 0..255, got {bins}")
    return bins


@dataclass(frozen=True)
class OpenVLAActionCodec:
    """OpenVLA's 7-dimensional action rule (x y z roll pitch yaw gripper, no terminate token).

    OpenVLA bins normalised actions in [-1, 1] with 256 edges (np.linspace(-1, 1, 256)), so 255
    bin centres; token id = vocab_size - digitize(a, edges) on the *last* vocabulary ids. Decoding
    inverts that: bin = clip(vocab_size - id - 1, 0, 254) -> centre -> un-normalise the first six
    dimensions from the dataset's q01/q99 (`a = 0.5 (n + 1)(q99 - q01) + q01`); the gripper is not
    normalised and maps from [-1, 1] to an opening in [0, 1].
    """

    q01: tuple[float, ...]
    q99: tuple[float, ...]
    vocab_size: int
    normalize_mask: tuple[bool, ...] = (True,) * 6 + (False,)

    @property
    def num_tokens(self) -> int:
        return len(self.q01)

    @classmethod
    def from_dataset_statistics(
        cls, path: Path, unnorm_key: str | None, vocab_size: int
    ) -> OpenVLAActionCodec:
        try:
            stats = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read dataset statistics {path}: {exc}") from exc
        if unnorm_key is None:
            if len(stats) != 1:
                raise ConfigError(f"{path} holds several datasets ({', '.join(stats)}); pass unnorm_key")
            unnorm_key = next(iter(stats))
        if unnorm_key not in stats:
            raise ConfigError(f"{path} has no dataset {unnorm_key!r}; it has {', '.join(stats)}")
        action = stats[unnorm_key]["action"]
        mask = action.get("mask", [True] * (len(action["q01"]) - 1) + [False])
        return cls(tuple(action["q01"]), tuple(action["q99"]), vocab_size, tuple(bool(m) for m in mask))

    def _centres(self) -> np.ndarray:
        edges = np.linspace(-1.0, 1.0, NUM_BINS)
        return (edges[:-1] + edges[1:]) / 2.0

    def token_ids_to_action(self, token_ids: list[int]) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.shape != (self.num_tokens,):
            raise ActionParseError(f"OpenVLA actions have {self.num_tokens} tokens, got {ids.size}")
        if np.any(ids < self.vocab_size - NUM_BINS) or np.any(ids >= self.vocab_size):
            raise ActionParseError(f"OpenVLA action ids must be the last {NUM_BINS} of the vocabulary")
        bins = np.clip(self.vocab_size - ids - 1, 0, NUM_BINS - 2)
        normalized = self._centres()[bins]
        q01, q99 = np.asarray(self.q01), np.asarray(self.q99)
        mask = np.asarray(self.normalize_mask)
        return np.where(mask, 0.5 * (normalized + 1.0) * (q99 - q01) + q01, normalized)

    def action_to_token_ids(self, action: np.ndarray) -> list[int]:
        a = np.asarray(action, dtype=np.float64)
        q01, q99 = np.asarray(self.q01), np.asarray(self.q99)
        mask = np.asarray(self.normalize_mask)
        span = np.where(q99 - q01 == 0, 1.0, q99 - q01)
        normalized = np.clip(np.where(mask, 2.0 * (a - q01) / span - 1.0, a), -1.0, 1.0)
        edges = np.linspace(-1.0, 1.0, NUM_BINS)
        return [int(self.vocab_size - d) for d in np.digitize(normalized, edges)]

    def to_command(self, token_ids: list[int]) -> EndEffectorCommand:
        a = self.token_ids_to_action(token_ids)
        return EndEffectorCommand(
            delta_xyz_m=tuple(float(v) for v in a[:3]),
            delta_rpy_rad=tuple(float(v) for v in a[3:6]),
            gripper=float(np.clip((a[6] + 1.0) / 2.0, 0.0, 1.0)),
        )
