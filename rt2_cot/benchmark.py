"""Speed of one control step, measured side by side in one process: chain-of-thought every step,
plan reuse, and the naive path (plain transformers `generate()` per step, no reuse, no custom loop).

The process holds the model and the MuJoCo simulator, and every step the simulator renders a real
frame which all three paths see (interleaved per step, so a busy machine slows them alike); the
chain-of-thought path's action is applied to the simulator, closing the loop. Each path goes
through the same `VLAPolicy` -> `run_step` -> streaming parser -> codec as the console, so the
rates are what the control loop gets from the model.

Definitions (JSON keys per DESIGN.md):
  cot_every_step_hz  1000 / mean step latency with a fresh plan every step (fast backend)
  plan_reuse_hz      same with `replan_every` (default 10): the plan is given text on other steps
  naive_hz           same for generate() per step with a plan every step
  ttft_ms_p50        time to the first streamed text chunk, chain-of-thought path
  step_ms_p50/p95    per-step latency, chain-of-thought path
  tokens_per_s       generated tokens / generation time, chain-of-thought path
  rss_mb             peak resident memory of this process (model + simulator + everything)
  sim_ms_p50         render + physics per step (not included in the rates above)
  *_cpu_hz           1000 / mean CPU time per step (all threads): a load-independent estimate of
                     the rate on one dedicated core, for when other jobs share the machine
"""

from __future__ import annotations

import os
import platform
import resource
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger

from rt2_cot.backends.base import Backend, GenerationRequest
from rt2_cot.errors import ConfigError, ModelLoadError

DEFAULT_INSTRUCTION_SEED = 0


@dataclass
class BenchResult:
    cot_every_step_hz: float
    plan_reuse_hz: float
    naive_hz: float | None
    ttft_ms_p50: float
    step_ms_p50: float
    step_ms_p95: float
    tokens_per_s: float
    rss_mb: float
    # context: what was measured, on what
    plan_reuse_step_ms_p50: float = 0.0
    # Rates from CPU time (all threads of this process) instead of wall time: what one dedicated
    # core would sustain, nearly independent of other jobs on a shared machine.
    cot_cpu_hz: float = 0.0
    plan_reuse_cpu_hz: float = 0.0
    naive_cpu_hz: float | None = None
    naive_step_ms_p50: float | None = None
    sim_ms_p50: float = 0.0
    speedup_cot_vs_naive: float | None = None
    speedup_reuse_vs_naive: float | None = None
    valid_action_fraction: float = 0.0
    # Steps where the fast path's plan-every-step output (plan and 8 tokens) equals generate()'s on
    # the same frame: 1.0 in fp32 (the speed-ups change nothing); bf16 rounds the decoder, so a
    # motion bin may move by one or two (its effect on success is measured with `rt2-cot eval`).
    same_output_as_naive: float | None = None
    precision: str = "fp32"  # the fast path's decoder: fp32 or bf16 (`--precision`)
    # Where a plan-every-step step goes (fast path): frozen image encoder, then the one prefill pass.
    vision_ms_p50: float | None = None
    prefill_ms_p50: float | None = None
    draft_acceptance: float | None = None
    steps: int = 0
    replan_every: int = 10
    drafts: bool = True
    model: str = ""
    weights: str = ""
    instruction: str = ""
    threads: int = 0
    cpu_count: int = 0
    load_average: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 2)
        return out


