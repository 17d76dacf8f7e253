"""Render the prompt templates in `prompts/templates.yaml` (prompts are data, not Python strings)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from rt2_cot.errors import ConfigError

TEMPLATES_PATH = Path(__file__).resolve().parents[1] / "prompts" / "templates.yaml"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    prompt: str
    separator: str = " "
    given_plan: str | None = None
    plan_marker: str | None = None
    action_marker: str | None = None
    num_action_tokens: int = 8
    state: str | None = None
    position: str | None = None
    description: str = ""

    @property
    def has_plan(self) -> bool:
        return self.plan_marker is not None


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt split where the model's own output would begin.

    `continuation` is given text that stands in for the start of the output (plan reuse); backends
    whose processors append their own separator after the prompt (PaliGemma adds "\\n") tokenize
    it separately and append it after that separator.
    """

    prompt: str
    continuation: str
    separator: str

    @property
    def text(self) -> str:
        return self.prompt + (self.separator + self.continuation if self.continuation else "")


@functools.cache
def load_templates(path: Path = TEMPLATES_PATH) -> dict[str, PromptTemplate]:
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"prompt templates not found at {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"prompt templates {path} are not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must map template names to templates")
    templates = {}
    for name, fields in raw.items():
        if (
            not isinstance(fields, dict)
            or "prompt" not in fields
            or "{instruction}" not in str(fields["prompt"])
        ):
            raise ConfigError(f"template {name!r} in {path} needs a `prompt` containing {{instruction}}")
        known = set(PromptTemplate.__dataclass_fields__) - {"name"}
        unknown = set(fields) - known
        if unknown:
            raise ConfigError(f"template {name!r} in {path} has unknown fields {sorted(unknown)}")
        template = PromptTemplate(name=name, **fields)
        if template.given_plan is not None and "{plan}" not in template.given_plan:
            raise ConfigError(f"template {name!r}: `given_plan` must contain {{plan}}")
        if template.state is not None and "{gripper}" not in template.state:
            raise ConfigError(f"template {name!r}: `state` must contain {{gripper}}")
        if template.position is not None and not all(f"{{{a}}}" in template.position for a in "xyz"):
            raise ConfigError(f"template {name!r}: `position` must contain {{x}}, {{y}} and {{z}}")
        templates[name] = template
    return templates


def get_template(style: str) -> PromptTemplate:
    templates = load_templates()
    if style not in templates:
        raise ConfigError(f"unknown prompt style {style!r}; choose one of {', '.join(templates)}")
    return templates[style]


def gripper_percent(opening: float) -> int:
    """A gripper opening (0 closed .. 1 open) as the integer percentage the prompt states."""
    value = float(opening)
    if value != value:  # NaN: an arm that cannot report its gripper
        raise ConfigError("gripper opening is not a number")
    return round(min(1.0, max(0.0, value)) * 100)


GRIPPER_MOTION_TOLERANCE = 0.05  # commanded and reported openings closer than this: at rest


def gripper_motion(opening: float | None, command: float | None) -> str | None:
    """Which way the gripper is going: "closing" / "opening" when the opening last commanded (before
    the shield) is below / above the one the arm reports, None at rest or without a command.

    The shield moves the gripper at most half-way a step, so a gripper reported at 50% is either
    closing on an object or opening to release one. From one frame these look alike, and a model
    told only "Gripper: 50" stopped an episode half-closed in 10 of 20 move-near tasks (model card).
    """
    if opening is None or command is None:
        return None
    if float(command) < float(opening) - GRIPPER_MOTION_TOLERANCE:
        return "closing"
    if float(command) > float(opening) + GRIPPER_MOTION_TOLERANCE:
        return "opening"
    return None


def position_bins(xyz, box) -> tuple[int, int, int]:
    """An end-effector position (metres, arm base frame) as three integers 0..255 over `box`
    ((x_min, x_max), (y_min, y_max), (z_min, z_max)); outside the box saturates at 0 or 255."""
    values = [float(v) for v in xyz]
    if len(values) != 3 or any(v != v for v in values):
        raise ConfigError(f"end-effector position must be three numbers, got {xyz!r}")
    out = []
    for v, (lo, hi) in zip(values, box, strict=True):
        out.append(round(min(1.0, max(0.0, (v - float(lo)) / (float(hi) - float(lo)))) * 255))
    return out[0], out[1], out[2]


def render_prompt(
    style: str,
    instruction: str,
    given_plan: str | None = None,
    gripper: float | None = None,
    position: tuple[int, int, int] | None = None,
    motion: str | None = None,
) -> RenderedPrompt:
    """The prompt for `instruction`; with `given_plan`, also the plan and action marker as given text.

    Templates without a plan (plain, openvla) ignore `given_plan`: there is nothing to reuse.
    Robot state, for models trained with it (`gripper_in_prompt` / `position_in_prompt` in their
    config), follows the instruction in templates that have the fields: `gripper` (the opening,
    0..1) as `state`, followed by `motion` ("closing" / "opening", `gripper_motion`) for models
    trained with `gripper_motion_in_prompt`, then `position` (the end-effector position as
    `position_bins`). Others ignore them.
    """
    template = get_template(style)
    prompt = template.prompt.format(instruction=instruction.strip())
    if gripper is not None and template.state is not None:
        prompt = f"{prompt} {template.state.format(gripper=gripper_percent(gripper))}"
        if motion is not None:
            if motion not in ("closing", "opening"):
                raise ConfigError(f"gripper motion must be 'closing' or 'opening', got {motion!r}")
            prompt = f"{prompt} {motion}"
    if position is not None and template.position is not None:
        x, y, z = (int(v) for v in position)
        prompt = f"{prompt} {template.position.format(x=x, y=y, z=z)}"
    continuation = ""
    if given_plan is not None and template.given_plan is not None:
        # The template adds the sentence's full stop; a plan that already has one must not get two.
        continuation = template.given_plan.format(plan=given_plan.strip().rstrip(".").strip())
    return RenderedPrompt(prompt=prompt, continuation=continuation, separator=template.separator)


def build_prompt(
    style: str,
    instruction: str,
    given_plan: str | None = None,
    gripper: float | None = None,
    position: tuple[int, int, int] | None = None,
    motion: str | None = None,
) -> str:
    """One string: e.g. `Instruction: bring me a drink Plan: pick up the can. Action:`."""
    return render_prompt(style, instruction, given_plan, gripper, position, motion).text
