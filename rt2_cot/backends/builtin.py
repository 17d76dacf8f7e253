"""The fast path for the built-in model (rt2-cot-mini): a tight greedy decode loop on the CPU.

Same tokens as `model.generate()` under the runtime's action grammar (`rt2_cot.constrained`), in a
fraction of the time. What makes it fast, each kept because it measurably helped (numbers in
`rt2-cot bench` and the README):

* No generate() machinery: one prefill pass, then one-token steps through the decoder layers with
  a preallocated KV cache (no per-token torch.cat, no full-vocabulary logits, no processor lists).
* Logits only over the tokens the grammar allows: the model's output vocabulary while planning, the
  256 action rows of the tied embedding after the action marker; forced tokens (end of sequence
  after the eighth integer) cost no forward pass at all.
* Cached per prompt: token ids, their embeddings and attention masks, the action-row weights.
  (The image comes first in the sequence, so the instruction's keys and values depend on the frame
  and cannot be reused across steps: every step is one prefill of image + text.)
* Plan reuse (`given_plan`): the plan and action marker are part of the prompt, so they cost one
  prefill instead of token-by-token decoding; only the eight integers are decoded.
* Drafts from the previous step (lossless speculative decoding): consecutive frames usually give
  the same plan, so the previous step's output is appended to the prefill as a draft and checked in
  the same pass; tokens are accepted only while they equal the greedy choice, and decoding goes on
  one token at a time from the first disagreement. The output is the greedy output either way; a
  plan every step then costs little more than plan reuse.
* The decoder layers in bfloat16 where the CPU computes it natively (`precision="auto"`, the
  default; AVX512-BF16 here): a 64-image-token step 24.9 -> 15.4 ms. Logits, the action readout and
  the image encoder stay fp32. Not token-identical to fp32 (a motion bin may move by one or two);
  closed loop it changed nothing measurable: 23/96 vs 22/96 successes (model card, session 5).
  `precision="fp32"` gives `generate()`'s tokens exactly.
* torch.inference_mode and one intra-op thread (`default_num_threads`): with two, any other busy
  process on the machine made a step 100x slower (OpenMP barriers waiting for a descheduled thread).

Tried and not kept: dynamic int8 quantisation of the decoder linears (`quantize=True`) changed the
greedy tokens on 64 of 96 steps of a random-init model, so it is off by default; torch.compile
(inductor) of the layer loop and the image encoder gave identical tokens but took ~3 minutes to
compile on this machine and no measurable gain at batch 1 under load, so it is not used.
Drafts apply to greedy decoding only; with temperature > 0 tokens are sampled one at a time.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from loguru import logger

from rt2_cot.backends.base import GenerationRequest, PromptState, prompt_state
from rt2_cot.errors import BackendError, ModelLoadError

_NEVER = -1e4  # the model's logit for tokens outside its output vocabulary (modeling_rt2_cot_mini)


@dataclass
class StepStats:
    """What the last `stream` call did; the benchmark and tests read it."""

    prefill_tokens: int = 0
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    decode_steps: int = 0
    generated_ids: list[int] = field(default_factory=list)
    vision_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0


class _TextEmitter:
    """Turns generated ids into text chunks exactly like `rt2_cot.constrained.ActionTextStreamer`:
    plan text word by word (decoded by the tokenizer, so spacing matches), then ` {bin}` per
    action token. The chunks add up to the text the transformers backend streams."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: list[int] = []
        self.printed = 0

    def plan_token(self, token_id: int) -> str:
        self.cache.append(token_id)
        text = self.tokenizer.decode(self.cache, skip_special_tokens=True)
        if text.endswith("\n"):
            out, self.cache, self.printed = text[self.printed :], [], 0
            return out
        cut = text.rfind(" ") + 1
        out = text[self.printed : cut]
        self.printed += len(out)
        return out

    def flush(self) -> str:
        if not self.cache:
            return ""
        text = self.tokenizer.decode(self.cache, skip_special_tokens=True)
        out = text[self.printed :]
        self.cache, self.printed = [], 0
        return out


