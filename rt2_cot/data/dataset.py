"""Training examples for rt2-cot-mini: robot steps (chain-of-thought and plain) and vision-language
questions over the same frames, with frozen image features cached once per frame."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from rt2_cot.data import format as fmt
from rt2_cot.data.grounding import GRIPPER, locate_question
from rt2_cot.errors import ConfigError
from rt2_cot.model.configuration_rt2_cot_mini import BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID
from rt2_cot.model.processing_rt2_cot_mini import pixels_from_uint8
from rt2_cot.prompts import gripper_motion

# Position roles inside a target, used by the loss: text token, or the index of an action dimension.
TEXT = -1
_UNRECORDED = object()  # a frame that does not record the previous step's executed gripper command
POINT = 8  # an image coordinate (0..255) in a grounded plan or a pointing answer: ordinal, like actions


# Class words a renamed object may take (`RobotData.sample(rename=...)`): the seen kinds and nouns no
# scene holds. Never a held-out kind (bottle, lemon, pear): those are the unseen-object evaluation's.
RENAME_WORDS = (
    "block",
    "ball",
    "can",
    "apple",
    "orange",
    "banana",
    "rock",
    "cup",
    "box",
    "toy",
    "jar",
    "mug",
)


def rename_object(instruction: str, plan: str, new_class: str) -> tuple[str, str] | None:
    """The first object the plan locates ("move the red can at 94 104 ..."), its class word replaced
    by `new_class` ("the red cup at 94 104") in the plan and wherever the instruction names it.
    None if the plan locates no object (a tile, the gripper) first, or the object is of that class."""
    from robot_io.sim.scene import KINDS, all_object_names

    objects = set(all_object_names(include_heldout=True))
    first = next((m.group(1) for m in re.finditer(r"\bthe ([a-z ]+?) at \d+ \d+", plan)), None)
    if first not in objects or first.split()[-1] == new_class:
        return None
    renamed = " ".join([*first.split()[:-1], new_class])
    # Whole names only: "orange" the fruit, not the colour of "the orange block".
    classes = "|".join(re.escape(k) for k in KINDS)
    name = re.compile(rf"(?<![a-z]){re.escape(first)}(?! (?:{classes})\b)(?![a-z])")
    return name.sub(renamed, instruction), name.sub(renamed, plan)


@dataclass
class Example:
    frame: int  # global frame index into RobotData.features
    prompt: list[int]
    target: list[int]  # ends with EOS
    roles: list[int]  # per target token: TEXT or action dimension 0..7
    kind: str  # "cot" | "plain" | "vl"


@dataclass
class Batch:
    features: torch.Tensor  # (B, num_image_tokens, C) frozen backbone features
    input_ids: torch.Tensor  # (B, T), right-padded
    labels: torch.Tensor  # (B, T) the token to predict *at* each position (already shifted), -100 = none
    roles: torch.Tensor  # (B, T) TEXT / action dimension of that label
    kinds: list[str] = field(default_factory=list)
    # (B, num_image_tokens): which scene item lies in each image cell, an index into
    # RobotData.cell_vocab; -100 where none or more than one does (RobotData `cell_names`).
    cells: torch.Tensor | None = None


class TextCache:
    """WordPiece ids per string (the same strings recur thousands of times)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids


def action_roles(target_ids: list[int], n_action: int) -> list[int]:
    """Roles for `target + EOS` whose last `n_action` tokens before EOS are the action integers."""
    n_text = len(target_ids) - n_action
    return [TEXT] * n_text + list(range(n_action)) + [TEXT]


def _plan_text(frame: dict, grounded: bool, gripper: bool) -> str:
    if not grounded or "grounded_plan" not in frame:
        return frame["plan"]
    if gripper:
        from rt2_cot.data.grounding import with_gripper

        return with_gripper(frame["grounded_plan"], frame["points"])
    return frame["grounded_plan"]