class NaiveGenerateBackend:
    """The baseline: processor + `model.generate()` per step under the same action grammar, greedy,
    no KV reuse across steps, no custom loop, no streaming thread; the text arrives in one piece."""

    name = "naive-generate"

    def __init__(self, model, processor, max_plan_tokens: int | None = None) -> None:
        from rt2_cot.token_map import detect_token_map

        self.model, self.processor, self.tokenizer = model, processor, processor.tokenizer
        self.token_map = detect_token_map(self.tokenizer)
        self.max_plan_tokens = max_plan_tokens
        from rt2_cot.constrained import readout_dims

        self.expected_dims = readout_dims(model.config)  # the checkpoint's, as the fast path reads it

    def stream(self, request: GenerationRequest, stop: threading.Event | None = None) -> Iterator[str]:
        import torch

        from rt2_cot.constrained import DEFAULT_MAX_PLAN_TOKENS, ActionGrammarProcessor, GrammarSpec, Phase

        spec = GrammarSpec.for_tokenizer(
            self.tokenizer,
            self.token_map,
            style=request.prompt_style,
            given_plan=request.given_plan is not None,
            max_new_tokens=request.max_new_tokens,
            max_plan_tokens=self.max_plan_tokens or DEFAULT_MAX_PLAN_TOKENS,
            eos_id=int(self.model.config.eos_token_id),
            expected_dims=self.expected_dims,
        )
        from rt2_cot.backends.base import request_prompt

        text = request_prompt(self.model.config, request).text  # the same prompt as the fast path
        inputs = self.processor(images=request.image, text=text)
        n = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                logits_processor=[ActionGrammarProcessor(spec, n)],
                max_new_tokens=spec.max_new_tokens,
                eos_token_id=spec.eos_id,
                pad_token_id=spec.eos_id,
                do_sample=False,
            )
        # Action ids as their bin numbers, like every other backend streams them. Which tokens are
        # actions is the grammar's call: a grounded plan has integers too ("at 30 41").
        state, plan, bins = spec.new_state(), [], []
        for t in out[0, n:].tolist():
            phase = state.phase
            state.advance(t)
            if phase is Phase.ACTION:
                bins.append(self.token_map.bin_of(t))
            elif t != spec.eos_id:
                plan.append(t)
        yield self.tokenizer.decode(plan, skip_special_tokens=True) + "".join(f" {b}" for b in bins)


