"""rt2-cot-mini, the built-in model. Importing this package registers it with the transformers Auto
classes (AutoConfig, AutoModelForImageTextToText, AutoModelForVision2Seq if present, AutoProcessor)."""

from __future__ import annotations

import transformers
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from rt2_cot.model.configuration_rt2_cot_mini import Rt2CotMiniConfig
from rt2_cot.model.modeling_rt2_cot_mini import (
    Rt2CotMiniForConditionalGeneration,
    load_minilm_weights,
    minilm_dir,
)
from rt2_cot.model.processing_rt2_cot_mini import Rt2CotMiniProcessor, pixels_from_uint8, resize_image

__all__ = [
    "Rt2CotMiniConfig",
    "Rt2CotMiniForConditionalGeneration",
    "Rt2CotMiniProcessor",
    "load_minilm_weights",
    "load_tokenizer",
    "minilm_dir",
    "pixels_from_uint8",
    "resize_image",
]


def _register() -> None:
    try:
        AutoConfig.register(Rt2CotMiniConfig.model_type, Rt2CotMiniConfig)
    except ValueError:  # already registered (module reloaded)
        return
    AutoModelForImageTextToText.register(Rt2CotMiniConfig, Rt2CotMiniForConditionalGeneration)
    vision2seq = getattr(transformers, "AutoModelForVision2Seq", None)
    if vision2seq is not None:
        vision2seq.register(Rt2CotMiniConfig, Rt2CotMiniForConditionalGeneration)
    AutoProcessor.register(Rt2CotMiniConfig, Rt2CotMiniProcessor)


def load_tokenizer():
    """MiniLM-L6's uncased WordPiece tokenizer from its installed package (no hub access)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


_register()
