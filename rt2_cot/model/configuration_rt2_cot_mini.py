"""Configuration of rt2-cot-mini: a frozen ImageNet EfficientNet-Lite0 prefix + a MiniLM-L6 causal decoder.

Defaults are the first checkpoint's (v1) layout; the comments say why each was chosen. Every
checkpoint's config.json states all fields, so the current built-in one (64 image tokens with the
stride-8 map, expected-bin readout, the arm's state in the prompt; see its model card) loads as it
was trained.
"""

from __future__ import annotations

from transformers import PretrainedConfig

# [CLS] starts the text, [SEP] ends the answer: BERT's own specials, so the pretrained
# embeddings of both are reused and no vocabulary has to grow.
BOS_TOKEN_ID = 101
EOS_TOKEN_ID = 102
PAD_TOKEN_ID = 0


# robot_io.safety.SafetyLimits' default workspace box (metres, arm base frame), per axis (min, max).
DEFAULT_POSITION_BOX = ((0.15, 0.80), (-0.40, 0.40), (0.0, 0.45))

# The frozen EfficientNet-Lite0 maps at 128 px: (channels, side) from finest to coarsest.
STRIDE8_MAP, STRIDE16_MAP, HEAD_MAP = (40, 16), (112, 8), (1280, 4)


def local_window_dim(grid: int) -> int:
    """Channels of a token's local window: the stride-8 cells it covers plus one ring, and its
    stride-16 cells (Rt2CotMiniConfig.vision_local_window)."""
    (c8, side8), (c16, side16) = STRIDE8_MAP, STRIDE16_MAP
    return c8 * (side8 // grid + 2) ** 2 + c16 * max(1, side16 // grid) ** 2


def vision_feature_dim(grid: int, stride8: bool) -> int:
    """Channels per prefix token once each map is folded (or repeated) onto a `grid` x `grid` layout."""
    maps = ([STRIDE8_MAP] if stride8 else []) + [STRIDE16_MAP, HEAD_MAP]
    return sum(c * max(1, side // grid) ** 2 for c, side in maps)


class Rt2CotMiniConfig(PretrainedConfig):
    model_type = "rt2_cot_mini"

    def __init__(
        self,
        # -- vision -------------------------------------------------------------------------
        image_size: int = 128,  # 128 px: the 5-8 px objects of the tabletop stay visible, cheap to encode
        # Prefix tokens per side. Every frozen map is folded (space-to-depth) or repeated onto this grid,
        # so no information is lost either way; the grid only sets the decoder's sequence length.
        # 4 (16 tokens) was stop 1's choice for training speed; 8 (64 tokens) localises objects better.
        vision_grid: int = 4,
        # Add the stride-8 map (block 4, 40 channels, 16x16) to the stride-16 and stride-32 maps.
        # A probe on the frozen tokens finds objects to 10.8 units (of 256) with it, 16.9 without
        # (benchmarks/feature_probe.py): the 5-8 px objects are below the stride-16 grid.
        vision_stride8: bool = False,
        # Also give each token the stride-8 map around it (its own stride-8 cells plus one ring) and
        # its stride-16 cells, through their own LayerNorm and a linear map that starts at zero. These
        # few channels tell a tile's digit (a linear probe: 71% of 9 digits, benchmarks/tile_probe.py)
        # but are ~10% of a token's features and were lost in the projector (38%). Needs vision_stride8.
        vision_local_window: bool = False,
        # -- language (MiniLM-L6 / BERT geometry; must match the pretrained weights) ---------------
        vocab_size: int = 30522,
        hidden_size: int = 384,
        num_hidden_layers: int = 4,  # 4 of MiniLM's 6 layers: ~1/3 less decode time, little quality lost
        num_attention_heads: int = 12,
        intermediate_size: int = 1536,
        max_position_embeddings: int = 512,
        layer_norm_eps: float = 1e-12,
        hidden_dropout: float = 0.1,  # BERT's own; the data are small and repetitive
        # -- outputs ------------------------------------------------------------------------
        # The only tokens the model ever emits (plan words, answer words, 0..255, punctuation, EOS).
        # Logits are computed against these rows of the tied word embeddings only: 30x cheaper
        # per decoded token than the full 30,522-word layer.
        output_token_ids: list[int] | None = None,
        # How greedy decoding reads the six motion bins: "expected" (the softmax-expected bin) for
        # checkpoints trained with soft ordinal targets + L1 on the expected bin, "argmax" otherwise
        # (see rt2_cot.constrained). Terminate and gripper are always argmax.
        action_readout: str = "argmax",
        # Image coordinates from where the text attends in the image (PointerReadout in the model
        # file) added to the integers' logits; needs the vocabulary ids of "0".."255" in order.
        pointer_readout: bool = False,
        integer_token_ids: list[int] | None = None,
        # The scene items (object and tile names) the pointer can look for by name: a linear head on
        # the image tokens names what lies in each cell, and the text says which item it points at;
        # that item's map joins the pointer's attention (PointerReadout). Session 16: the head finds
        # the named number tile in 78% of two-tile scenes where the pointer found it in 35-40%.
        pointer_names: list[str] | None = None,
        # The output ids a plan may copy from the text before it (a pointer-generator, See et al. 2017;
        # CopyHead in the model file): at every text position a gate mixes the output softmax with an
        # attention over the earlier text's words. Session 19: asked to locate an unseen object the
        # model named it in 22 of 30 scenes, its plan in 1 of 30 ("pick up the blue bottle" -> "pick
        # up the blue can"). Words only: integers are never copied, so actions are unchanged by it.
        # Empty: no copy head.
        copy_token_ids: list[int] | None = None,
        # ... copying from the prompt (instruction, stated state, a given plan) only, never from the
        # text the model writes after it. Session 20: copying from the plan being written looped in
        # 44 of 722 episodes ("on on on ...", "pick plan : pick plan : ...").
        copy_from_prompt_only: bool = False,
        # ... and each prompt word at most once: a word already written is never copied again (it may
        # still be generated). Session 21: prompt-only copying still looped on one prompt word ("a
        # snack that grows on trees" -> "place on on on ...", "near the lemon ... near the lemon").
        copy_each_word_once: bool = False,
        # -- prompt ---------------------------------------------------------------------------
        # Trained with the arm's gripper opening stated after the instruction ("Gripper: 50",
        # prompts/templates.yaml `state`): backends then state it too. At 128 px from the front a
        # half-closed gripper looks open, and the shield closes in two steps (model card).
        gripper_in_prompt: bool = False,
        # ... followed by which way it is going ("Gripper: 50 closing"), from the opening the policy
        # last commanded: half-open while closing on an object and while releasing one look alike.
        gripper_motion_in_prompt: bool = False,
        # Trained with the end-effector position stated too ("Position: 120 88 30": 0..255 across
        # `position_box`, metres in the arm's base frame; default: the safety shield's workspace box).
        # From one front camera "too far" and "too high" look alike (model card); the arm knows.
        position_in_prompt: bool = False,
        position_box: list | None = None,
        bos_token_id: int = BOS_TOKEN_ID,
        eos_token_id: int = EOS_TOKEN_ID,
        pad_token_id: int = PAD_TOKEN_ID,
        **kwargs,
    ):
        self.image_size = image_size
        self.vision_grid = vision_grid
        self.vision_stride8 = bool(vision_stride8)
        self.vision_local_window = bool(vision_local_window)
        if self.vision_local_window and not (self.vision_stride8 and 16 % vision_grid == 0):
            raise ValueError("vision_local_window needs vision_stride8 and a grid that divides 16")
        # Derived, not free: stored in config.json for readers (older checkpoints also stored
        # `vision_space_to_depth`, now implied by the grid).
        kwargs.pop("vision_space_to_depth", None)
        kwargs.pop("vision_feature_dim", None)
        self.vision_feature_dim = vision_feature_dim(vision_grid, self.vision_stride8)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout = hidden_dropout
        self.output_token_ids = list(output_token_ids) if output_token_ids is not None else []
        self.action_readout = action_readout
        self.pointer_readout = bool(pointer_readout)
        self.integer_token_ids = list(integer_token_ids) if integer_token_ids is not None else []
        self.pointer_names = [str(n) for n in (pointer_names or [])]
        if self.pointer_names and not self.pointer_readout:
            raise ValueError("pointer_names are for the pointer readout: set pointer_readout too")
        self.copy_token_ids = [int(t) for t in (copy_token_ids or [])]
        if set(self.copy_token_ids) - set(self.output_token_ids or range(vocab_size)):
            raise ValueError("copy_token_ids must be output tokens (output_token_ids)")
        if set(self.copy_token_ids) & set(self.integer_token_ids):
            raise ValueError("copy_token_ids are words: integers (actions, points) are never copied")
        self.copy_from_prompt_only = bool(copy_from_prompt_only)
        self.copy_each_word_once = bool(copy_each_word_once)
        if self.copy_each_word_once and not self.copy_from_prompt_only:
            raise ValueError(
                "copy_each_word_once counts the words written after the prompt: set copy_from_prompt_only"
            )
        self.gripper_in_prompt = bool(gripper_in_prompt)
        self.gripper_motion_in_prompt = bool(gripper_motion_in_prompt)
        self.position_in_prompt = bool(position_in_prompt)
        self.position_box = [list(map(float, b)) for b in (position_box or DEFAULT_POSITION_BOX)]
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs
        )

    @property
    def num_image_tokens(self) -> int:
        return self.vision_grid * self.vision_grid
