"""Processor for rt2-cot-mini: images -> pixel_values at 128 px, text -> `[CLS] ...` WordPiece ids.

Training data go through the same `resize_image` so that a camera frame at inference is seen exactly
as the simulator frames were at training time (whole frame squashed to a square, no crop).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

from rt2_cot.model.configuration_rt2_cot_mini import BOS_TOKEN_ID

_PIXEL_MEAN, _PIXEL_STD = 127.0, 128.0


def resize_image(image: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """Any RGB image -> (size, size, 3) uint8. Area filter: sharp enough for 2-cm objects at 128 px."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.shape[:2] == (size, size):
            return np.ascontiguousarray(image[..., :3])
        image = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    image = image.convert("RGB")
    return np.asarray(image.resize((size, size), Image.BOX), dtype=np.uint8)


def pixels_from_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 normalised for EfficientNet-Lite."""
    # np.array copies: frames from a simulator or camera buffer may be read-only views.
    t = torch.from_numpy(np.array(images, dtype=np.uint8)) if isinstance(images, np.ndarray) else images
    return (t.permute(0, 3, 1, 2).float() - _PIXEL_MEAN) / _PIXEL_STD


class Rt2CotMiniProcessor(ProcessorMixin):
    """`processor(images=..., text=...)` -> BatchFeature(pixel_values, input_ids, attention_mask).

    Text is tokenised without BERT's [SEP] (that is the model's end-of-answer token) and starts with
    [CLS]. Batches are left-padded so that generation continues every row from its last token.
    """

    tokenizer_class = "AutoTokenizer"

    def __init__(self, tokenizer=None, image_size: int = 128, **kwargs) -> None:
        self.image_size = image_size
        super().__init__(tokenizer, **kwargs)

    def encode_text(self, text: str) -> list[int]:
        return [BOS_TOKEN_ID, *self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def __call__(
        self,
        images: np.ndarray | Image.Image | Sequence | None = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        data: dict = {}
        if images is not None:
            if isinstance(images, (np.ndarray, Image.Image)) and not (
                isinstance(images, np.ndarray) and images.ndim == 4
            ):
                images = [images]
            batch = np.stack([resize_image(im, self.image_size) for im in images])
            data["pixel_values"] = pixels_from_uint8(batch)
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            ids = [self.encode_text(t) for t in texts]
            width = max(len(i) for i in ids)
            pad = self.tokenizer.pad_token_id or 0
            data["input_ids"] = torch.tensor([[pad] * (width - len(i)) + i for i in ids], dtype=torch.long)
            data["attention_mask"] = torch.tensor(
                [[0] * (width - len(i)) + [1] * len(i) for i in ids], dtype=torch.long
            )
        return BatchFeature(data)

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, sequence, skip_special_tokens: bool = True, **kwargs) -> str:
        return self.tokenizer.decode(sequence, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]