class BuiltinBackend:
    """Backend protocol for rt2-cot-mini checkpoints, driven through the model's fast-path API."""

    name = "builtin"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        model=None,
        processor=None,
        num_threads: int | None = None,
        drafts: bool = True,
        quantize: bool = False,
        precision: str | None = None,
        max_plan_tokens: int | None = None,
        action_readout: str | None = None,
    ) -> None:
        """Load from a checkpoint folder (`path`) or wrap an already built `model` + `processor`.

        `drafts`: speculative drafts from the previous step (lossless for greedy decoding).
        `quantize`: dynamic int8 decoder linears, in place (not token-identical; off by default).
        `precision`: "fp32" (the same tokens as `generate()`), "bf16" (a bfloat16 copy of the
        decoder layers for the fast loop; logits and the vision encoder stay fp32), or "auto" (bf16
        where the CPU has native bf16 arithmetic, see `cpu_has_bf16`). Default: $RT2_PRECISION,
        else auto.
        `max_plan_tokens`: plan budget of the grammar (default: the runtime's).
        `action_readout`: "argmax" or "expected" for the motion bins (default: the checkpoint's).
        `num_threads`: torch intra-op threads (default: `default_num_threads()`).
        """
        import rt2_cot.model as rt2_model  # registers the Auto classes

        torch.set_num_threads(num_threads or default_num_threads())
        if model is None:
            if path is None:
                raise ModelLoadError("BuiltinBackend needs a checkpoint folder or a model")
            model, processor = _load(Path(path))
        if processor is None:
            processor = rt2_model.Rt2CotMiniProcessor(
                tokenizer=rt2_model.load_tokenizer(), image_size=model.config.image_size
            )
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.drafts_enabled = drafts
        self.max_plan_tokens = max_plan_tokens
        from rt2_cot.constrained import readout_dims

        self.expected_dims = readout_dims(self.model.config, action_readout)
        self.last_stats = StepStats()
        self._lock = threading.Lock()
        self._draft: dict[tuple, list[int]] = {}
        self._prompt_cache: dict[tuple, tuple[list[int], torch.Tensor]] = {}
        self._spec_cache: dict[tuple, object] = {}
        self._mask_cache: dict[int, torch.Tensor | None] = {}
        if quantize:
            # Decoder layers only (in place: the model object is changed for every user of it); the
            # tied output rows and the frozen vision stay fp32.
            torch.ao.quantization.quantize_dynamic(
                self.model.layers, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
            )
        # The frozen encoder with BatchNorm folded into its convolutions, in channels-last layout:
        # ~7.2 -> ~5.3 ms a frame on one core (features equal to ~1e-5; the model itself is untouched).
        self._vision = self.model.vision.fused_for_inference().to(memory_format=torch.channels_last)
        self._setup_tables()
        self._fast_layers = self.model.layers  # the loop's decoder weights (below: maybe a bf16 copy)
        self._custom_layers = self._check_custom_layers()
        precision = precision or os.environ.get("RT2_PRECISION") or "auto"
        if precision not in ("fp32", "bf16", "auto"):
            raise ModelLoadError(f"precision must be fp32, bf16 or auto, got {precision!r}")
        if precision == "auto":
            precision = "bf16" if cpu_has_bf16() else "fp32"
        if precision == "bf16" and not self._custom_layers:
            logger.warning("builtin fast path: bf16 needs the custom layer loop; running fp32")
            precision = "fp32"
        self.precision = precision
        # The loop's own decoder weights: the model's (fp32), or a bfloat16 copy. A copy, so that the
        # model object (shared with generate() in `rt2-cot bench`, and with training) is untouched.
        import copy

        self._fast_layers = (
            copy.deepcopy(self.model.layers).to(torch.bfloat16) if precision == "bf16" else self.model.layers
        )

    # -- one-time tables ---------------------------------------------------------------------------
    def _setup_tables(self) -> None:
        from rt2_cot.token_map import detect_token_map

        m = self.model
        cfg = m.config
        self.n_img = int(cfg.num_image_tokens)
        self.hidden = int(cfg.hidden_size)
        self.n_head = int(cfg.num_attention_heads)
        self.token_map = detect_token_map(self.tokenizer)
        with torch.inference_mode():
            out_ids = m.output_token_ids.tolist()
            order = sorted(range(len(out_ids)), key=lambda i: out_ids[i])
            # Sorted by vocabulary id so argmax breaks ties like generate() over the full vocabulary.
            self.out_ids = torch.tensor([out_ids[i] for i in order], dtype=torch.long)
            weight = m.word_embeddings.weight
            self.out_w = weight[self.out_ids].contiguous()
            self.out_b = m.output_bias[torch.tensor(order)].contiguous()
            self.out_pos = {int(t): i for i, t in enumerate(self.out_ids.tolist())}
            # Action rows, sorted by vocabulary id (tie order) with the bin each carries.
            act = sorted(self.token_map.ids)
            self.act_ids = torch.tensor(act, dtype=torch.long)
            rows = [self.out_pos.get(t) for t in act]
            self.act_w = torch.stack(
                [self.out_w[r] if r is not None else torch.zeros(self.hidden) for r in rows]
            ).contiguous()
            self.act_b = torch.tensor(
                [float(self.out_b[r]) if r is not None else _NEVER for r in rows], dtype=self.out_w.dtype
            )
            self.act_in_vocab = torch.tensor([r is not None for r in rows])
            self.act_bins = torch.tensor([float(self.token_map.bin_of(t)) for t in act])
            # Where the pointer readout's bumps over 0..255 land: plan rows holding an integer, and
            # the bin of every action row.
            bins = [(i, self.token_map.bin_of(t)) for i, t in enumerate(self.out_ids.tolist())]
            bins = [(i, b) for i, b in bins if b is not None]
            self.out_int_rows = torch.tensor([i for i, _ in bins], dtype=torch.long)
            self.out_int_bins = torch.tensor([b for _, b in bins], dtype=torch.long)
            # A copy head's source words land on these plan rows (vocabulary id -> row, or -1).
            self.copy_rows = None
            if m.copy is not None:
                self.copy_rows = torch.full((int(cfg.vocab_size),), -1, dtype=torch.long)
                for t in cfg.copy_token_ids:
                    self.copy_rows[t] = self.out_pos[t]
        self._plan_allowed: dict[tuple, torch.Tensor] = {}

    def _spec(self, style: str, given_plan: bool, max_new_tokens: int):
        from rt2_cot.constrained import DEFAULT_MAX_PLAN_TOKENS, GrammarSpec

        key = (style, given_plan, max_new_tokens)
        if key not in self._spec_cache:
            self._spec_cache[key] = GrammarSpec.for_tokenizer(
                self.tokenizer,
                self.token_map,
                style=style,
                given_plan=given_plan,
                max_new_tokens=max_new_tokens,
                max_plan_tokens=self.max_plan_tokens or DEFAULT_MAX_PLAN_TOKENS,
                eos_id=int(self.model.config.eos_token_id),
                expected_dims=self.expected_dims,
            )
        return self._spec_cache[key]

    def _plan_mask(self, spec, plan_empty: bool) -> torch.Tensor:
        """Which output-vocabulary rows the grammar allows while planning (bool over out_ids)."""
        key = (id(spec), plan_empty)
        if key not in self._plan_allowed:
            banned = set(spec.banned_in_plan) | (set(spec.banned_as_plan_start) if plan_empty else set())
            limit = spec.text_vocab_size or 1 << 62
            self._plan_allowed[key] = torch.tensor(
                [t < limit and t not in banned for t in self.out_ids.tolist()], dtype=torch.bool
            )
        return self._plan_allowed[key]

    # -- prompt -----------------------------------------------------------------------------------
    def _prompt(
        self, style: str, instruction: str, given_plan: str | None, state: PromptState = PromptState()
    ) -> tuple[list[int], torch.Tensor]:
        """Token ids and embeddings of the prompt text (cached: they do not change between steps
        unless the model is told the arm's state; a gripper opening takes a handful of values)."""
        from rt2_cot.prompts import build_prompt, gripper_percent

        opening = None if state.gripper is None else gripper_percent(state.gripper)
        key = (style, instruction, given_plan, opening, state.position, state.motion)
        hit = self._prompt_cache.get(key)
        if hit is None:
            text = build_prompt(style, instruction, given_plan, state.gripper, state.position, state.motion)
            ids = self.processor.encode_text(text)
            with torch.inference_mode():
                emb = self.model.embed_text(torch.tensor([ids]))
            if len(self._prompt_cache) > 64:
                self._prompt_cache.clear()
            hit = self._prompt_cache[key] = (ids, emb)
        return hit

    def _image_prefix(self, image: np.ndarray) -> torch.Tensor:
        from rt2_cot.model import pixels_from_uint8, resize_image

        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] < 3:
            raise BackendError(f"image must be HxWx3 RGB, got shape {arr.shape}")
        pixels = pixels_from_uint8(resize_image(arr, self.model.config.image_size)[None])
        pixels = pixels.to(self.model.projector.fc1.weight.dtype).contiguous(
            memory_format=torch.channels_last
        )
        cfg = self.model.config
        features = self._vision(pixels, cfg.vision_grid, cfg.vision_stride8)
        return self.model.encode_image(features=features)

    # -- the decoder with a preallocated KV cache -----------------------------------------------------
    def _alloc(self, length: int) -> None:
        head_dim = self.hidden // self.n_head
        size = max(256, 1 << (length - 1).bit_length())
        dtype = next(self._fast_layers.parameters()).dtype
        if getattr(self, "_kv_size", 0) < size or self._k[0].dtype != dtype:
            size = max(size, getattr(self, "_kv_size", 0))
            shape = (1, self.n_head, size, head_dim)
            self._k = [torch.zeros(shape, dtype=dtype) for _ in self.model.layers]
            self._v = [torch.zeros(shape, dtype=dtype) for _ in self.model.layers]
            self._kv_size = size

    def _mask(self, total_new: int) -> torch.Tensor | None:
        from rt2_cot.model.modeling_rt2_cot_mini import attention_mask_for

        if total_new not in self._mask_cache:
            self._mask_cache[total_new] = attention_mask_for(
                self.n_img, 0, total_new, None, torch.device("cpu")
            )
        return self._mask_cache[total_new]

    def _run(
        self, x: torch.Tensor, start: int, mask: torch.Tensor | None, keep_from: int = 0
    ) -> torch.Tensor:
        """Decoder layers over `x` (1, T, d) at positions start..start+T, writing K/V into the cache.

        The same operations, in the same order, as the model's DecoderLayer (dropout is identity in
        eval). Only rows from `keep_from` on are returned; the last layer computes its attention and
        feed-forward for those rows alone (the others' keys and values are all the cache needs).
        With `precision="bf16"` the layers are the bfloat16 copy and `x` is cast to it on entry.
        """
        layers = self._fast_layers
        x = x.to(self._k[0].dtype)
        b, t, d = x.shape
        end = start + t
        hd = d // self.n_head
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            q, k, v = layer.qkv(x).view(b, t, 3, self.n_head, hd).permute(2, 0, 3, 1, 4)
            kb, vb = self._k[i], self._v[i]
            kb[:, :, start:end] = k
            vb[:, :, start:end] = v
            if i == last and keep_from:
                q, x, t = q[:, :, keep_from:], x[:, keep_from:], t - keep_from
                mask = mask[..., keep_from:, :] if mask is not None else None
            a = F.scaled_dot_product_attention(q, kb[:, :, :end], vb[:, :, :end], attn_mask=mask)
            x = layer.attn_norm(x + layer.attn_out(a.transpose(1, 2).reshape(b, t, d)))
            x = layer.ff_norm(x + layer.ff_out(F.gelu(layer.ff_in(x))))
        return x

    def _run_reference(
        self, x: torch.Tensor, start: int, mask: torch.Tensor | None, keep_from: int = 0
    ) -> torch.Tensor:
        """Fallback through the model's own layers + DynamicCache (if its layer API changed)."""
        from transformers import DynamicCache

        if start == 0:
            self._ref_cache = DynamicCache()
        else:
            extra = self._ref_cache.get_seq_length() - start
            if extra > 0:  # rejected draft tokens: drop their keys and values
                self._ref_cache.crop(-extra)
        return self.model.run_layers(x, mask, self._ref_cache)[:, keep_from:]

    def _layers(
        self, x: torch.Tensor, start: int, mask: torch.Tensor | None, keep_from: int = 0
    ) -> torch.Tensor:
        if self._custom_layers:
            return self._run(x, start, mask, keep_from)
        return self._run_reference(x, start, mask, keep_from)

    def _check_custom_layers(self) -> bool:
        """Use the hand-rolled layer loop only if it reproduces the model's own prefill exactly."""
        try:
            with torch.inference_mode():
                ids = torch.tensor([self.processor.encode_text("instruction : pick up the rock")])
                prefix = torch.randn(1, self.n_img, self.hidden, generator=torch.Generator().manual_seed(0))
                want, _ = self.model.prefill(prefix, ids)
                x = torch.cat([prefix, self.model.embed_text(ids)], dim=1)
                self._alloc(x.shape[1])
                h = self._run(x, 0, self._mask(x.shape[1]), keep_from=self.n_img)
                pointer_keys, copy_source = (
                    self.model.pointer_keys_for(prefix),
                    self.model.copy_source_for(h, ids),
                )
                got = self.model.output_logits(h[:, -1:], pointer_keys, copy_source)[:, 0]
                ok = bool(torch.allclose(got, want, rtol=0, atol=1e-5))
        except Exception as exc:  # the model's internals moved: use its own API instead
            logger.warning("builtin fast path: custom layer loop unavailable ({}); using model layers", exc)
            return False
        if not ok:
            logger.warning(
                "builtin fast path: custom layer loop disagrees with the model; using model layers"
            )
        return ok

    # -- choosing tokens ------------------------------------------------------------------------------
    def _choose(
        self,
        state,
        hidden: torch.Tensor,
        request: GenerationRequest,
        gen: torch.Generator | None,
        pointer_keys: tuple | None = None,
        copy_source: tuple | None = None,
    ) -> int:
        """Next token under the grammar from the last hidden state (1, d) (and the pointer readout's
        keys for this image, and the copy head's source words through this position, if the model
        has them)."""
        from rt2_cot.constrained import Phase
        from rt2_cot.streaming import clean_plan

        forced = state.forced_id()
        if forced is not None:
            return int(forced)
        hidden = hidden.float()  # logits in fp32 whatever the layers ran in
        bumps = None if pointer_keys is None else self.model.pointer(hidden[:, None], *pointer_keys)[0, 0]
        if state.phase is Phase.ACTION:
            logits = F.linear(hidden, self.act_w, self.act_b)[0]
            if bumps is not None:
                logits = logits + bumps[self.act_bins.long()]
            ids = self.act_ids
            greedy = not (request.temperature and request.temperature > 0)
            if greedy and state.actions in state.spec.expected_dims:
                from rt2_cot.constrained import expected_bin_index

                return int(ids[expected_bin_index(logits, self.act_bins)])
        else:
            logits = F.linear(hidden, self.out_w, self.out_b)[0]
            if bumps is not None:
                logits = logits.index_add(0, self.out_int_rows, bumps[self.out_int_bins])
            if copy_source is not None:  # (while acting it only scales the integers' softmax: skipped)
                logits = self.model.copy(hidden[:, None], logits[None, None], copy_source)[0, 0]
            mask = self._plan_mask(state.spec, plan_empty=not clean_plan(state.plan_text))
            logits = logits.masked_fill(~mask, float("-inf"))
            ids = self.out_ids
        if request.temperature and request.temperature > 0:
            probs = torch.softmax(logits.float() / request.temperature, dim=-1)
            return int(ids[int(torch.multinomial(probs, 1, generator=gen))])
        return int(ids[int(torch.argmax(logits))])

    # -- the Backend protocol ---------------------------------------------------------------------------
    def stream(self, request: GenerationRequest, stop: threading.Event | None = None) -> Iterator[str]:
        with self._lock:
            yield from self._stream(request, stop)

    def _stream(self, request: GenerationRequest, stop: threading.Event | None) -> Iterator[str]:
        from rt2_cot.constrained import Phase

        style = request.prompt_style
        spec = self._spec(style, request.given_plan is not None, request.max_new_tokens)
        state = spec.new_state()
        greedy = not (request.temperature and request.temperature > 0)
        gen = (
            None if greedy else torch.Generator().manual_seed(request.seed if request.seed is not None else 0)
        )
        stats = self.last_stats = StepStats()
        emitter = _TextEmitter(self.tokenizer)
        # Drafts ignore the stated arm state: the plan and most action tokens carry over when it changes.
        draft_key = (style, request.instruction, request.given_plan, request.max_new_tokens)
        budget = spec.max_new_tokens

        with torch.inference_mode():
            t0 = time.perf_counter()
            prefix = self._image_prefix(request.image)
            pointer_keys = self.model.pointer_keys_for(prefix)
            t1 = time.perf_counter()
            state_text = prompt_state(self.model.config, request)
            prompt_ids, prompt_emb = self._prompt(style, request.instruction, request.given_plan, state_text)
            draft_source = list(self._draft.get(draft_key, ())) if (greedy and self.drafts_enabled) else []
            draft = list(draft_source)
            if not draft and state.forced_id() is not None:
                # Forced opening tokens ("Plan:") are known: feed them with the prompt.
                draft = list(spec.plan_marker_ids)
            draft = draft[: budget - 1]
            parts = [prefix, prompt_emb]
            if draft:
                start = len(prompt_ids)
                parts.append(self.model.embed_text(torch.tensor([draft]), start=start))
            x = torch.cat(parts, dim=1)
            total = x.shape[1]
            self._alloc(total + budget + 1)
            n_prompt = self.n_img + len(prompt_ids)
            # Only rows from the prompt's last token on predict anything (a copy head also reads the
            # rows of the prompt's words: `copied` are the source keys and rows before `fed`).
            copying = self.model.copy is not None
            h = self._layers(x, 0, self._mask(total), keep_from=self.n_img if copying else n_prompt - 1)
            if copying:
                h = h.float()
                copied = (
                    self.model.copy.key(h[:, : len(prompt_ids) - 1]),
                    self._copy_rows(prompt_ids[:-1], written_from=None),
                )
                h = h[:, len(prompt_ids) - 1 :]
                fed_keys = self.model.copy.key(h)
                # fed[0] is the prompt's last token, the drafts after it are written text
                fed_rows = self._copy_rows([prompt_ids[-1], *draft], written_from=1)
            stats.prefill_tokens, stats.draft_tokens = total, len(draft)
            t2 = time.perf_counter()
            stats.vision_ms, stats.prefill_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3

            generated: list[int] = []
            # `fed` are the tokens whose hidden states `h` holds from row `base` on: row base+i
            # predicts the token after fed[i]. The first forward's fed[0] is the prompt's last token.
            fed = [prompt_ids[-1], *draft]
            base, start = 0, n_prompt - 1  # h row 0 and the cache position of fed[0]
            guess_limit = 16
            while True:
                i = 0
                while True:
                    source = None
                    if copying:
                        source = (
                            torch.cat([copied[0], fed_keys[:, : i + 1]], 1),
                            torch.cat([copied[1], fed_rows[:, : i + 1]], 1),
                        )
                    token = self._choose(state, h[:, base + i], request, gen, pointer_keys, source)
                    generated.append(token)
                    phase = state.phase
                    state.advance(token)
                    yield from self._emit(emitter, phase, token)
                    finished = state.phase in (Phase.EOS, Phase.DONE) or len(generated) >= budget
                    if not finished and i + 1 < len(fed) and token == fed[i + 1]:
                        i += 1  # the draft guessed right: the next row is valid too
                        stats.accepted_draft_tokens += 1
                        continue
                    break
                if finished or (stop is not None and stop.is_set()):
                    break
                if copying:  # fed[: i + 1] are now part of the text for good
                    copied = (
                        torch.cat([copied[0], fed_keys[:, : i + 1]], 1),
                        torch.cat([copied[1], fed_rows[:, : i + 1]], 1),
                    )
                # The cache is valid through fed[i]; `token` is decided but not fed yet. Feed it with
                # a fresh guess at what follows (the previous step's tokens at the same places).
                start += i + 1
                # Guesses that all failed last time are likely to fail again: offer fewer (each
                # guessed row costs compute), and as many as before once one is accepted.
                guess_limit = 16 if i > 0 or len(fed) == 1 else max(1, guess_limit // 4)
                extra = self._guess(draft_source, generated, state) if greedy and self.drafts_enabled else []
                extra = extra[: max(0, min(guess_limit, budget - len(generated) - 1))]
                fed = [token, *extra]
                x = self.model.embed_text(torch.tensor([fed]), start=start - self.n_img)
                h = self._layers(x, start, self._decode_mask(start, len(fed)))
                if copying:
                    h = h.float()
                    fed_keys = self.model.copy.key(h)
                    fed_rows = self._copy_rows(fed, written_from=0)
                base = 0
                stats.decode_steps += 1
                stats.draft_tokens += len(extra)
            stats.decode_ms = (time.perf_counter() - t2) * 1e3
            rest = emitter.flush()
            if rest:
                yield rest
            stats.generated_ids = generated
            if greedy:
                # The next frame's draft: everything up to end of sequence.
                self._draft[draft_key] = [t for t in generated if t != spec.eos_id]
                if len(self._draft) > 16:
                    self._draft.pop(next(iter(self._draft)))

    def _copy_rows(self, ids: list[int], written_from: int | None) -> torch.Tensor:
        """The copy head's source rows (1, T) for these tokens: each word's plan row, or what it may not
        copy (not a word: -1; with `copy_from_prompt_only`, text written from `written_from` on:
        `written_columns`)."""
        from rt2_cot.model.modeling_rt2_cot_mini import written_columns

        rows = self.copy_rows[torch.tensor([ids], dtype=torch.long)]
        if written_from is not None and self.model.config.copy_from_prompt_only:
            rows = written_columns(rows, torch.arange(len(ids))[None] < written_from)
        return rows

    def _guess(self, source: list[int], generated: list[int], state, limit: int = 16) -> list[int]:
        """Guesses for the tokens after `generated`, from the previous step's output `source`.

        While acting, guesses are the previous action's remaining tokens at the same action
        index (a changed plan length must not shift them); while planning, the previous output at
        the same position."""
        from rt2_cot.constrained import Phase

        if not source:
            return []
        if state.phase is Phase.ACTION:
            prev_actions = [t for t in source if self.token_map.bin_of(t) is not None][
                -state.spec.num_action_tokens :
            ]
            return prev_actions[state.actions : state.actions + limit]
        return source[len(generated) : len(generated) + limit]

    def _decode_mask(self, start: int, new: int) -> torch.Tensor | None:
        """Mask for `new` tokens at cache positions start..: causal among themselves (None for one)."""
        if new == 1:
            return None
        from rt2_cot.model.modeling_rt2_cot_mini import attention_mask_for

        return attention_mask_for(self.n_img, start, new, None, torch.device("cpu"))

    def _emit(self, emitter: _TextEmitter, phase, token: int) -> Iterator[str]:
        from rt2_cot.constrained import Phase

        if phase is Phase.ACTION:
            rest = emitter.flush()
            if rest:
                yield rest
            yield f" {self.token_map.bin_of(token)}"
        elif phase not in (Phase.EOS, Phase.DONE):
            text = emitter.plan_token(token)
            if text:
                yield text

    def reset_drafts(self) -> None:
        """Forget previous outputs (drafts); the next step decodes from scratch."""
        self._draft.clear()


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic on this CPU (AVX512-BF16 or AMX), where `precision="auto"` picks
    bf16. Measured here (AMD EPYC, AVX512-BF16): a 100x384 @ 384x1152 matmul 0.81 ms fp32, 0.20 ms
    bf16. Without native support bf16 matmuls are emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def default_num_threads() -> int:
    """Intra-op threads for batch-1 decoding: $RT2_NUM_THREADS, else 1.

    Measured on this 2-core machine: 2 threads were ~25% faster than 1 when the machine was idle,
    but with any other busy process (load average 3.5-9) a step took 1.4-1.9 s with 2 threads and
    15-20 ms with 1: each of the ~300 small ops of a step ends in an OpenMP barrier that waits for
    the partner thread to be scheduled. A control loop cannot take that risk; opt in with
    RT2_NUM_THREADS=2 on a dedicated machine.
    """
    if os.environ.get("RT2_NUM_THREADS"):
        return max(1, int(os.environ["RT2_NUM_THREADS"]))
    return 1


def _load(path: Path):
    """Checkpoint folder -> (model, processor); ModelLoadError with what to do otherwise."""
    from rt2_cot.model import (
        Rt2CotMiniForConditionalGeneration,
        Rt2CotMiniProcessor,
        load_tokenizer,
    )

    if not path.is_dir() or not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is not an rt2-cot-mini checkpoint folder (no config.json)")
    try:
        model = Rt2CotMiniForConditionalGeneration.from_pretrained(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the built-in model from {path}: {exc}") from exc
    try:
        processor = Rt2CotMiniProcessor.from_pretrained(str(path))
    except (OSError, ValueError, TypeError):
        processor = Rt2CotMiniProcessor(tokenizer=load_tokenizer(), image_size=model.config.image_size)
    return model, processor
