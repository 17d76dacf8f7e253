"""Co-fine-tuning rt2-cot-mini on robot steps + vision-language questions (`rt2-cot train`).

Resumable: `OUT/state.pt` holds model, optimiser and history; re-running the same command continues.
Progress goes to the log and `OUT/progress.jsonl`; the loss curve to `OUT/loss.png`; the final
transformers checkpoint (fp16, frozen backbone excluded) to `OUT/checkpoint/`.

Action targets (the part the pilot could not learn from plain cross-entropy): the six motion
dimensions get a Gaussian soft target over neighbouring bins plus an L1 loss on the expected bin,
so a prediction 3 bins off is rewarded over one 100 bins off; terminate and gripper stay exact.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from loguru import logger

from rt2_cot.data.dataset import POINT, RENAME_WORDS, TEXT, Batch, RobotData
from rt2_cot.data.grounding import image_cell
from rt2_cot.errors import ConfigError

MOTION_DIMS = (1, 2, 3, 4, 5, 6)  # dx dy dz droll dpitch dyaw


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=lambda: ["data/train"])
    # Share of robot examples from each folder of `data` (same order); empty: by frame count.
    data_mix: list[float] = field(default_factory=list)
    val_data: list[str] = field(default_factory=list)  # empty: hold out `val_episodes_fraction` of data
    val_episodes_fraction: float = 0.05
    init: str = "pretrained"  # "pretrained" (ImageNet + MiniLM) or "random" (ablation; vision stays ImageNet)
    # Warm start: a training run's directory (its state.pt, full precision) or an exported checkpoint
    # folder (fp16) whose weights and output vocabulary this run starts from, with a fresh optimizer
    # and schedule. For a next phase on new data; the run's own state.pt still wins when resuming.
    init_from: str | None = None
    use_vl: bool = True  # vision-language co-training (ablation: false)
    # Plans say where their objects are (rt2_cot.data.grounding), plus pointing questions.
    grounded_plan: bool = False
    ground_gripper: bool = False  # grounded plans also say where the gripper is (ECoT's gripper step)
    # Every pointing question is also asked in the plan's words: "locate the lemon" -> "the lemon at
    # 103 121" (rt2_cot.data.grounding.locate_question). Session 18: with question scenes the plan
    # found the unseen lemon (its point on it in 70 of 102 episodes) yet named a seen object ("pick
    # up the red can at 106 86"): a pointing answer never writes a name. Needs grounded_plan.
    locate_questions: bool = False
    # Image coordinates (grounded plans, pointing answers) trained like action bins: Gaussian soft
    # target + L1 on the expected value, instead of cross-entropy that treats 166 and 20 alike.
    soft_points: bool = False
    # A pointer readout (Rt2CotMiniConfig.pointer_readout): image coordinates from where the text
    # attends in the image, supervised directly too (`pointer_supervision`; coordinates are then
    # scored like `soft_points`). New parameters; a warm start from a run without one starts them fresh.
    pointer_readout: bool = False
    pointer_aux_weight: float = 1.0  # its direct role + point targets (pointer_supervision)
    # ... plus a pointer network's loss on where it looks: at an image coordinate, cross-entropy of
    # its attention against the image token whose cell holds the true point. The L1 on the attended
    # point costs the same for a point between two number tiles as for the wrong tile, so a pointer
    # unsure of the digit learns to hedge; this asks it to choose. 0: off.
    pointer_cell_weight: float = 0.0
    # Name what lies in each image cell: a linear head on the image tokens (the projector's output,
    # of which the pointer's keys are a linear map) is trained to name the object or tile whose
    # point falls in that cell, from the points datagen records. Session 13: the frozen features
    # name 71% of digits under a tile, session 12's image tokens 38% (benchmarks/tile_probe.py
    # --checkpoint), and questions that only the digit answers did not bring it back. The head is
    # for training only: exported checkpoints do not carry it. 0: off.
    cell_name_weight: float = 0.0
    # Keep that head in the model as the pointer's: it looks for an item by name, cell by cell
    # (Rt2CotMiniConfig.pointer_names, PointerReadout). Each coordinate's item is the one whose cell
    # holds its point (the cell-name labels), supervised at every coordinate. Needs pointer_readout
    # and cell_name_weight; a warm start's trained cell-name head (same data, same names) carries over.
    pointer_names: bool = False
    # A copy head (Rt2CotMiniConfig.copy_token_ids, CopyHead): every word of the output vocabulary can
    # also be written by pointing at it in the text before (the instruction, the plan so far). Session
    # 19: the plan wrote a seen name for an unseen object it could name when asked to locate it. New
    # parameters; a warm start from a model without one starts them fresh, its gate on "generate".
    copy_words: bool = False
    # ... with its own targets (Gulcehre et al. 2016's pointer softmax): at every word of a plan or an
    # answer the gate is told whether that word is in the text before it, and where it is the copy
    # attention is asked to look at it. Without them (session 20, 250 steps) the gate only closed:
    # the warm-started softmax already writes every training word, so copying never paid.
    copy_aux_weight: float = 1.0
    # ... the attention's targets training the head alone (on the decoder's outputs detached; the
    # plan's own likelihood still reaches the decoder through the mixture). Session 20: with all the
    # copy targets on the decoder, seen tasks fell from 89.2% to 80.4% with right plans and points.
    # The gate's stay on the decoder: only it can tell whether the next word is in the prompt
    # (session 21, all detached: the gate was right in 67-70% of words through step 300, the share
    # that are not in the prompt, while the attention found its words, loss 0.007).
    copy_attention_detach: bool = False
    # ... copying from the prompt only (Rt2CotMiniConfig.copy_from_prompt_only): session 20's copy
    # head also pointed at the plan it was writing and looped in 44 of 722 episodes.
    copy_from_prompt_only: bool = False
    # ... each prompt word at most once (Rt2CotMiniConfig.copy_each_word_once; needs the above): a
    # word already written is no copy target again, in training as in decoding. Session 21: copying
    # from the prompt still looped on one word ("place on on on ..." for "a snack that grows on trees").
    copy_each_word_once: bool = False
    # The cot prompt states the gripper's opening ("Instruction: ... Gripper: 50"), as datagen
    # records it (`rt2-cot datagen --add-state` for older shards); written into the checkpoint so
    # that every backend states it too.
    gripper_in_prompt: bool = False
    # ... followed by which way it is going ("Gripper: 50 closing"), from the previous step's
    # commanded opening (the previous frame's label); needs gripper_in_prompt.
    gripper_motion_in_prompt: bool = False
    # ... and the end-effector position (proprioception, as pi0 and Octo condition on): 0..255 over
    # the model config's position_box. Needs frames with `ee_xyz` (`rt2-cot datagen --add-state`).
    position_in_prompt: bool = False
    # DAgger data (`rt2-cot datagen --driver`): leave out frames where the model had just asked to
    # close and the oracle's label opens again. The oracle reopens when the fingers are not around
    # the object, a sub-centimetre judgement the model cannot make from a 128-px frame; in session
    # 10's DAgger data the label reopened 53% of such half-closed grasps (oracle episodes: 16%), and
    # a model trained on it learned to let go: picks with its own plan 85% -> 45%.
    drop_driven_reopens: bool = False
    num_hidden_layers: int = 4
    vision_grid: int = 4  # prefix tokens per side (see Rt2CotMiniConfig)
    vision_stride8: bool = False  # add the frozen stride-8 map to the prefix
    # Each token also gets its stride-8 neighbourhood through its own path (Rt2CotMiniConfig). New
    # parameters, zero at first; a warm start from a model without them starts them there.
    vision_local_window: bool = False
    steps: int = 4000
    # Wall-clock budget (minutes, 0 = none). The run ends at `steps` or at the budget, whichever comes
    # first, and the learning-rate schedule follows whichever is further along, so a run on a busy
    # machine still anneals properly and ends on time. Elapsed time survives resumption.
    max_minutes: float = 0.0
    batch_size: int = 32
    lr: float = 3e-4  # new parts: projector, output bias
    lr_pretrained: float = 1e-4  # MiniLM layers and embeddings: gentler, they already know language
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    vl_fraction: float = 0.25
    plain_fraction: float = 0.1
    stale_plan_fraction: float = 0.0  # robot examples whose plan is 1-4 steps old, as plan reuse feeds it
    # Instruction augmentation: the share of robot examples whose instruction is swapped for another
    # training phrasing of the same task (robot_io.sim.tasks.training_phrasings: the family's train
    # templates plus AUGMENT_PHRASINGS, never a held-out one). The plan and action stay the frame's.
    instruction_augment: float = 0.0
    # Renamed objects: the share of chain-of-thought robot examples whose plan's object is called by
    # another class word (`rename_words`: seen kinds and nouns no scene holds, never a held-out kind)
    # in the instruction and the plan, with the plan given, so only the action is learned: from where
    # the plan points, not from what it calls the object (dataset.rename_object). Session 20: plans
    # that named an unseen object ("the blue bottle") acted worse than ones that misnamed it as a seen
    # one ("the blue can"), 5 against 14 of 17.
    rename_fraction: float = 0.0
    rename_words: list[str] = field(default_factory=lambda: list(RENAME_WORDS))
    action_sigma_bins: float = 3.0
    action_aux_weight: float = 1.0
    # Written into the checkpoint: greedy decoding reads the motion bins at their expected value,
    # which the soft targets + L1 above train (rt2_cot.constrained). "argmax" for plain RT-2 readout.
    action_readout: str = "expected"
    hidden_dropout: float = 0.1
    log_every: int = 25
    eval_every: int = 250
    save_every: int = 250
    eval_batches: int = 8
    threads: int = 2
    seed: int = 0

    @classmethod
    def from_yaml(cls, path: Path) -> TrainConfig:
        """Fields from YAML. `base: other.yaml` (relative to this file) starts from another config, so
        an ablation states only what it changes and otherwise trains exactly like its base."""
        raw = cls._read(Path(path), seen=())
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"{path}: unknown keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}"
            )
        cfg = cls(**raw)
        if cfg.init not in ("pretrained", "random"):
            raise ConfigError(f"{path}: init must be 'pretrained' or 'random', got {cfg.init!r}")
        if cfg.data_mix and (
            len(cfg.data_mix) != len(cfg.data) or min(cfg.data_mix) < 0 or sum(cfg.data_mix) <= 0
        ):
            raise ConfigError(
                f"{path}: data_mix needs one non-negative share per data folder ({len(cfg.data)}), "
                f"got {cfg.data_mix}"
            )
        if not 0.0 <= cfg.rename_fraction <= 1.0 or (cfg.rename_fraction and not cfg.grounded_plan):
            raise ConfigError(
                f"{path}: rename_fraction is a share of examples, 0..1, of grounded plans (the action must"
                f" follow the plan's point); got {cfg.rename_fraction} with grounded_plan {cfg.grounded_plan}"
            )
        held_out = set(cfg.rename_words) & heldout_kinds()
        if held_out or not cfg.rename_words:
            raise ConfigError(
                f"{path}: rename_words must be non-empty and name no held-out kind (the unseen-object "
                f"evaluation's); got {sorted(held_out) or cfg.rename_words}"
            )
        if not 0.0 <= cfg.instruction_augment <= 1.0:
            raise ConfigError(
                f"{path}: instruction_augment is a share of examples, 0..1; got {cfg.instruction_augment}"
            )
        return cfg

    @staticmethod
    def _read(path: Path, seen: tuple) -> dict:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must be a mapping of TrainConfig fields")
        base = raw.pop("base", None)
        if base is None:
            return raw
        base_path = (path.parent / str(base)).resolve()
        if base_path in seen:
            raise ConfigError(f"{path}: `base` chain loops back to {base_path}")
        return {**TrainConfig._read(base_path, (*seen, base_path)), **raw}


# ---------------------------------------------------------------------------------------------
# Output vocabulary
# ---------------------------------------------------------------------------------------------
def build_output_vocabulary(tokenizer, texts: list[str]) -> list[int]:
    """Every token in `texts`, the 256 integers, the object/colour words of the whole simulator catalogue
    (held-out objects too, so unseen objects can be named) and [SEP] as end of answer."""
    words = {str(i) for i in range(256)} | {"plan", "action", ":", ".", "yes", "no"}
    try:
        from robot_io.sim import scene

        for name in scene.all_object_names(include_heldout=True):
            words.update(name.split())
        words.update(scene.COLOURS)
        words.update(scene.SYMBOLS)
        words.update(scene.NUMBERS)
    except ImportError:
        logger.warning("robot_io.sim not importable; output vocabulary from the data only")
    ids = {tokenizer.sep_token_id}
    for text in [*texts, *sorted(words)]:
        ids.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    return sorted(ids)


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------
class ActionTargets:
    """Maps vocabulary ids to output-subset columns and builds the soft action targets."""

    def __init__(self, output_ids: list[int], tokenizer, sigma: float) -> None:
        self.column = torch.full((max(output_ids) + 1,), -1, dtype=torch.long)
        self.column[torch.tensor(output_ids)] = torch.arange(len(output_ids))
        bin_ids = tokenizer.convert_tokens_to_ids([str(i) for i in range(256)])
        self.bin_columns = self.column[torch.tensor(bin_ids)]
        if bool((self.bin_columns < 0).any()):
            raise ValueError("output vocabulary lacks some of the integers 0..255")
        self.bin_of_column = torch.full((len(output_ids),), -1, dtype=torch.long)
        self.bin_of_column[self.bin_columns] = torch.arange(256)
        self.sigma = sigma

    def soft(self, bins: torch.Tensor) -> torch.Tensor:
        """(M,) true bins -> (M, 256) Gaussian target over neighbouring bins (normalised)."""
        d = torch.arange(256)[None, :] - bins[:, None]
        w = torch.exp(-0.5 * (d / self.sigma) ** 2)
        return w / w.sum(-1, keepdim=True)


def heldout_kinds() -> set[str]:
    """The object kinds only held-out scenes hold (robot_io.sim.scene.KINDS)."""
    from robot_io.sim.scene import KINDS

    return {name for name, kind in KINDS.items() if kind.heldout}


def prompt_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: each row's prompt, the positions up to its first labelled one (which reads the
    prompt's last token and predicts the first target token)."""
    first = (labels != -100).int().argmax(dim=1)
    return torch.arange(labels.shape[1], device=labels.device)[None, :] <= first[:, None]


