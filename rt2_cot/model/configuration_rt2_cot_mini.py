"""Configuration of rt2-cot-mini: a frozen ImageNet EfficientNet-Lite0 prefix + a MiniLM-L6 causal decoder.

Every default below is the built-in checkpoint's; the comments say why it was chosen.
"""

from __future__ import annotations

from transformers import PretrainedConfig

# [CLS] starts the text, [SEP] ends the answer: BERT's own specials, so the pretrained
# embeddings of both are reused and no vocabulary has to grow.
BOS_TOKEN_ID = 101
EOS_TOKEN_ID = 102
PAD_TOKEN_ID = 0


class Rt2CotMiniConfig(PretrainedConfig):
    model_type = "rt2_cot_mini"

    def __init__(
        self,
        # -- vision -------------------------------------------------------------------------
        image_size: int = 128,  # 128 px keeps an 8x8 stride-16 map: enough to localise, cheap to encode
        # The 8x8 stride-16 map is folded 2x2 into channels (space-to-depth) next to the 4x4 stride-32
        # head map: 16 prefix tokens instead of 64 halve the cost of every training step on 2 cores
        # while each token still knows which quarter of its cell holds what.
        vision_space_to_depth: int = 2,
        vision_grid: int = 4,  # tokens per side of the image prefix (image_size / 16 / space_to_depth)
        vision_feature_dim: int = 4 * 112 + 1280,  # folded stride-16 block-10 map + stride-32 head map
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
        bos_token_id: int = BOS_TOKEN_ID,
        eos_token_id: int = EOS_TOKEN_ID,
        pad_token_id: int = PAD_TOKEN_ID,
        **kwargs,
    ):
        self.image_size = image_size
        self.vision_space_to_depth = vision_space_to_depth
        self.vision_grid = vision_grid
        self.vision_feature_dim = vision_feature_dim
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout = hidden_dropout
        self.output_token_ids = list(output_token_ids) if output_token_ids is not None else []
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs
        )

    @property
    def num_image_tokens(self) -> int:
        return self.vision_grid * self.vision_grid