class RobotData:
    """All shards of one or more data folders, in memory, with cached backbone features."""

    def __init__(
        self,
        folders: list[Path],
        tokenizer,
        splits: tuple[str, ...] = ("train",),
        grounded: bool = False,
        gripper: bool = False,
        point_roles: bool = False,
        gripper_state: bool = False,
        position_state: bool = False,
        gripper_motion: bool = False,
        drop_driven_reopens: bool = False,
        cell_names: bool = False,
        locate: bool = False,
    ) -> None:
        """`grounded`: train on plans that locate their objects and include pointing questions
        (rt2_cot.data.grounding); otherwise RT-2's plain plans and no pointing questions.
        `gripper`: grounded plans also say where the gripper is. `point_roles`: the integers of a
        plan or pointing answer (image coordinates) get the POINT role, so training scores them like
        action bins (near misses cost little) instead of as unrelated words. `gripper_state`: the
        chain-of-thought prompt states the gripper's opening before the step (`Gripper: 50`);
        `gripper_motion`: the opening is followed by which way the gripper is going (`Gripper: 50
        closing`), from the previous step's commanded opening (its action label: what the policy
        asked for, before the shield). `position_state`: and the end-effector position (`Position:
        120 88 30`). Datagen records
        both, `rt2-cot datagen --add-state` adds them to older shards; frames without what the
        prompt needs are left out. `drop_driven_reopens`: leave out DAgger frames (datagen
        `--driver`) where the model had just asked to close and the oracle's label opens again
        (see TrainConfig.drop_driven_reopens). `cell_names`: batches also carry which object or tile
        lies in each image cell (`Batch.cells`, from the points datagen records; see
        TrainConfig.cell_name_weight). `locate`: every pointing question is also asked in the plan's
        words ("locate the lemon" -> "the lemon at 103 121"; grounding.locate_question), the
        gripper's excepted."""
        from rt2_cot.model.configuration_rt2_cot_mini import DEFAULT_POSITION_BOX
        from rt2_cot.prompts import position_bins

        self.text = TextCache(tokenizer)
        self.gripper_state = gripper_state
        self.position_state = position_state
        self.gripper_motion = gripper_motion
        per_folder = [[fmt.read_shard(p) for p in fmt.shard_paths(Path(folder))] for folder in folders]
        self.shards = [s for shards in per_folder for s in shards]
        self.offsets = np.cumsum([0] + [s.num_frames for s in self.shards])
        # Which of `folders` each frame comes from (for `sample(mix=...)`).
        self.frame_folder = np.repeat(
            np.arange(len(folders)), [sum(s.num_frames for s in shards) for shards in per_folder]
        )
        self._by_folder: tuple[np.ndarray, list[np.ndarray]] | None = None
        self._phrasings: dict[tuple[str, str], tuple[str, ...]] = {}  # see phrasings()
        self.frames: list[dict] = []  # per global frame: instruction, plan, action, episode key, split
        self.vl: list[tuple[int, str, str, str]] = []  # (frame, question, answer, kind)
        self.features: torch.Tensor | None = None  # packed stride-16 + head maps, (N, 27648) fp16
        self.features_s8: torch.Tensor | None = None  # stride-8 maps when the model uses them, (N, 10240)
        self.vision_grid, self.vision_stride8 = 4, False  # set from the model by load_features
        self._int_ids = (
            set(tokenizer.convert_tokens_to_ids([str(i) for i in range(256)])) if point_roles else set()
        )
        self._at_id = tokenizer.convert_tokens_to_ids("at")
        for si, shard in enumerate(self.shards):
            base = int(self.offsets[si])
            episodes = {e["id"]: e for e in shard.meta["episodes"]}
            for i, fr in enumerate(shard.meta["frames"]):
                ep = episodes[fr["episode"]]
                self.frames.append(
                    {
                        "instruction": fr.get("instruction", ep["instruction"]),
                        "plan": _plan_text(fr, grounded, gripper),
                        "action": shard.actions[i].tolist(),
                        # Unique across folders (each datagen folder numbers its shards from 0001).
                        "episode": f"{shard.path.parent.name}/{shard.path.stem}/{fr['episode']}",
                        # A frame whose replay could not be grounded is left out of grounded training.
                        "split": ep.get("split", "train")
                        if not grounded or "grounded_plan" in fr or ep.get("split") == fmt.QUESTION_SCENES
                        else "ungrounded",
                        "position": position_bins(fr["ee_xyz"], DEFAULT_POSITION_BOX)
                        if position_state and "ee_xyz" in fr
                        else None,
                        "family": ep.get("family", ""),
                        "step": fr["step"],
                        "gripper": fr.get("gripper"),
                        # DAgger frames record what the previous step really asked for (datagen).
                        "executed_gripper_command": fr.get("gripper_command", _UNRECORDED),
                    }
                )
                if cell_names:
                    self.frames[-1]["items"] = [
                        (name, xy[0], xy[1]) for name, xy in fr.get("points", {}).items() if name != GRIPPER
                    ]
            for q in shard.meta.get("vl", []):
                if q.get("kind") == "pointing" and not grounded:
                    continue
                self.vl.append((base + int(q["frame"]), q["question"], q["answer"], q.get("kind", "")))
                if locate and q.get("kind") == "pointing" and (lq := locate_question(q)) is not None:
                    self.vl.append((base + int(q["frame"]), lq["question"], lq["answer"], lq["kind"]))
        # The opening the previous step commanded: its label's gripper bin (the oracle's episodes
        # execute their labels, decoy and noise steps keep the gripper's), or what a DAgger frame
        # recorded as executed; None at an episode's start.
        for i, f in enumerate(self.frames):
            executed = f.pop("executed_gripper_command")
            if executed is not _UNRECORDED:
                f["gripper_command"] = executed
                reopens = executed is not None and executed < 0.5 and f["action"][7] > 127
                if drop_driven_reopens and reopens:
                    f["split"] = "driven-reopen"
                continue
            prev = self.frames[i - 1] if i > 0 else None
            same = prev is not None and prev["episode"] == f["episode"] and prev["step"] == f["step"] - 1
            f["gripper_command"] = prev["action"][7] / 255.0 if same else None
        needed = [k for k, on in (("gripper", gripper_state), ("position", position_state)) if on]
        if needed:
            missing = [
                f
                for f in self.frames
                if f["split"] != fmt.QUESTION_SCENES and any(f[k] is None for k in needed)
            ]
            for f in missing:
                f["split"] = "no-state"
            if missing and len(missing) == len(self.frames):
                raise ConfigError(
                    f"the prompt states the arm's {' and '.join(needed)} but no frame records it; add "
                    f"it with `rt2-cot datagen --out DIR --add-state` ({', '.join(map(str, folders))})"
                )
        # Every object and tile name seen in a frame, in a fixed order (a resumed run gets the same).
        self.cell_vocab = sorted({n for f in self.frames for n, _, _ in f.get("items", ())})
        keep = {i for i, f in enumerate(self.frames) if f["split"] in splits}
        self.robot_frames = np.array(sorted(keep), dtype=np.int64)
        # Question scenes (datagen --question-split) are asked about, never acted in.
        asked = keep | {i for i, f in enumerate(self.frames) if f["split"] == fmt.QUESTION_SCENES}
        self.vl = [v for v in self.vl if v[0] in asked]
        logger.info(
            f"data: {len(self.shards)} shards, {len(self.frames)} frames, "
            f"{len({f['episode'] for f in self.frames})} episodes, {len(self.vl)} vision-language examples"
        )

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    # -- frozen features, computed once and stored beside each shard --------------------------------
    def load_features(self, model) -> None:
        cfg = model.config
        self.vision_grid, self.vision_stride8 = cfg.vision_grid, cfg.vision_stride8
        # Filled shard by shard into one preallocated array, each shard's pixels dropped as soon as
        # its features are in: the peak stays near the features' own size (a torch.cat of per-shard
        # arrays on top of all the pixels needed ~2.5x that, and ran 7,445 episodes out of 24 GB).
        total = sum(shard.num_frames for shard in self.shards)
        filled: dict[str, np.ndarray] = {}
        start = 0
        for shard in self.shards:
            parts = {"features": shard_features(shard, model)}
            if self.vision_stride8:
                parts["features_s8"] = shard_stride8(shard, model)
            for name, arr in parts.items():
                if name not in filled:
                    filled[name] = np.empty((total, arr.shape[1]), arr.dtype)
                filled[name][start : start + len(arr)] = arr
            start += shard.num_frames
            shard.images = shard.images[:0].copy()  # pixels are no longer needed (a view kept them)
        self.features = torch.from_numpy(filled["features"])
        self.features_s8 = torch.from_numpy(filled["features_s8"]) if self.vision_stride8 else None

    def batch_features(self, frames: list[int]) -> torch.Tensor:
        assert self.features is not None, "call load_features(model) first"
        s8 = self.features_s8[frames] if self.vision_stride8 else None
        return cached_image_features(self.features[frames], s8, self.vision_grid)

    def cell_labels(self, frames: list[int]) -> torch.Tensor:
        """(B, grid*grid) index into `cell_vocab` of the one item whose image point lies in each cell
        (row-major, as the image tokens), -100 for cells with none or several."""
        from rt2_cot.data.grounding import image_cell

        g = self.vision_grid
        labels = torch.full((len(frames), g * g), -100, dtype=torch.long)
        index = {n: i for i, n in enumerate(self.cell_vocab)}
        for b, frame in enumerate(frames):
            count: dict[int, int] = {}
            for name, x, y in self.frames[frame].get("items", ()):
                cell = image_cell(x, y, g)
                count[cell] = count.get(cell, 0) + 1
                labels[b, cell] = index[name]
            for cell, n in count.items():
                if n > 1:
                    labels[b, cell] = -100
        return labels

    # -- examples ---------------------------------------------------------------------------------
    def _points_marked(self, target: list[int], roles: list[int], after_at: bool = True) -> list[int]:
        """POINT for the image coordinates of a text part when `point_roles` is on (else `roles`
        unchanged). In a plan those are the two integers after "at" ("... at 103 121"), not the digit
        of "the number 6": until session 16 that digit was marked too, so the pointer was trained to
        write it as a coordinate and every number tile's point lost its x/y pairing.
        `after_at=False` (a pointing answer, "103 121"): every integer."""
        if not self._int_ids:
            return roles
        point = [False] * len(target)
        for i, token in enumerate(target):
            if token not in self._int_ids:
                continue
            if not after_at:
                point[i] = True
            elif i > 0 and target[i - 1] == self._at_id:
                point[i] = True  # x
            elif i > 1 and point[i - 1] and target[i - 2] == self._at_id:
                point[i] = True  # y
        return [POINT if r == TEXT and i < len(target) and point[i] else r for i, r in enumerate(roles)]

    def phrasings(self, frame: int) -> tuple[str, ...]:
        """Every training phrasing of the frame's task (robot_io.sim.tasks.training_phrasings), its
        own instruction among them; worked out once per instruction."""
        from robot_io.sim.tasks import training_phrasings

        f = self.frames[frame]
        key = (f["family"], f["instruction"])
        if key not in self._phrasings:
            self._phrasings[key] = training_phrasings(*key) or (f["instruction"],)
        return self._phrasings[key]

    def robot_example(
        self,
        frame: int,
        plain: bool,
        plan_age: int = 0,
        instruction: str | None = None,
        rename: str | None = None,
    ) -> Example:
        """`plan_age` > 0: the plan written that many steps earlier in the episode (as plan reuse feeds
        it at inference), with this frame's image and action. `instruction`: another phrasing of the
        frame's task to prompt with (instruction augmentation); the plan and action stay the frame's.
        `rename`: the plan's object is called by this class word in the instruction and the plan
        (`rename_object`), and the plan is given: only the action is learned, from where the plan
        points and not from what it calls the object (left as it is where the plan locates none)."""
        f = self.frames[frame]
        if instruction is not None:
            f = {**f, "instruction": instruction}
        earlier = frame
        while plan_age > 0 and earlier > 0 and self.frames[earlier - 1]["episode"] == f["episode"]:
            earlier, plan_age = earlier - 1, plan_age - 1
        plan = self.frames[earlier]["plan"]
        if rename is not None and not plain and (renamed := rename_object(f["instruction"], plan, rename)):
            f, plan = {**f, "instruction": renamed[0]}, renamed[1]
            earlier = -1  # given, as a reused plan is
        gripper = f["gripper"] if self.gripper_state else None
        position = f["position"] if self.position_state else None
        motion = gripper_motion(gripper, f["gripper_command"]) if self.gripper_motion else None
        given: list[int] = []
        if plain:
            prompt, target = fmt.plain_prompt(f["instruction"]), fmt.plain_target(f["action"])
        elif earlier != frame:
            # A reused plan is given text, not something to learn to write: it joins the prompt.
            prompt, target = (
                fmt.cot_prompt(f["instruction"], gripper, position, motion),
                fmt.plain_target(f["action"]),
            )
            given = self.text(fmt.cot_target(plan, []).rstrip())
        else:
            prompt = fmt.cot_prompt(f["instruction"], gripper, position, motion)
            target = fmt.cot_target(plan, f["action"])
        t = self.text(target)
        return Example(
            frame,
            [BOS_TOKEN_ID, *self.text(prompt), *given],
            [*t, EOS_TOKEN_ID],
            self._points_marked(t, action_roles(t, 8)),
            "plain" if plain else "cot",
        )

    def vl_example(self, index: int) -> Example:
        frame, question, answer, kind = self.vl[index]
        t = self.text(fmt.vl_target(answer))
        roles = [TEXT] * (len(t) + 1)
        return Example(
            frame,
            [BOS_TOKEN_ID, *self.text(fmt.vl_prompt(question))],
            [*t, EOS_TOKEN_ID],
            self._points_marked(t, roles, after_at=kind == "locate")
            if kind in ("pointing", "locate")
            else roles,
            "vl",
        )

    def sample(
        self,
        rng: np.random.Generator,
        batch_size: int,
        vl_fraction: float,
        plain_fraction: float,
        stale_plan_fraction: float = 0.0,
        max_plan_age: int = 4,
        mix: list[float] | None = None,
        rephrase: float = 0.0,
        rename: float = 0.0,
        rename_words: tuple[str, ...] = RENAME_WORDS,
    ) -> Batch:
        """`mix`: the share of robot examples drawn from each data folder (in the order given); None
        draws uniformly over all frames, so folders weigh by their frame counts. `rephrase`: the share
        of robot examples prompted with a training phrasing of their task drawn at random (any of
        `phrasings`, the frame's own included) instead of the instruction the episode was written with.
        `rename`: the share of chain-of-thought robot examples whose object is renamed to one of
        `rename_words`, with the plan given (`robot_example(rename=...)`)."""
        examples = []
        groups = self._frames_by_folder() if mix else None
        if groups is not None:
            weights = np.array([w if len(g) else 0.0 for w, g in zip(mix, groups, strict=True)])
            weights /= weights.sum()
        for _ in range(batch_size):
            if self.vl and rng.random() < vl_fraction:
                examples.append(self.vl_example(int(rng.integers(len(self.vl)))))
            else:
                pool = self.robot_frames
                if groups is not None:
                    pool = groups[int(rng.choice(len(groups), p=weights))]
                frame = int(pool[rng.integers(len(pool))])
                age = int(rng.integers(1, max_plan_age + 1)) if rng.random() < stale_plan_fraction else 0
                instruction = None
                if rephrase and rng.random() < rephrase:
                    options = self.phrasings(frame)
                    instruction = options[int(rng.integers(len(options)))]
                plain = bool(rng.random() < plain_fraction)
                new_name = None
                if rename and not plain and rng.random() < rename:
                    new_name = rename_words[int(rng.integers(len(rename_words)))]
                examples.append(
                    self.robot_example(
                        frame, plain=plain, plan_age=age, instruction=instruction, rename=new_name
                    )
                )
        return self.collate(examples)

    def _frames_by_folder(self) -> list[np.ndarray]:
        """`robot_frames` split by data folder (recomputed when `robot_frames` is replaced)."""
        if self._by_folder is None or self._by_folder[0] is not self.robot_frames:
            folder = self.frame_folder[self.robot_frames]
            groups = [self.robot_frames[folder == k] for k in range(int(self.frame_folder.max()) + 1)]
            self._by_folder = (self.robot_frames, groups)
        return self._by_folder[1]

    def collate(self, examples: list[Example]) -> Batch:
        width = max(len(e.prompt) + len(e.target) for e in examples)
        ids = torch.full((len(examples), width), PAD_TOKEN_ID, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        roles = torch.full((len(examples), width), TEXT, dtype=torch.long)
        for b, e in enumerate(examples):
            seq = e.prompt + e.target
            ids[b, : len(seq)] = torch.tensor(seq)
            # Position p predicts token p+1: the last prompt token predicts the first target token.
            start = len(e.prompt) - 1
            labels[b, start : start + len(e.target)] = torch.tensor(e.target)
            roles[b, start : start + len(e.target)] = torch.tensor(e.roles)
        frames = [e.frame for e in examples]
        return Batch(
            self.batch_features(frames),
            ids,
            labels,
            roles,
            [e.kind for e in examples],
            self.cell_labels(frames) if self.cell_vocab else None,
        )

    def all_target_texts(self) -> list[str]:
        """Every string the model is trained to emit (to build its output vocabulary)."""
        texts = {fmt.cot_target(f["plan"], [0] * 8) for f in self.frames}
        texts |= {fmt.vl_target(a) for _, _, a, _ in self.vl}
        return sorted(texts)


# Bumped when cached features change meaning. v2 (session 6): BatchNorm on ImageNet statistics, as at
# inference; the unversioned caches before it were normalised by batch statistics (a skew between
# training and the control loop) and are ignored.
FEATURE_CACHE_VERSION = 2


def features_path(shard_path: Path) -> Path:
    return shard_path.with_name(f"{shard_path.stem}.features.v{FEATURE_CACHE_VERSION}.npy")


def shard_features(shard: fmt.Shard, model, batch_size: int = 64) -> np.ndarray:
    """(N, 27648) fp16 backbone features of a shard, from its cache file or computed and cached."""
    return _cached(
        shard,
        features_path(shard.path),
        "frozen image features",
        batch_size,
        lambda pixels: pack_maps(*model.vision.maps(pixels)),
    )


def stride8_path(shard_path: Path) -> Path:
    return shard_path.with_name(f"{shard_path.stem}.s8.v{FEATURE_CACHE_VERSION}.npy")


def shard_stride8(shard: fmt.Shard, model, batch_size: int = 64) -> np.ndarray:
    """(N, 10240) fp16 stride-8 maps of a shard (models with `vision_stride8`), cached like the rest."""
    return _cached(
        shard,
        stride8_path(shard.path),
        "frozen stride-8 maps",
        batch_size,
        lambda pixels: model.vision.stride8_map(pixels).flatten(1).half(),
    )


def _cached(shard: fmt.Shard, cache: Path, what: str, batch_size: int, encode) -> np.ndarray:
    """`encode(pixels) -> (B, D)` over a shard's frames, loaded from `cache` if it matches the shard,
    else computed in batches and written atomically."""
    if cache.exists():
        arr = np.load(cache, mmap_mode="r")  # copied once, into the caller's array
        if arr.shape[0] == shard.num_frames:
            return arr
    logger.info(f"computing {what} for {shard.path.name} ({shard.num_frames} frames)")
    with torch.no_grad():
        arr = torch.cat(
            [
                encode(pixels_from_uint8(shard.images[i : i + batch_size]))
                for i in range(0, shard.num_frames, batch_size)
            ]
        ).numpy()
    # Per-process temporary name: a training run and a `precompute_features` beside it may compute
    # the same shard at once (both finish; the second rename replaces the first with equal data).
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    tmp.rename(cache)
    return arr


def precompute_features(folder: Path, model) -> int:
    """Cache features for every complete shard in `folder` that lacks them (runs beside datagen)."""
    done = 0
    for path in fmt.shard_paths(folder):
        missing = not features_path(path).exists()
        missing_s8 = model.config.vision_stride8 and not stride8_path(path).exists()
        if missing or missing_s8:
            shard = fmt.read_shard(path)
            shard_features(shard, model)
            if model.config.vision_stride8:
                shard_stride8(shard, model)
            done += 1
    return done


def pack_maps(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """(B,112,8,8) + (B,1280,4,4) -> (B, 27648) fp16: 55 KB a frame instead of 178 KB combined."""
    return torch.cat([fine.flatten(1), coarse.flatten(1)], dim=1).half()


def cached_image_features(packed: torch.Tensor, s8: torch.Tensor | None, grid: int) -> torch.Tensor:
    """Cached frozen maps of B frames (`pack_maps` rows, and the stride-8 cache's rows for a stride-8
    model, else None) -> the model's image features (B, grid*grid, C), as its encoder combines them."""
    from rt2_cot.model.modeling_rt2_cot_mini import FrozenEfficientNetLite0

    maps = list(unpack_maps(packed))
    if s8 is not None:
        maps.insert(0, s8.float().view(len(packed), 40, 16, 16))
    return FrozenEfficientNetLite0.combine(maps, grid)


def unpack_maps(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = packed.shape[0]
    n_fine = 112 * 8 * 8
    fine = packed[:, :n_fine].float().view(b, 112, 8, 8)
    coarse = packed[:, n_fine:].float().view(b, 1280, 4, 4)
    return fine, coarse
