"""The VLA as a Policy: observation -> prompt -> constrained streamed generation -> action.

Plan reuse: thinking in words is the slow part of a step, and a plan ("pick up the rock") holds for
many steps. With `replan_every=N` the model writes a fresh plan on the first step of an episode,
whenever the instruction changes, after a step that produced no action, and every N steps; on the
other steps the previous plan is given in the prompt and only the eight action tokens are generated.

Held reference (`hold_reference`, on by default): a grounded plan says where the object goes as a
point in the image ("place the green ball at 76 124 on the triangle at 112 101"). The object moves;
the place it goes to does not, but re-reading it from every new frame does: the arm and the carried
object cover it on the way, and a small model's pointer then jumps to another tile (session 14
traced rt2-cot-mini's reference point 4-7 units off for ten steps, then 55-77 off until the step
limit: benchmarks/reference_trace.py). The policy keeps the episode's first reading of each
reference; when a fresh plan puts the same reference more than `HOLD_TOLERANCE` from it, generation
stops once the plan is complete (the plan has streamed as usual) and the plan with the remembered
point is given back to the model for the eight action tokens (the plan-reuse path). Plans that agree
with the memory cost nothing extra.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable

from rt2_cot.action_codec import ActionCodec
from rt2_cot.backends.base import Backend, GenerationRequest
from rt2_cot.errors import ConfigError
from rt2_cot.events import ActionTokenEvent, Event, PlanDelta
from rt2_cot.policy import Observation, PolicyOutput
from rt2_cot.prompts import get_template
from rt2_cot.step import run_step

# How far (0..255 image units) a fresh plan may put a held reference from its first reading and still
# be acted on as written: jitter of a few units is the pointer's resolution, not a lost landmark, and
# holding it would cost a second pass for nothing.
HOLD_TOLERANCE = 8.0


class VLAPolicy:
    """`Policy` over any Backend. `replan_every`: 1 = plan every step, N = every N steps, 0 = once.
    `hold_reference` (on by default): keep each reference's first image point for the episode (module
    docstring)."""

    def __init__(
        self,
        backend: Backend,
        codec: ActionCodec | None = None,
        prompt_style: str = "cot",
        replan_every: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int = 48,
        seed: int | None = None,
        hold_reference: bool = True,
    ) -> None:
        if replan_every < 0:
            raise ConfigError(f"replan_every must be >= 0, got {replan_every}")
        self.backend = backend
        self.codec = codec or ActionCodec()
        self.template = get_template(prompt_style)
        self.prompt_style = prompt_style
        self.replan_every = replan_every
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.hold_reference = hold_reference
        self._references: dict[str, tuple[int, int]] = {}  # reference name -> its first image point
        self.name = f"vla:{getattr(backend, 'name', type(backend).__name__)}"
        if not hold_reference:  # reports say how the plans were acted on
            self.name += " (reference not held)"
        self.stop_event = threading.Event()  # set by the loop or the console to cancel a step
        self._instruction: str | None = None
        self._plan: str | None = None
        self._steps_since_plan = 0
        self._steps = 0
        self._gripper_command: float | None = None  # what the previous step asked the gripper for

    @property
    def plan(self) -> str | None:
        return self._plan

    def reset(self, instruction: str) -> None:
        self._instruction = instruction
        self._plan = None
        self._steps_since_plan = 0
        self._steps = 0
        self._gripper_command = None
        self._references = {}
        self.stop_event.clear()

    def _needs_plan(self, instruction: str) -> bool:
        if not self.template.has_plan:
            return False  # the plain prompt never writes a plan; nothing to reuse
        if instruction != self._instruction or self._plan is None:
            return True
        return self.replan_every > 0 and self._steps_since_plan >= self.replan_every

    def step(self, observation: Observation, on_event: Callable[[Event], None] | None = None) -> PolicyOutput:
        if observation.instruction != self._instruction:
            self.reset(observation.instruction)
        replan = self._needs_plan(observation.instruction)
        frame = observation.frame
        request = GenerationRequest(
            image=frame.color,
            depth=frame.depth_m(),
            instruction=observation.instruction,
            prompt_style=self.prompt_style,  # type: ignore[arg-type]
            given_plan=None if replan or not self.template.has_plan else self._plan,
            gripper=_gripper_opening(observation),
            gripper_command=self._gripper_command,
            ee_xyz=_ee_position(observation),
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            seed=None if self.seed is None else self.seed + self._steps,
        )
        if replan and self.hold_reference:
            output = self._plan_with_held_reference(request, on_event)
        else:
            output = run_step(self.backend, request, self.codec, on_event=on_event, stop=self.stop_event)
        self._steps += 1
        # The model's own request (before the shield): a shield-limited close still reads "closing".
        self._gripper_command = None if output.command is None else float(output.command.gripper)
        if replan:
            # A failed plan is not reused: the next step plans again.
            self._plan = output.plan if output.command is not None and output.plan else None
            self._steps_since_plan = 1
        else:
            self._steps_since_plan += 1
        output.replanned = replan
        output.extras.setdefault("step", observation.step)
        return output

    def _held(self, plan: str) -> str | None:
        """`plan` with its reference at the remembered point, or None when nothing is to change."""
        from rt2_cot.data.grounding import with_point

        reference = _reference(plan)
        if reference is None or reference[0] not in self._references:
            return None
        name, x, y = reference
        hx, hy = self._references[name]
        if math.hypot(x - hx, y - hy) <= HOLD_TOLERANCE:  # the same place: the model's own words stand
            return None
        return with_point(plan, 1, hx, hy)

    def _remember(self, output: PolicyOutput) -> None:
        reference = _reference(output.plan)
        if output.command is not None and reference is not None:
            name, x, y = reference
            self._references.setdefault(name, (x, y))

    def _plan_with_held_reference(
        self, request: GenerationRequest, on_event: Callable[[Event], None] | None
    ) -> PolicyOutput:
        """A fresh plan whose reference point is the episode's first reading of it (module docstring)."""
        gate = _PlanGate(self._held, on_event)
        first = run_step(
            self.backend, request, self.codec, on_event=gate, stop=_Either(self.stop_event, gate.cut)
        )
        if gate.held is None or self.stop_event.is_set():
            self._remember(first)
            return first
        request = dataclasses.replace(request, given_plan=gate.held)
        output = run_step(self.backend, request, self.codec, on_event=on_event, stop=self.stop_event)
        output.latency_ms += first.latency_ms
        output.ttft_ms = first.ttft_ms
        output.replanned = True
        output.extras["model_plan"] = gate.plan  # what the model wrote before the reference was held
        return output


