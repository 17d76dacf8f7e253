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
        templates[name] = template
    return templates


def get_template(style: str) -> PromptTemplate:
    templates = load_templates()
    if style not in templates:
        raise ConfigError(f"unknown prompt style {style!r}; choose one of {', '.join(templates)}")
    return templates[style]


def render_prompt(style: str, instruction: str, given_plan: str | None = None) -> RenderedPrompt:
    """The prompt for `instruction`; with `given_plan`, also the plan and action marker as given text.

    Templates without a plan (plain, openvla) ignore `given_plan`: there is nothing to reuse.
    """
    template = get_template(style)
    prompt = template.prompt.format(instruction=instruction.strip())
    continuation = ""
    if given_plan is not None and template.given_plan is not None:
        # The template adds the sentence's full stop; a plan that already has one must not get two.
        continuation = template.given_plan.format(plan=given_plan.strip().rstrip(".").strip())
    return RenderedPrompt(prompt=prompt, continuation=continuation, separator=template.separator)


def build_prompt(style: str, instruction: str, given_plan: str | None = None) -> str:
    """One string: e.g. `Instruction: bring me a drink Plan: pick up the can. Action:`."""
    return render_prompt(style, instruction, given_plan).text
