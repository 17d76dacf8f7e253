"""On-disk format of training data and the text formats the built-in model is trained on.

A data folder holds shards written by `rt2-cot datagen`, each a pair:
    shard-<seed>-<k>.npz   images (N, 128, 128, 3) uint8, actions (N, 8) uint8, episode (N,) int32
    shard-<seed>-<k>.json  {"episodes": [...], "frames": [{"episode", "step", "instruction", "plan",
                            "grounded_plan", "points"}],
                            "vl": [{"frame", "question", "answer", "kind"}]}
An episode whose "split" is `QUESTION_SCENES` (datagen `--question-split`) is one frame with no
instruction, plan or action: only its "vl" questions are trained on.
Plus `meta.json` (generator settings, counts, held-out rules) and, after the first training run,
`shard-*.features.v2.npy` (and `.s8.v2.npy`): the frozen backbone's features per frame (fp16), computed once.

Text formats (the model is uncased; the runtime's parser tolerates case and spaces before ':'):
    chain of thought  prompt `Instruction: {instruction}`        target `Plan: {plan}. Action: {8 ints}`
    plain RT-2        prompt `Q: what action should the robot take to {instruction}? A:`  target `{8 ints}`
    vision-language   prompt `Q: {question}? A:`                 target `{answer}`
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rt2_cot.errors import ConfigError

IMAGE_SIZE = 128
# The episode split of question scenes: vision-language examples only, never robot examples.
QUESTION_SCENES = "questions"


def cot_prompt(
    instruction: str,
    gripper: float | None = None,
    position: tuple[int, int, int] | None = None,
    motion: str | None = None,
) -> str:
    """The runtime's own `cot` template (prompts/templates.yaml), so training sees what backends send."""
    from rt2_cot.prompts import build_prompt

    return build_prompt("cot", instruction, gripper=gripper, position=position, motion=motion)


def cot_target(plan: str, tokens: list[int] | tuple[int, ...]) -> str:
    plan = plan.strip().rstrip(".")
    return f"Plan: {plan}. Action: {' '.join(str(int(t)) for t in tokens)}"


def plain_prompt(instruction: str) -> str:
    return f"Q: what action should the robot take to {instruction.strip().rstrip('.?!')}? A:"


def plain_target(tokens: list[int] | tuple[int, ...]) -> str:
    return " ".join(str(int(t)) for t in tokens)


def vl_prompt(question: str) -> str:
    return f"Q: {question.strip().rstrip('?')}? A:"


def vl_target(answer: str) -> str:
    return answer.strip()


@dataclass
class Shard:
    """One loaded shard: arrays plus its JSON side-car."""

    path: Path
    images: np.ndarray
    actions: np.ndarray
    episode: np.ndarray
    meta: dict

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])


def write_shard(
    path_stem: Path, images: np.ndarray, actions: np.ndarray, episode: np.ndarray, meta: dict
) -> None:
    """Atomic-ish write (tmp then rename) so a reader never sees half a shard."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = path_stem.with_name(path_stem.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        images=images.astype(np.uint8),
        actions=actions.astype(np.uint8),
        episode=episode.astype(np.int32),
    )
    side = path_stem.with_suffix(".json")
    side_tmp = path_stem.with_name(path_stem.name + ".tmp.json")
    side_tmp.write_text(json.dumps(meta))
    side_tmp.rename(side)
    tmp.rename(path_stem.with_suffix(".npz"))


def shard_paths(folder: Path) -> list[Path]:
    """Complete shards in a folder, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"training data folder {folder} does not exist; run `rt2-cot datagen --out {folder}` first"
        )
    paths = sorted(
        p for p in folder.glob("shard-*.npz") if ".tmp" not in p.name and p.with_suffix(".json").exists()
    )
    if not paths:
        raise ConfigError(f"no shards in {folder}; run `rt2-cot datagen --out {folder}` first")
    return paths


def read_shard(path: Path) -> Shard:
    try:
        with np.load(path) as z:
            images, actions, episode = z["images"], z["actions"], z["episode"]
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"corrupt training shard {path}: {exc}; delete it and re-run datagen") from exc
    return Shard(path=path, images=images, actions=actions, episode=episode, meta=meta)