def teacher_forced(model, batch: Batch) -> tuple[torch.Tensor, tuple | None, torch.Tensor, tuple | None]:
    """One pass over a batch: the decoder's text outputs (B, T, d), the pointer's keys (or None), the
    output logits (B, T, V_out), the copy head's mixture included if the model has one, and the copy
    source it read (or None)."""
    h, pointer_keys = model.hidden_states(batch.input_ids, image_features=batch.features)
    source = model.copy_source_for(h, batch.input_ids, prompt=prompt_positions(batch.labels))
    return h, pointer_keys, model.output_logits(h, pointer_keys, source), source


def compute_loss(model, batch: Batch, targets: ActionTargets, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    h, pointer_keys, logits, copy_source = teacher_forced(model, batch)
    sel = batch.labels != -100
    logits = logits[sel]  # (M, V_out)
    cols = targets.column[batch.labels[sel]]
    roles = batch.roles[sel]
    motion = torch.isin(roles, torch.tensor((*MOTION_DIMS, POINT)))
    logp = F.log_softmax(logits.float(), dim=-1)
    exact = -logp[~motion].gather(1, cols[~motion, None]).squeeze(1)
    is_text = roles[~motion] == TEXT
    parts = {"text_loss": float(exact.detach()[is_text].mean()) if bool(is_text.any()) else 0.0}
    loss_terms = [exact]
    if bool(motion.any()):
        true_bins = targets.bin_of_column[cols[motion]]
        bin_logp = logp[motion][:, targets.bin_columns]  # (Mm, 256), still normalised over all outputs
        soft = -(targets.soft(true_bins) * bin_logp).sum(-1)
        loss_terms.append(soft)
        probs = torch.softmax(logits[motion][:, targets.bin_columns].float(), dim=-1)
        expected = (probs * torch.arange(256.0)).sum(-1)
        aux = (expected - true_bins.float()).abs() / 127.0
        parts["action_soft_loss"] = float(soft.detach().mean())
        parts["action_l1_bins"] = float((expected.detach() - true_bins.float()).abs().mean())
    loss = torch.cat(loss_terms).mean()
    if bool(motion.any()):
        loss = loss + cfg.action_aux_weight * aux.mean()
    if getattr(model, "pointer", None) is not None:
        pointer_loss, pointer_parts = pointer_supervision(
            model, h, pointer_keys, batch, targets, cfg.pointer_cell_weight
        )
        loss = loss + cfg.pointer_aux_weight * pointer_loss
        parts.update(pointer_parts)
    if getattr(model, "copy", None) is not None:
        copy_loss, copy_parts = copy_supervision(
            model, h, batch, copy_source, detach_attention=cfg.copy_attention_detach
        )
        loss = loss + cfg.copy_aux_weight * copy_loss
        parts.update(copy_parts)
    head = cell_name_head(model)
    if head is not None and batch.cells is not None:
        known = batch.cells != -100
        if bool(known.any()):
            cell_logits = head(model.encode_image(features=batch.features))[known]
            cell_loss = F.cross_entropy(cell_logits.float(), batch.cells[known])
            loss = loss + cfg.cell_name_weight * cell_loss
            parts["cell_name_loss"] = float(cell_loss.detach())
            parts["cell_name_acc"] = float((cell_logits.argmax(-1) == batch.cells[known]).float().mean())
    parts["loss"] = float(loss.detach())
    return loss, parts


def cell_name_head(model):
    """The linear head that names what lies in each image cell: the pointer's (pointer_names) or the
    training-only one (cell_name_weight alone), or None."""
    pointer = getattr(model, "pointer", None)
    if pointer is not None and pointer.cell_names is not None:
        return pointer.cell_names
    return getattr(model, "cell_head", None)


def copy_supervision(
    model, h: torch.Tensor, batch: Batch, source: tuple | None = None, detach_attention: bool = False
) -> tuple[torch.Tensor, dict]:
    """The copy head's own targets at every word target (plans and answers; `roles` TEXT): the gate's
    binary cross-entropy against "this word is in the text it may copy from", and where it is, the
    negative log of the copy attention's weight on its positions (summed over them). `source`: the
    one `teacher_forced` read (else built here). `detach_attention`: the attention's targets train
    the head alone, on the decoder's outputs as they are (its source rebuilt from them)."""
    prompt = prompt_positions(batch.labels)
    if source is None:
        source = model.copy_source_for(h, batch.input_ids, prompt=prompt)
    if detach_attention:
        attended = h.detach()
        attn, usable = model.copy.attention(
            attended, model.copy_source_for(attended, batch.input_ids, prompt=prompt)
        )
    else:
        attn, usable = model.copy.attention(h, source)
    gate = model.copy.gate_of(h, usable)[..., 0].float()  # (B, T)
    words = (batch.labels != -100) & (batch.roles == TEXT) & usable.any(-1)
    match = usable & (batch.input_ids[:, None, :] == batch.labels[:, :, None])  # (B, T, S)
    present = match.any(-1) & words
    if not bool(words.any()):
        return h.new_zeros(()), {}
    gate_loss = F.binary_cross_entropy(gate[words], present[words].float())
    parts = {
        "copy_gate": float(gate.detach()[words].mean()),
        "copy_gate_acc": float(((gate.detach()[words] > 0.5) == present[words]).float().mean()),
    }
    loss = gate_loss
    if bool(present.any()):
        weight = (attn * match).sum(-1)[present].float()
        attn_loss = -torch.log(weight.clamp_min(1e-9)).mean()
        loss = loss + attn_loss
        parts["copy_attn_loss"] = float(attn_loss.detach())
    return loss, parts


def pointer_supervision(
    model, h, pointer_keys, batch: Batch, targets: ActionTargets, cell_weight: float = 0.0
) -> tuple[torch.Tensor, dict]:
    """Direct targets for the pointer readout, so it need not wait for the token loss to find it: its
    role (x, y or neither) at every scored position, and its attended point against the coordinate
    at image-coordinate positions (POINT roles, `soft_points`' data; pairs are x then y).
    Without them the gate closes before the point is any good (a trial run: the x/y roles fell
    from 0.018 to 0.011 in 250 steps while the attended point stayed 37 units off).
    With `cell_weight`, also the cross-entropy of its attention at both coordinates of a point
    against the image token whose cell holds it (TrainConfig.pointer_cell_weight)."""
    scored = batch.labels != -100
    is_point = scored & (batch.roles == POINT)
    axis = (torch.cumsum(is_point.long(), dim=1) - 1).clamp(min=0) % 2  # 0 = x, 1 = y
    role_target = torch.where(is_point, axis, torch.full_like(axis, 2))[scored]
    loss = F.cross_entropy(model.pointer.role(h[scored]).float(), role_target)
    parts = {"pointer_role_loss": float(loss.detach())}
    if bool(is_point.any()):
        keys, points, *where = pointer_keys
        attn = model.pointer.attention(h, keys, *where)  # (B, T, N)
        xy = attn @ points  # (B, T, 2)
        got = xy.gather(-1, axis[..., None]).squeeze(-1)[is_point]
        true = targets.bin_of_column[targets.column[batch.labels[is_point]]].float()
        err = (got - true).abs()
        loss = loss + err.mean() / 127.0
        parts["pointer_l1"] = float(err.detach().mean())
        if model.pointer.name_query is not None and batch.cells is not None:
            name_loss, hit = pointer_name_loss(model.pointer, h, batch, scored, is_point, axis, true)
            if name_loss is not None:
                loss = loss + name_loss
                parts["pointer_name_loss"], parts["pointer_name_acc"] = float(name_loss.detach()), hit
        if cell_weight > 0:
            cell_loss, hit = pointer_cell_loss(model.pointer, attn[is_point], true, is_point, axis)
            if cell_loss is not None:
                loss = loss + cell_weight * cell_loss
                parts["pointer_cell_loss"], parts["pointer_cell_acc"] = float(cell_loss.detach()), hit
    return loss, parts


def point_cells(grid: int, true: torch.Tensor, is_point, axis) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate positions (P of them, `true` their values) -> the index among them of each point's
    x (a point is an x position followed by the y position in the same row; positions without a
    partner are left out) and the image cell that holds the point, as the cell-name labels count it."""
    rows = is_point.nonzero()[:, 0]
    ax = axis[is_point]
    pair = (ax[:-1] == 0) & (ax[1:] == 1) & (rows[:-1] == rows[1:])  # x at k, y at k + 1
    xs = torch.nonzero(pair).squeeze(1)
    cells = [image_cell(x, y, grid) for x, y in zip(true[xs].tolist(), true[xs + 1].tolist(), strict=True)]
    return xs, torch.tensor(cells, dtype=torch.long)


def pointer_cell_loss(pointer, attn: torch.Tensor, true: torch.Tensor, is_point, axis):
    """Attention at each coordinate position (P, N) -> mean cross-entropy against the token whose
    cell holds that position's point, and how often the most-attended token is it."""
    xs, cell = point_cells(pointer.grid, true, is_point, axis)
    if not len(xs):
        return None, 0.0
    at = torch.cat([attn[xs], attn[xs + 1]])  # both coordinates look at the same token
    want = torch.cat([cell, cell])
    loss = F.nll_loss(torch.log(at.float().clamp(min=1e-8)), want)
    return loss, float((at.argmax(-1) == want).float().mean())


def pointer_name_loss(pointer, h, batch: Batch, scored, is_point, axis, true: torch.Tensor):
    """Cross-entropy of the pointer's `name_query` against which item each position points at: at
    both coordinates of a point, the item whose cell holds it (batch.cells; skipped where a cell holds
    none or several), "none" at every other scored position. Returns (loss, accuracy at points)."""
    none = pointer.name_query.out_features - 1
    want = torch.full_like(batch.labels, none)
    xs, cell = point_cells(pointer.grid, true, is_point, axis)
    where = is_point.nonzero()  # (P, 2): row, position
    if len(xs):
        rows = where[xs, 0]
        item = batch.cells[rows, cell]
        want[rows, where[xs, 1]] = item
        want[rows, where[xs + 1, 1]] = item
    logits = pointer.name_query(h[scored]).float()
    target = want[scored]
    if not bool((target != -100).any()):
        return None, 0.0
    loss = F.cross_entropy(logits, target, ignore_index=-100)
    at_points = (target != -100) & (target != none) & is_point[scored]
    if not bool(at_points.any()):
        return loss, 0.0
    return loss, float((logits[at_points].argmax(-1) == target[at_points]).float().mean())


# ---------------------------------------------------------------------------------------------
# Teacher-forced evaluation: is the model learning the actions, not only the words?
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, data: RobotData, targets: ActionTargets, cfg: TrainConfig, baseline: np.ndarray) -> dict:
    """Greedy next-token predictions under teacher forcing on validation robot steps (CoT format).

    Reports plan-token accuracy, per-dimension mean absolute bin error of dx/dy/dz and the same for
    the constant baseline (each dimension's most common training bin), and with `soft_points` the
    mean bin error of the plans' image coordinates (`val_point_mae`).
    """
    model.eval()
    rng = np.random.default_rng(1234)
    frames = data.robot_frames
    pick = rng.choice(frames, size=min(len(frames), cfg.eval_batches * cfg.batch_size), replace=False)
    plan_hits = plan_total = 0
    err, base_err, within, point_err = [], [], [], []
    for i in range(0, len(pick), cfg.batch_size):
        batch = data.collate([data.robot_example(int(f), plain=False) for f in pick[i : i + cfg.batch_size]])
        sel = batch.labels != -100
        pred_cols = teacher_forced(model, batch)[2][sel].argmax(-1)
        true_cols = targets.column[batch.labels[sel]]
        roles = batch.roles[sel]
        text = roles == TEXT
        plan_hits += int((pred_cols[text] == true_cols[text]).sum())
        plan_total += int(text.sum())
        for dim in (1, 2, 3):
            m = roles == dim
            pb = _predicted_bins(targets, pred_cols[m])
            tb = targets.bin_of_column[true_cols[m]].float()
            err.append((pb - tb).abs())
            base_err.append((baseline[dim] - tb).abs())
            within.append(((pb - tb).abs() <= 8).float())
        m = roles == POINT  # image coordinates of grounded plans (with `soft_points`' roles)
        if bool(m.any()):
            pb = _predicted_bins(targets, pred_cols[m])
            point_err.append((pb - targets.bin_of_column[true_cols[m]].float()).abs())
    first = _first_frame_point_mae(model, data, targets, cfg, rng) if point_err else None
    model.train()
    points = {"val_point_mae": float(torch.cat(point_err).mean())} if point_err else {}
    if first is not None:
        points["val_first_frame_point_mae"] = first
    return {
        "val_text_token_acc": plan_hits / max(plan_total, 1),
        "val_xyz_bin_mae": float(torch.cat(err).mean()),
        "baseline_xyz_bin_mae": float(torch.cat(base_err).mean()),
        "val_xyz_within8": float(torch.cat(within).mean()),
        **points,
    }