def _reference(plan: str) -> tuple[str, int, int] | None:
    """The plan's reference and its point (the second located thing), or None when it locates none
    ("pick up the apple at 30 41")."""
    from rt2_cot.data.grounding import located_points

    located = located_points(plan)
    return located[1] if len(located) >= 2 else None


class _PlanGate:
    """Forwards a step's events; when the plan is complete (its first action token) and `hold` changes
    it, stops the generation (`cut`) and forwards nothing more. `held` is the changed plan."""

    def __init__(self, hold: Callable[[str], str | None], on_event: Callable[[Event], None] | None) -> None:
        self.hold, self.on_event = hold, on_event
        self.cut = threading.Event()
        self.plan = ""
        self.held: str | None = None
        self._decided = False

    def __call__(self, event: Event) -> None:
        if self.cut.is_set():
            return
        if isinstance(event, PlanDelta):
            self.plan = event.plan
        elif isinstance(event, ActionTokenEvent) and not self._decided:
            self._decided = True
            self.held = self.hold(self.plan)
            if self.held is not None:
                self.cut.set()
                return
        if self.on_event is not None:
            self.on_event(event)


class _Either:
    """Set when either event is (what a backend's `stop` reads: `is_set`, and `wait` for backoffs)."""

    def __init__(self, a: threading.Event, b: threading.Event) -> None:
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.a.wait(timeout) or self.b.is_set()


def _gripper_opening(observation: Observation) -> float | None:
    """The arm's reported opening, or None when it reports none (NaN) or there is no arm state."""
    arm = getattr(observation, "arm", None)
    value = getattr(arm, "gripper", None)
    if value is None:
        return None
    value = float(value)
    return value if value == value else None


def _ee_position(observation: Observation) -> tuple[float, float, float] | None:
    """The arm's reported end-effector position, or None when it has none (or not a finite one)."""
    xyz = getattr(getattr(observation, "arm", None), "ee_xyz_m", None)
    if xyz is None:
        return None
    values = [float(v) for v in xyz]
    if len(values) != 3 or not all(v == v and abs(v) != float("inf") for v in values):
        return None
    return values[0], values[1], values[2]


class OraclePlanPolicy(VLAPolicy):
    """Diagnostic: the plan comes from the simulator, the model writes only the eight action tokens.

    Every step the task's canonical plan, grounded with the objects' true image points when the
    model was trained on grounded plans ("pick up the apple at 30 41"), is given as text exactly as
    plan reuse gives the model's own plan. Success under this policy is the model's acting ability
    with perfect reasoning and perfect localisation (ECoT's oracle-reasoning check); the gap to the
    plain policy is what the model's own plans cost.
    """

    def __init__(self, backend: Backend, sim, grounded: bool = True, **kwargs) -> None:
        super().__init__(backend, **kwargs)
        self.sim = sim
        self.grounded = grounded
        self.name = f"vla+oracle-plan:{getattr(backend, 'name', type(backend).__name__)}"

    def oracle_plan(self) -> str:
        from rt2_cot.data.grounding import ground_plan, scene_points

        task = self.sim.task
        if not self.grounded:
            return task.plan
        # Points in the 0..255 units of the full camera frame, as datagen records them.
        w, h = self.sim.config.width, self.sim.config.height
        return ground_plan(task.plan, task.target, task.reference, scene_points(self.sim, w, h), task.tiles)

    def _needs_plan(self, instruction: str) -> bool:
        return False

    def step(self, observation: Observation, on_event: Callable[[Event], None] | None = None) -> PolicyOutput:
        if observation.instruction != self._instruction:
            self.reset(observation.instruction)
        self._plan = self.oracle_plan()
        return super().step(observation, on_event)
