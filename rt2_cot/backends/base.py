"""The backend protocol: an image + instruction in, a stream of generated text chunks out.

Backends only generate text under the action constraint; `rt2_cot.streaming` parses it into
events and `rt2_cot.codec` decodes actions, so every backend is held to the same grammar.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

PromptStyle = Literal["cot", "plain"]


@dataclass
class GenerationRequest:
    """One step's input.

    `given_plan`: plan reuse. The backend feeds `Plan: {given_plan}. Action:` as given text
    (one prefill, not token-by-token decoding) and generates only the action tokens; the stream
    then starts after the action marker.
    """

    image: np.ndarray  # HxWx3 uint8 RGB
    instruction: str
    depth: np.ndarray | None = None  # HxW float32 metres, NaN = no reading
    prompt_style: PromptStyle = "cot"
    given_plan: str | None = None
    # The arm's gripper opening (0 closed .. 1 open) when known. Stated in the prompt only for models
    # trained with it (`gripper_in_prompt` in their config); other models never see it.
    gripper: float | None = None
    # The gripper opening this policy commanded at its previous step (before the shield; None at an
    # episode's first step). Models trained with `gripper_motion_in_prompt` are told which way the
    # gripper is going ("Gripper: 50 closing"), which the opening alone does not say.
    gripper_command: float | None = None
    # The end-effector position (metres, arm base frame) when known; stated only to models trained
    # with it (`position_in_prompt`), which cannot act without it.
    ee_xyz: tuple[float, float, float] | None = None
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy
    seed: int | None = None


@dataclass(frozen=True)
class PromptState:
    """The robot state a model's prompt states (None: not stated), see `prompt_state`."""

    gripper: float | None = None
    position: tuple[int, int, int] | None = None
    motion: str | None = None


def prompt_state(model_config, request: GenerationRequest) -> PromptState:
    """What of the arm's state a model's prompt states: only what it was trained with.

    `gripper_in_prompt`: the opening; open (1.0) when the request has none, as at the start of
    every training episode (`rt2-cot act` on a still image, a client that sends no state).
    `gripper_motion_in_prompt`: which way the gripper is going, from the request's
    `gripper_command` (none stated without one, as at an episode's first step).
    `position_in_prompt`: the end-effector position as integers over the model's `position_box`;
    there is no safe guess for it, so a request without one is refused.
    """
    from rt2_cot.errors import BackendError
    from rt2_cot.prompts import gripper_motion, position_bins

    gripper = position = motion = None
    if getattr(model_config, "gripper_in_prompt", False):
        gripper = 1.0 if request.gripper is None else float(request.gripper)
        if getattr(model_config, "gripper_motion_in_prompt", False):
            motion = gripper_motion(gripper, request.gripper_command)
    if getattr(model_config, "position_in_prompt", False):
        if request.ee_xyz is None:
            raise BackendError(
                "this model acts from the arm's end-effector position (position_in_prompt) and the "
                "request has none: run it with an arm, send `robot_state.ee_xyz` to a server, or pass "
                "`rt2-cot act --ee-xyz X Y Z`"
            )
        position = position_bins(request.ee_xyz, model_config.position_box)
    return PromptState(gripper, position, motion)


def request_prompt(model_config, request: GenerationRequest):
    """The request's prompt as `model_config`'s model was trained to read it (`RenderedPrompt`):
    the template, the given plan, and the arm state `prompt_state` says it states."""
    from rt2_cot.prompts import render_prompt

    state = prompt_state(model_config, request)
    return render_prompt(
        request.prompt_style,
        request.instruction,
        request.given_plan,
        state.gripper,
        state.position,
        state.motion,
    )


class Backend(Protocol):
    name: str

    def stream(self, request: GenerationRequest, stop: threading.Event | None = None) -> Iterator[str]:
        """Yield generated text chunks in order. Stops within one token once `stop` is set.

        Raises BackendError (a user-facing message) if generation cannot happen at all.
        """
        ...
