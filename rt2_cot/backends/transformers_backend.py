"""Any local transformers vision-language checkpoint as a Backend, with constrained streaming.

Loads a checkpoint folder with AutoProcessor and the image-text-to-text auto class (falling back to
the older vision2seq class and then to a causal LM), renders the prompt through the processor so
each model family gets its own image-token convention (PaliGemma: `<image>`s + BOS + prompt + "\\n";
LLaVA-style: the processor's chat template, else `<image>\\n` + prompt), and generates in a worker
thread under `rt2_cot.constrained`'s grammar, yielding text through a TextIteratorStreamer.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from rt2_cot.backends.base import GenerationRequest, request_prompt
from rt2_cot.errors import BackendError, ModelLoadError

_NOT_A_CHECKPOINT = (
    "{path} is not a transformers checkpoint folder (no config.json); "
    "pass --model builtin, a folder saved with save_pretrained, or an http(s):// server URL"
)


def check_checkpoint_folder(path: str | Path) -> Path:
    """Cheap checks before importing torch: the folder exists and holds a config.json."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelLoadError(f"model folder not found: {folder}")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelLoadError(_NOT_A_CHECKPOINT.format(path=folder))
    return folder


def import_builtin_model() -> None:
    """Import `rt2_cot.model` so the built-in model registers its classes with the Auto classes.

    Best effort: the module may not exist yet; any other import failure is the built-in model's bug
    and should be visible, but must not stop third-party checkpoints from loading.
    """
    try:
        importlib.import_module("rt2_cot.model")
    except ModuleNotFoundError as exc:
        if exc.name not in ("rt2_cot.model",):
            logger.warning("rt2_cot.model could not be imported ({}); the built-in model is unavailable", exc)
    except Exception as exc:
        logger.warning("rt2_cot.model failed to import ({}); the built-in model is unavailable", exc)