def _predicted_bins(targets: ActionTargets, pred_cols: torch.Tensor) -> torch.Tensor:
    """Greedy output columns -> their integers 0..255; a non-integer where an integer belongs counts
    as 128 (no motion, the image's centre)."""
    bins = targets.bin_of_column[pred_cols].float()
    bins[bins < 0] = 128.0
    return bins


def _first_frame_point_mae(
    model, data: RobotData, targets: ActionTargets, cfg: TrainConfig, rng
) -> float | None:
    """The plan's image coordinates on validation frames where an episode starts (teacher forced): the
    frame every closed-loop episode writes its first plan on, with no arm motion to copy."""
    frames = np.array([f for f in data.robot_frames if data.frames[int(f)]["step"] == 0])
    if not len(frames):
        return None
    pick = rng.choice(frames, size=min(len(frames), cfg.eval_batches * cfg.batch_size // 2), replace=False)
    errs = []
    for i in range(0, len(pick), cfg.batch_size):
        batch = data.collate([data.robot_example(int(f), plain=False) for f in pick[i : i + cfg.batch_size]])
        sel = (batch.labels != -100) & (batch.roles == POINT)
        pred = _predicted_bins(targets, teacher_forced(model, batch)[2][sel].argmax(-1))
        errs.append((pred - targets.bin_of_column[targets.column[batch.labels[sel]]].float()).abs())
    errs = torch.cat(errs)
    return float(errs.mean()) if len(errs) else None


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def integer_token_ids(tokenizer) -> list[int]:
    """Vocabulary ids of "0".."255" in numeric order (single WordPiece tokens in MiniLM's vocabulary)."""
    return tokenizer.convert_tokens_to_ids([str(i) for i in range(256)])


def copyable_token_ids(tokenizer, output_ids: list[int]) -> list[int]:
    """The output tokens the copy head may write: words and word pieces ("bottle", "##s"), never an
    integer, punctuation or a special token."""
    tokens = tokenizer.convert_ids_to_tokens(list(output_ids))
    return [t for t, tok in zip(output_ids, tokens, strict=True) if tok.removeprefix("##").isalpha()]


def build_model(cfg: TrainConfig, output_ids: list[int], pointer_names: list[str] | None = None):
    from rt2_cot.model import Rt2CotMiniConfig, Rt2CotMiniForConditionalGeneration, load_tokenizer

    config = Rt2CotMiniConfig(
        num_hidden_layers=cfg.num_hidden_layers,
        vision_grid=cfg.vision_grid,
        vision_stride8=cfg.vision_stride8,
        vision_local_window=cfg.vision_local_window,
        action_readout=cfg.action_readout,
        gripper_in_prompt=cfg.gripper_in_prompt,
        gripper_motion_in_prompt=cfg.gripper_motion_in_prompt,
        position_in_prompt=cfg.position_in_prompt,
        pointer_readout=cfg.pointer_readout,
        integer_token_ids=integer_token_ids(load_tokenizer()) if cfg.pointer_readout else None,
        pointer_names=pointer_names if cfg.pointer_names else None,
        copy_token_ids=copyable_token_ids(load_tokenizer(), output_ids) if cfg.copy_words else None,
        copy_from_prompt_only=cfg.copy_from_prompt_only,
        copy_each_word_once=cfg.copy_each_word_once,
        output_token_ids=output_ids,
        hidden_dropout=cfg.hidden_dropout,
    )
    model = Rt2CotMiniForConditionalGeneration(config)
    model.load_pretrained_parts(language=cfg.init == "pretrained")
    return model


def warm_start_state(cfg: TrainConfig) -> dict:
    """The weights, output vocabulary and step that `init_from` names: a training run's directory (its
    state.pt, full precision) or an exported checkpoint folder (config.json + model.safetensors, fp16,
    e.g. checkpoints/rt2-cot-mini: the committed model can start the next phase without its run)."""
    folder = Path(cfg.init_from)
    path = folder / "state.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=False)
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        from rt2_cot.model import Rt2CotMiniConfig

        config = Rt2CotMiniConfig.from_pretrained(str(folder))
        weights = load_file(str(folder / "model.safetensors"))
        return {
            "model": {k: v.float() for k, v in weights.items() if not k.startswith("vision.")},
            "output_ids": list(config.output_token_ids),
            "step": 0,
        }
    raise ConfigError(
        f"init_from: {folder} has neither state.pt nor config.json + model.safetensors (name a training "
        "run's --out directory or an exported checkpoint folder)"
    )


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    new, pretrained, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or name.startswith("vision."):
            continue
        if p.ndim < 2 or "norm" in name:
            no_decay.append(p)
        elif name.startswith(("projector.", "pointer.", "copy.", "cell_head.")) or cfg.init == "random":
            new.append(p)
        else:
            pretrained.append(p)
    return [
        {"params": new, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {
            "params": pretrained,
            "lr": cfg.lr_pretrained,
            "weight_decay": cfg.weight_decay,
            "base_lr": cfg.lr_pretrained,
        },
        {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0, "base_lr": cfg.lr},
    ]


def run_progress(step: int, elapsed_s: float, cfg: TrainConfig) -> float:
    """Fraction of the run done: by steps, or by the wall-clock budget if that is further along."""
    p = step / max(1, cfg.steps)
    if cfg.max_minutes > 0:
        p = max(p, elapsed_s / (60.0 * cfg.max_minutes))
    return p


def lr_factor(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from 1 to 0.05 over the rest of the run."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    warm = cfg.warmup_steps / max(1, cfg.steps)
    frac = (progress - warm) / max(1e-6, 1 - warm)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


def split_validation(data: RobotData, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train frames, validation frames): whole episodes, chosen by a hash of the episode's name.

    The choice of an episode does not depend on which other folders a run loads, so the phases of a
    warm-started chain (`init_from`) hold out the same episodes of the data they share. (Before
    session 6 a random draw over the loaded episodes was used: phase 1 loaded data/train and
    data/shield, phases 2-4 data/shield alone, so their validation episodes had been trained on in
    phase 1. Their `val_point_mae`, ~10 bins a coordinate, was memorised scenes; fresh scenes gave
    37 / 18.)
    """
    import hashlib

    episodes = sorted({data.frames[i]["episode"] for i in data.robot_frames})
    if len(episodes) < 2:
        return data.robot_frames, data.robot_frames

    def u(name: str) -> float:  # uniform in [0, 1), fixed per (seed, episode)
        return int(hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()[:12], 16) / 16**12

    score = {e: u(e) for e in episodes}
    val_eps = {e for e in episodes if score[e] < fraction} or {min(episodes, key=score.get)}
    if len(val_eps) == len(episodes):
        val_eps.discard(max(episodes, key=score.get))
    is_val = np.array([data.frames[i]["episode"] in val_eps for i in data.robot_frames])
    return data.robot_frames[~is_val], data.robot_frames[is_val]


def train(cfg: TrainConfig, out: Path) -> dict:
    from rt2_cot.model import load_tokenizer

    if cfg.gripper_motion_in_prompt and not cfg.gripper_in_prompt:
        raise ConfigError(
            "gripper_motion_in_prompt states which way the gripper goes after its opening: set gripper_in_prompt too"
        )
    if cfg.locate_questions and not (cfg.grounded_plan and cfg.use_vl):
        raise ConfigError(
            "locate_questions asks pointing questions in a grounded plan's words: set grounded_plan and use_vl"
        )
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    tokenizer = load_tokenizer()

    def robot_data(folders: list[str]) -> RobotData:
        return RobotData(
            [Path(p) for p in folders],
            tokenizer,
            grounded=cfg.grounded_plan,
            gripper=cfg.ground_gripper,
            point_roles=cfg.soft_points or cfg.pointer_readout,  # the pointer is supervised on them
            gripper_state=cfg.gripper_in_prompt,
            position_state=cfg.position_in_prompt,
            gripper_motion=cfg.gripper_motion_in_prompt,
            drop_driven_reopens=cfg.drop_driven_reopens,
            cell_names=cfg.cell_name_weight > 0,
            locate=cfg.locate_questions,
        )

    data = robot_data(cfg.data)
    if not cfg.use_vl:
        data.vl = []
    state_path = out / "state.pt"
    state = torch.load(state_path, map_location="cpu", weights_only=False) if state_path.exists() else None
    warm = warm_start_state(cfg) if state is None and cfg.init_from else None
    if state:
        output_ids = state["output_ids"]
    elif warm:
        output_ids = warm["output_ids"]
        uncovered = set(build_output_vocabulary(tokenizer, data.all_target_texts())) - set(output_ids)
        if uncovered:
            raise ConfigError(
                f"init_from {cfg.init_from}: its output vocabulary lacks {len(uncovered)} token(s) "
                f"this data needs ({tokenizer.convert_ids_to_tokens(sorted(uncovered)[:10])})"
            )
    else:
        output_ids = build_output_vocabulary(tokenizer, data.all_target_texts())
    if cfg.pointer_names and not (cfg.pointer_readout and cfg.cell_name_weight > 0):
        raise ConfigError(
            "pointer_names gives the pointer the cell-name head: set pointer_readout and cell_name_weight"
        )
    if cfg.cell_name_weight > 0 and not data.cell_vocab:
        raise ConfigError("cell_name_weight needs frames that record points (datagen since session 5)")
    if state and cfg.pointer_names and state.get("pointer_names") != data.cell_vocab:
        raise ConfigError(
            f"{state_path} was trained with other item names than this data's: start a new --out"
        )
    model = build_model(cfg, output_ids, data.cell_vocab)
    if warm:
        if cfg.pointer_names and "cell_head.weight" in warm["model"]:
            if warm["model"]["cell_head.weight"].shape[0] != len(data.cell_vocab):
                raise ConfigError(
                    f"init_from {cfg.init_from}: its cell-name head names other items than this data's"
                )
            for k in ("weight", "bias"):  # the trained head becomes the pointer's
                warm["model"][f"pointer.cell_names.{k}"] = warm["model"].pop(f"cell_head.{k}")
        try:
            missing, unexpected = model.load_state_dict(warm["model"], strict=False)
            missing = [k for k in missing if not k.startswith("vision.")]  # frozen, loaded from its package
            unexpected = [k for k in unexpected if not k.startswith("cell_head.")]  # a training aid
            if cfg.pointer_readout and not any(k.startswith("pointer.") for k in warm["model"]):
                logger.info(f"init_from {cfg.init_from} has no pointer readout: it starts fresh")
                missing = [k for k in missing if not k.startswith("pointer.")]
            if cfg.pointer_names and not any(k.startswith("pointer.name_query") for k in warm["model"]):
                logger.info(f"init_from {cfg.init_from} does not point by name: the name query starts fresh")
                missing = [k for k in missing if not k.startswith(("pointer.name_", "pointer.cell_names"))]
            if cfg.vision_local_window and not any(k.startswith("projector.local") for k in warm["model"]):
                logger.info(f"init_from {cfg.init_from} has no local window: its path starts at zero")
                missing = [k for k in missing if not k.startswith("projector.local")]
            if cfg.copy_words and not any(k.startswith("copy.") for k in warm["model"]):
                logger.info(f"init_from {cfg.init_from} has no copy head: it starts fresh, generating")
                missing = [k for k in missing if not k.startswith("copy.")]
            if missing or unexpected:
                raise RuntimeError(f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        except RuntimeError as exc:
            raise ConfigError(
                f"init_from {cfg.init_from} does not fit this config's model (check num_hidden_layers "
                f"and vision_*): {str(exc)[:300]}"
            ) from None
        logger.info(f"warm start from {cfg.init_from} (its step {warm['step']})")
    if cfg.cell_name_weight > 0 and not cfg.pointer_names:
        model.cell_head = torch.nn.Linear(model.config.hidden_size, len(data.cell_vocab))
        logger.info(f"cell names: {len(data.cell_vocab)} object and tile names")
    data.load_features(model)
    if cfg.val_data:
        val = robot_data(cfg.val_data)
        val.load_features(model)
    else:
        train_frames, val_frames = split_validation(data, cfg.val_episodes_fraction, cfg.seed)
        val = copy.copy(data)
        val.robot_frames = val_frames
        data.robot_frames = train_frames
    targets = ActionTargets(output_ids, tokenizer, cfg.action_sigma_bins)
    actions = np.array([data.frames[i]["action"] for i in data.robot_frames])
    baseline = np.array(
        [np.bincount(actions[:, d], minlength=256).argmax() for d in range(8)], dtype=np.float32
    )
    logger.info(f"constant-bin baseline (most common bin per dimension): {baseline.astype(int).tolist()}")

    optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=(0.9, 0.98))
    history: list[dict] = []
    step, elapsed_before = 0, 0.0
    if state:
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        history, step = state["history"], state["step"]
        elapsed_before = state.get("elapsed_s", 0.0)
        logger.info(f"resumed from {state_path} at step {step} ({elapsed_before / 60:.1f} min trained)")
    n_trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    logger.info(f"{n_trainable / 1e6:.1f}M trainable parameters, {len(output_ids)} output tokens")

    model.train()
    t_start, seen = time.time(), 0
    progress = (out / "progress.jsonl").open("a")

    def elapsed() -> float:
        return elapsed_before + time.time() - t_start

    while run_progress(step, elapsed(), cfg) < 1.0:
        rng = np.random.default_rng([cfg.seed, step])  # deterministic per step, so resuming is exact
        batch = data.sample(
            rng,
            cfg.batch_size,
            cfg.vl_fraction if data.vl else 0.0,
            cfg.plain_fraction,
            cfg.stale_plan_fraction,
            mix=cfg.data_mix or None,
            rephrase=cfg.instruction_augment,
            rename=cfg.rename_fraction,
            rename_words=tuple(cfg.rename_words),
        )
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, run_progress(step, elapsed(), cfg), cfg)
        loss, parts = compute_loss(model, batch, targets, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip
        )
        optimizer.step()
        step += 1
        seen += cfg.batch_size
        record = {"step": step, **parts}
        finished = run_progress(step, elapsed(), cfg) >= 1.0
        if step % cfg.eval_every == 0 or finished:
            record.update(evaluate(model, val, targets, cfg, baseline))
        history.append(record)
        if step % cfg.log_every == 0 or "val_xyz_bin_mae" in record:
            rate = seen / (time.time() - t_start)
            left = 1.0 - run_progress(step, elapsed(), cfg)
            eta_min = (
                left
                * (cfg.steps * cfg.batch_size / rate if not cfg.max_minutes else cfg.max_minutes * 60)
                / 60
            )
            record.update({"samples_per_s": round(rate, 2), "elapsed_s": round(elapsed(), 1)})
            logger.info(
                f"step {step}/{cfg.steps} "
                + " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step" and isinstance(v, float))
                + f" | {rate:.1f} samples/s, ETA {eta_min:.0f} min"
            )
            progress.write(json.dumps(record) + "\n")
            progress.flush()
        if step % cfg.save_every == 0 or finished:
            save_state(state_path, model, optimizer, history, step, output_ids, elapsed())
            plot_history(history, out / "loss.png")
    progress.close()
    export_checkpoint(model, out / "checkpoint")
    plot_history(history, out / "loss.png")
    losses = [h["loss"] for h in history]
    k = max(1, min(10, len(losses) // 4))
    summary = {
        "steps": step,
        "first_loss": float(np.mean(losses[:k])) if losses else None,
        "last_loss": float(np.mean(losses[-k:])) if losses else None,
        "final": history[-1] if history else {},
        "wall_s": round(elapsed(), 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def save_state(
    path: Path, model, optimizer, history: list[dict], step: int, output_ids: list[int], elapsed_s: float
) -> None:
    trainable = {k: v for k, v in model.state_dict().items() if not k.startswith("vision.")}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "model": trainable,
            "optimizer": optimizer.state_dict(),
            "history": history,
            "step": step,
            "output_ids": output_ids,
            "pointer_names": list(model.config.pointer_names),
            "elapsed_s": elapsed_s,
        },
        tmp,
    )
    tmp.rename(path)


def export_run(run_dir: Path, folder: Path) -> dict:
    """Export a run's latest `state.pt` as a checkpoint, without training (evaluate a run mid-way;
    the run itself is untouched and resumes as before)."""
    state_path = Path(run_dir) / "state.pt"
    cfg_path = Path(run_dir) / "config.yaml"
    if not state_path.exists() or not cfg_path.exists():
        raise ConfigError(f"{run_dir} has no state.pt and config.yaml: not a training run folder")
    cfg = TrainConfig(**yaml.safe_load(cfg_path.read_text()))
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    model = build_model(cfg, state["output_ids"], state.get("pointer_names"))
    model.load_state_dict(state["model"], strict=False)
    export_checkpoint(model, Path(folder))
    return {"run": str(run_dir), "step": int(state["step"]), "checkpoint": str(folder)}


def export_checkpoint(model, folder: Path) -> None:
    """fp16 transformers checkpoint + processor, loadable with the Auto classes after `import rt2_cot.model`."""
    from rt2_cot.model import Rt2CotMiniProcessor, load_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(model).half().eval()
    if getattr(half, "cell_head", None) is not None:
        del half.cell_head  # a training aid (TrainConfig.cell_name_weight), not part of the model
    half.save_pretrained(folder)
    Rt2CotMiniProcessor(load_tokenizer()).save_pretrained(folder)
    logger.info(f"checkpoint written to {folder}")


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    steps = [h["step"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))

    def smooth(key: str) -> tuple[list[int], np.ndarray]:
        xs = [h["step"] for h in history if key in h]
        ys = np.array([h[key] for h in history if key in h])
        k = max(1, len(ys) // 50)
        return xs[k - 1 :], np.convolve(ys, np.ones(k) / k, mode="valid")

    for key in ("loss", "text_loss", "action_soft_loss"):
        xs, ys = smooth(key)
        if len(ys):
            ax1.plot(xs, ys, label=key)
    ax1.set_xlabel("step")
    ax1.set_yscale("log")
    ax1.set_title("training loss (moving average)")
    ax1.legend()
    ev = [h for h in history if "val_xyz_bin_mae" in h]
    if ev:
        for key, style, label in (
            ("val_xyz_bin_mae", "o-", "model dx/dy/dz |bin error|"),
            ("baseline_xyz_bin_mae", "--", "constant-bin baseline"),
            ("val_first_frame_point_mae", "s-", "plan's point on first frames |error|"),
        ):
            points = [(h["step"], h[key]) for h in ev if key in h]
            if points:
                ax2.plot(*zip(*points, strict=True), style, label=label)
        ax2.set_xlabel("step")
        ax2.set_title("validation error (teacher forced)")
        ax2.legend()
    ax2.set_xlim(0, max(steps))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