def random_builtin_model(seed: int = 0):
    """rt2-cot-mini with the built-in checkpoint's config (its image layout and prompt; the class
    defaults if there is no checkpoint) and random trained parts (frozen parts pretrained).

    Its output vocabulary is built like the trainer's, from simulator task texts."""
    import torch

    import rt2_cot.model as rt2_model
    from robot_io.sim.tasks import sample_task
    from rt2_cot.training import build_output_vocabulary

    tokenizer = rt2_model.load_tokenizer()
    rng = np.random.default_rng(seed)
    tasks = [sample_task(rng) for _ in range(200)]
    ids = build_output_vocabulary(tokenizer, [t.instruction for t in tasks] + [t.plan for t in tasks])
    from rt2_cot.backends import builtin_checkpoint

    torch.manual_seed(seed)
    committed = builtin_checkpoint() / "config.json"
    config = (
        rt2_model.Rt2CotMiniConfig.from_pretrained(str(committed.parent))
        if committed.is_file()
        else rt2_model.Rt2CotMiniConfig()
    )
    config.output_token_ids = ids
    model = rt2_model.Rt2CotMiniForConditionalGeneration(config)
    model.load_pretrained_parts()
    processor = rt2_model.Rt2CotMiniProcessor(tokenizer=tokenizer, image_size=model.config.image_size)
    plan_tokens = [len(tokenizer(t.plan, add_special_tokens=False)["input_ids"]) for t in tasks]
    return model.eval(), processor, int(np.ceil(np.mean(plan_tokens)))


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_benchmark(
    model: str = "builtin",
    steps: int = 30,
    warmup: int = 3,
    replan_every: int = 10,
    seed: int = DEFAULT_INSTRUCTION_SEED,
    naive: bool = True,
    threads: int | None = None,
    drafts: bool = True,
    precision: str | None = None,
) -> BenchResult:
    """Measure the three paths on `steps` simulator frames (after `warmup` untimed steps)."""
    import torch

    from robot_io.sim.env import SimConfig, TabletopSim
    from robot_io.sim.tasks import sample_task
    from rt2_cot.backends import builtin_checkpoint, load_backend
    from rt2_cot.policy import Observation
    from rt2_cot.vla_policy import VLAPolicy

    if steps < 1 or warmup < 0 or replan_every < 1:
        raise ConfigError("--steps must be >= 1, --warmup >= 0 and --replan-every >= 1")
    from rt2_cot.backends.builtin import default_num_threads

    threads = threads or default_num_threads()
    torch.set_num_threads(threads)
    notes: list[str] = []
    fast: Backend
    naive_backend: Backend | None = None
    weights = model
    missing = model == "builtin" and not (builtin_checkpoint() / "config.json").is_file()
    if model == "random" or missing:
        # Speed does not depend on the trained weights; only the plan length does, so the plan
        # budget is set to the mean length of the simulator's canonical plans.
        from rt2_cot.backends.builtin import BuiltinBackend

        m, processor, plan_tokens = random_builtin_model(seed)
        fast = BuiltinBackend(
            model=m,
            processor=processor,
            num_threads=threads,
            max_plan_tokens=plan_tokens,
            drafts=drafts,
            precision=precision,
        )
        naive_backend = NaiveGenerateBackend(m, processor, max_plan_tokens=plan_tokens) if naive else None
        weights = f"random init of the built-in config; plan budget {plan_tokens} tokens"
        if missing:
            notes.append(
                f"no built-in checkpoint at {builtin_checkpoint()}: measured a random init of its config"
            )
    else:
        from rt2_cot.backends import is_builtin_model

        fast = load_backend(
            model, **({"precision": precision} if precision and is_builtin_model(model) else {})
        )
        torch.set_num_threads(threads)  # backends pick their own default; the bench's choice wins
        if hasattr(fast, "drafts_enabled"):
            fast.drafts_enabled = drafts
        inner = getattr(fast, "model", None)
        processor = getattr(fast, "processor", None)
        if naive and inner is not None and processor is not None and hasattr(inner, "generate"):
            naive_backend = NaiveGenerateBackend(inner, processor, getattr(fast, "max_plan_tokens", None))
        elif naive:
            notes.append(
                f"naive path not measured: {type(fast).__name__} does not hold a local transformers model"
            )
        if model == "builtin":
            weights = str(builtin_checkpoint())
    torch.set_num_threads(threads)  # backends may have changed it

    sim = TabletopSim(SimConfig())
    rng = np.random.default_rng(seed)
    task = sample_task(rng)
    sim.reset(task, seed)
    instruction = task.instruction
    # The decoding paths alone: a held reference's second pass (VLAPolicy.hold_reference) depends on
    # where the plans point, so it is measured closed loop instead (`rt2-cot eval`'s mean_step_ms).
    policies = {}
    if naive_backend is not None:
        policies["naive"] = VLAPolicy(naive_backend, replan_every=1, hold_reference=False)
    policies["reuse"] = VLAPolicy(fast, replan_every=replan_every, hold_reference=False)
    # last, so `fast.last_stats` is the cot step's
    policies["cot"] = VLAPolicy(fast, replan_every=1, hold_reference=False)
    for policy in policies.values():
        policy.reset(instruction)

    lat: dict[str, list[float]] = {k: [] for k in policies}
    cpu: dict[str, list[float]] = {k: [] for k in policies}  # CPU time of this process per step
    ttft: list[float] = []
    sim_ms: list[float] = []
    tokens = 0
    gen_ms = 0.0
    valid = 0
    drafted = accepted = 0
    same = 0
    vision_ms: list[float] = []
    prefill_ms: list[float] = []
    logger.info("bench: {} steps (+{} warm-up) of {!r} on {}", steps, warmup, instruction, weights)
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        frame = sim.render()
        sim_t = (time.perf_counter() - t0) * 1e3
        obs = Observation(frame=frame, arm=sim.ee_state(), instruction=instruction, step=step)
        outputs, cpu_step = {}, {}
        for name, policy in policies.items():
            c0 = time.process_time()
            outputs[name] = policy.step(obs)
            cpu_step[name] = (time.process_time() - c0) * 1e3
        timed = step >= warmup
        if timed:
            for name, out in outputs.items():
                lat[name].append(out.latency_ms)
                cpu[name].append(cpu_step[name])
            cot = outputs["cot"]
            if cot.ttft_ms is not None:
                ttft.append(cot.ttft_ms)
            valid += cot.command is not None
            if "naive" in outputs:
                ref = outputs["naive"]
                same += (cot.plan, cot.tokens) == (ref.plan, ref.tokens)
            stats = getattr(fast, "last_stats", None)
            if stats is not None:
                vision_ms.append(stats.vision_ms)
                prefill_ms.append(stats.prefill_ms)
                tokens += len(stats.generated_ids)
                drafted += stats.draft_tokens
                accepted += stats.accepted_draft_tokens
            else:  # a backend without stats: count words, roughly tokens for these outputs
                tokens += len(cot.text.split())
            gen_ms += cot.latency_ms
        t1 = time.perf_counter()
        command = outputs["cot"].command
        sim.apply(command if command is not None else _hold(sim))
        if timed:
            sim_ms.append(sim_t + (time.perf_counter() - t1) * 1e3)

    def hz(values: list[float]) -> float:
        return 1000.0 / float(np.mean(values)) if values else 0.0

    cot_hz, reuse_hz = hz(lat["cot"]), hz(lat["reuse"])
    naive_hz = hz(lat["naive"]) if "naive" in lat else None
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    if load and load[0] > 1.0:
        notes.append(f"machine shared: load average {load[0]:.2f} on {os.cpu_count()} cores during the run")
    return BenchResult(
        cot_every_step_hz=cot_hz,
        plan_reuse_hz=reuse_hz,
        naive_hz=naive_hz,
        ttft_ms_p50=_percentile(ttft, 50),
        step_ms_p50=_percentile(lat["cot"], 50),
        step_ms_p95=_percentile(lat["cot"], 95),
        tokens_per_s=tokens / (gen_ms / 1000.0) if gen_ms else 0.0,
        rss_mb=_peak_rss_mb(),
        plan_reuse_step_ms_p50=_percentile(lat["reuse"], 50),
        cot_cpu_hz=hz(cpu["cot"]),
        plan_reuse_cpu_hz=hz(cpu["reuse"]),
        naive_cpu_hz=hz(cpu["naive"]) if "naive" in cpu else None,
        naive_step_ms_p50=_percentile(lat["naive"], 50) if "naive" in lat else None,
        sim_ms_p50=_percentile(sim_ms, 50),
        speedup_cot_vs_naive=cot_hz / naive_hz if naive_hz else None,
        speedup_reuse_vs_naive=reuse_hz / naive_hz if naive_hz else None,
        same_output_as_naive=same / steps if "naive" in lat and steps else None,
        vision_ms_p50=_percentile(vision_ms, 50) if vision_ms else None,
        prefill_ms_p50=_percentile(prefill_ms, 50) if prefill_ms else None,
        valid_action_fraction=valid / steps,
        draft_acceptance=(accepted / drafted) if drafted and drafts else None,
        precision=getattr(fast, "precision", "fp32"),
        steps=steps,
        replan_every=replan_every,
        drafts=drafts and hasattr(fast, "drafts_enabled"),
        model=model,
        weights=weights,
        instruction=instruction,
        threads=threads,
        cpu_count=os.cpu_count() or 0,
        load_average=[round(v, 2) for v in load],
        notes=[*notes, f"{platform.processor() or platform.machine()}, torch {torch.__version__}"],
    )


def _hold(sim):
    from robot_io.types import EndEffectorCommand

    return EndEffectorCommand.hold(sim.ee_state().gripper)


def check_model_spec(model: str) -> None:
    """Fail early, with one line, for a --model that cannot be benchmarked (`random`: the built-in
    config with random weights, since speed does not depend on what the weights are)."""
    if model.startswith(("http://", "https://")):
        return
    if model not in ("builtin", "random") and not Path(model).exists():
        raise ModelLoadError(f"model folder {model} does not exist; pass builtin or a checkpoint folder")