class TransformersBackend:
    """Backend for a local checkpoint folder. Thread-safe: one generation at a time."""

    def __init__(
        self,
        path: str | Path,
        trust_remote_code: bool = False,
        device: str = "cpu",
        dtype: Any = "auto",
        action_tokens: str = "auto",
        max_plan_tokens: int | None = None,
        constrain: bool = True,
        action_readout: str | None = None,
    ) -> None:
        self.path = check_checkpoint_folder(path)
        self.name = f"transformers:{self.path.name}"
        self.device = device
        self.constrain = constrain
        import_builtin_model()

        import torch
        import transformers

        from rt2_cot.constrained import DEFAULT_MAX_PLAN_TOKENS
        from rt2_cot.token_map import detect_token_map

        self.max_plan_tokens = max_plan_tokens or DEFAULT_MAX_PLAN_TOKENS
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)
        try:
            self.config = transformers.AutoConfig.from_pretrained(
                self.path, trust_remote_code=trust_remote_code
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot read the model config in {self.path}: {_first_line(exc)}") from exc
        self.processor = self._load_processor(transformers, trust_remote_code)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.model = self._load_model(transformers, trust_remote_code, dtype).to(device).eval()
        self.model_type = getattr(self.config, "model_type", "")
        self.token_map = detect_token_map(self.tokenizer, action_tokens)
        from rt2_cot.constrained import readout_dims

        self.expected_dims = readout_dims(self.config, action_readout)
        self._call_params = _parameters(self.processor)
        self._lock = threading.Lock()
        logger.debug(
            "loaded {} ({}), {} action tokens, {:.1f}M parameters",
            self.path,
            type(self.model).__name__,
            self.token_map.style,
            sum(p.numel() for p in self.model.parameters()) / 1e6,
        )

    # -- loading ---------------------------------------------------------------------------
    def _load_processor(self, transformers, trust_remote_code: bool):
        try:
            return transformers.AutoProcessor.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        except Exception as exc:
            try:  # a text-only checkpoint has a tokenizer and no processor
                return transformers.AutoTokenizer.from_pretrained(
                    self.path, trust_remote_code=trust_remote_code
                )
            except Exception:
                raise ModelLoadError(
                    f"cannot load a processor or tokenizer from {self.path}: {_first_line(exc)}"
                ) from exc

    def _load_model(self, transformers, trust_remote_code: bool, dtype):
        errors = []
        for auto_name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM"):
            auto = getattr(transformers, auto_name, None)
            if auto is None:
                continue
            try:
                return auto.from_pretrained(self.path, trust_remote_code=trust_remote_code, dtype=dtype)
            except ValueError as exc:  # "Unrecognized configuration class ... for this kind of AutoModel"
                errors.append(f"{auto_name}: {_first_line(exc)}")
            except (OSError, RuntimeError) as exc:
                raise ModelLoadError(f"cannot load the weights in {self.path}: {_first_line(exc)}") from exc
        hint = "" if trust_remote_code else " (if it needs its own code, pass trust_remote_code)"
        raise ModelLoadError(f"no transformers model class fits {self.path}{hint}: {'; '.join(errors)[:300]}")

    # -- generation ------------------------------------------------------------------------
    def prepare_inputs(self, request: GenerationRequest) -> dict:
        """Processor outputs (tensors on the device) for one request, given text included."""
        import torch
        from PIL import Image

        if request.image is None or np.asarray(request.image).ndim != 3:
            raise BackendError("the request needs an HxWx3 RGB image")
        image = Image.fromarray(np.ascontiguousarray(request.image, dtype=np.uint8)).convert("RGB")
        rendered = request_prompt(self.model.config, request)
        continuation = ""
        if self.model_type == "paligemma":
            # PaliGemma's processor writes <image>s + BOS + prompt + "\n"; the output starts after "\n".
            text = getattr(self.processor, "image_token", "<image>") + rendered.prompt
            continuation = rendered.continuation
        elif getattr(self.processor, "chat_template", None):
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rendered.prompt}]}
            ]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            text += rendered.continuation
        else:
            image_token = getattr(self.processor, "image_token", None)
            text = rendered.text
            if image_token and image_token not in text:
                text = f"{image_token}\n{text}"
        kwargs: dict[str, Any] = {"text": text, "images": image, "return_tensors": "pt"}
        if request.depth is not None and "depth" in self._call_params:
            kwargs["depth"] = request.depth  # the built-in processor reads depth; generic VLMs do not
        try:
            inputs = dict(self.processor(**kwargs))
        except Exception as exc:
            raise BackendError(
                f"the processor of {self.path.name} rejected the input: {_first_line(exc)}"
            ) from exc
        inputs.pop("labels", None)  # PaliGemma's processor adds training labels
        if continuation:
            extra = torch.tensor([self.tokenizer.encode(continuation, add_special_tokens=False)])
            inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
            for key, fill in (("attention_mask", 1), ("token_type_ids", 1)):
                if key in inputs:  # given text is output-side: causal, like generated tokens
                    inputs[key] = torch.cat([inputs[key], torch.full_like(extra, fill)], dim=1)
        dtype = getattr(self.model, "dtype", None)
        return {
            k: (v.to(self.device, dtype) if v.is_floating_point() and dtype else v.to(self.device))
            if hasattr(v, "to")
            else v
            for k, v in inputs.items()
        }

    def stream(self, request: GenerationRequest, stop: threading.Event | None = None) -> Iterator[str]:
        """Yield generated text; action ids arrive as ` <bin>` text. Stops within one token on `stop`."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList, TextIteratorStreamer

        from rt2_cot.constrained import (
            ActionGrammarProcessor,
            ActionTextStreamer,
            GrammarSpec,
            StopEventCriteria,
        )

        inputs = self.prepare_inputs(request)
        prompt_length = inputs["input_ids"].shape[1]
        cancel = threading.Event()  # set when the consumer abandons the stream
        kwargs: dict[str, Any] = dict(inputs)
        if self.constrain:
            spec = GrammarSpec.for_tokenizer(
                self.tokenizer,
                self.token_map,
                style=request.prompt_style,
                given_plan=request.given_plan is not None,
                max_new_tokens=request.max_new_tokens,
                max_plan_tokens=self.max_plan_tokens,
                expected_dims=self.expected_dims if request.temperature <= 0 else (),
            )
            streamer: TextIteratorStreamer = ActionTextStreamer(self.tokenizer, spec, timeout=None)
            kwargs["logits_processor"] = LogitsProcessorList([ActionGrammarProcessor(spec, prompt_length)])
            kwargs["max_new_tokens"] = spec.max_new_tokens
            kwargs["eos_token_id"] = spec.eos_id
        else:
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            kwargs["max_new_tokens"] = request.max_new_tokens
        pad = self.tokenizer.pad_token_id
        kwargs.update(
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([StopEventCriteria(stop, cancel)]),
            pad_token_id=pad if pad is not None else kwargs.get("eos_token_id"),
            do_sample=request.temperature > 0,
            use_cache=True,
        )
        if request.temperature > 0:
            kwargs.update(temperature=float(request.temperature), top_k=0, top_p=1.0)
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                with self._lock, torch.inference_mode():
                    if request.seed is not None:
                        torch.manual_seed(int(request.seed))
                    self.model.generate(**kwargs)
            except BaseException as exc:
                failure.append(exc)
                streamer.end()  # unblock the consumer

        worker = threading.Thread(target=generate, name=f"generate:{self.path.name}", daemon=True)
        worker.start()
        try:
            for text in streamer:
                if text:
                    yield text
        finally:
            cancel.set()
            worker.join()
        if failure:
            raise BackendError(
                f"generation failed in {self.path.name}: {_first_line(failure[0])}"
            ) from failure[0]


def _parameters(processor) -> set[str]:
    try:
        return set(inspect.signature(processor.__call__).parameters)
    except (TypeError, ValueError):
        return set()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
