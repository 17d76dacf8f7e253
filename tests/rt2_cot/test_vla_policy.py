"""VLAPolicy (plan reuse, observation -> request) and run_step (timing, parse failures), on a fake backend."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from robot_io.types import ArmState, CameraIntrinsics, Frame
from rt2_cot.backends.base import GenerationRequest
from rt2_cot.errors import BackendError, ConfigError
from rt2_cot.events import ActionComplete, ParseFailure
from rt2_cot.policy import Observation
from rt2_cot.step import run_step
from rt2_cot.vla_policy import VLAPolicy


class ScriptedBackend:
    """Answers like a model would: a plan + action, or only the action when the plan is given."""

    name = "scripted"

    def __init__(self, plan_text="Plan: pick up the rock. Action: 0 131 119 96 128 128 128 255", delay_s=0.0):
        self.plan_text = plan_text
        self.delay_s = delay_s
        self.requests: list[GenerationRequest] = []

    def stream(self, request, stop=None):
        self.requests.append(request)
        text = " 0 128 128 128 128 128 128 255" if request.given_plan else self.plan_text
        for word in text.split(" "):
            if stop is not None and stop.is_set():
                return
            time.sleep(self.delay_s)
            yield word + " "


def observation(instruction="pick up the rock", step=0, depth=True) -> Observation:
    depth_raw = np.full((4, 6), 500, dtype=np.uint16)
    depth_raw[0, 0] = 0
    frame = Frame(
        color=np.zeros((4, 6, 3), np.uint8),
        depth=depth_raw if depth else None,
        depth_scale_m=0.001,
        intrinsics=CameraIntrinsics(6, 4, 5.0, 5.0, 3.0, 2.0),
        timestamp_s=0.0,
        index=step,
    )
    return Observation(
        frame=frame, arm=ArmState(np.zeros(3), np.zeros(3), 1.0), instruction=instruction, step=step
    )


def test_replan_every_step_by_default():
    backend = ScriptedBackend()
    policy = VLAPolicy(backend)
    policy.reset("pick up the rock")
    for step in range(3):
        out = policy.step(observation(step=step))
        assert out.replanned and out.plan == "pick up the rock" and out.command is not None
    assert [r.given_plan for r in backend.requests] == [None, None, None]


def test_plan_reuse_every_n_steps_and_on_instruction_change():
    backend = ScriptedBackend()
    policy = VLAPolicy(backend, replan_every=3)
    policy.reset("pick up the rock")
    outs = [policy.step(observation(step=s)) for s in range(5)]
    assert [o.replanned for o in outs] == [True, False, False, True, False]
    assert [r.given_plan for r in backend.requests] == [
        None,
        "pick up the rock",
        "pick up the rock",
        None,
        "pick up the rock",
    ]
    assert all(o.plan == "pick up the rock" and o.command is not None for o in outs)
    out = policy.step(observation(instruction="put the rock down", step=5))
    assert out.replanned and backend.requests[-1].given_plan is None


def test_failed_plan_is_not_reused():
    backend = ScriptedBackend(plan_text="Plan: pick up the rock. Action: 0 999 1 1 1 1 1 1")
    policy = VLAPolicy(backend, replan_every=0)
    policy.reset("pick up the rock")
    first, second = policy.step(observation()), policy.step(observation(step=1))
    assert first.command is None and "not 0..255" in first.error
    assert second.replanned and backend.requests[1].given_plan is None


def test_plain_prompt_never_gives_a_plan():
    backend = ScriptedBackend(plan_text="1 143 129 123 145 114 115 127")
    policy = VLAPolicy(backend, prompt_style="plain", replan_every=5)
    policy.reset("x")
    for step in range(2):
        assert policy.step(observation("x", step)).command is not None
    assert all(r.given_plan is None and r.prompt_style == "plain" for r in backend.requests)


def test_observation_becomes_the_request():
    backend = ScriptedBackend()
    policy = VLAPolicy(backend, temperature=0.7, seed=10, max_new_tokens=40)
    policy.reset("pick up the rock")
    policy.step(observation())
    policy.step(observation(step=1, depth=False))
    first, second = backend.requests
    assert first.image.shape == (4, 6, 3) and first.depth.dtype == np.float32
    assert first.depth[1, 1] == pytest.approx(0.5) and np.isnan(first.depth[0, 0])
    assert second.depth is None
    assert (first.temperature, first.max_new_tokens, first.seed, second.seed) == (0.7, 40, 10, 11)
    assert first.gripper == 1.0  # the arm's state travels with the request
    assert first.ee_xyz == (0.0, 0.0, 0.0)
    # ... and what the policy asked the gripper for at its previous step (none at the first).
    assert first.gripper_command is None
    assert second.gripper_command == 1.0  # the scripted action's gripper bin 255
    policy.reset("pick up the rock")
    policy.step(observation())
    assert backend.requests[-1].gripper_command is None  # a new episode starts without one


def test_an_arm_without_a_gripper_reading_sends_none():
    backend = ScriptedBackend()
    policy = VLAPolicy(backend)
    obs = observation()
    obs.arm = ArmState(np.full(3, np.nan), np.zeros(3), float("nan"))
    policy.step(obs)
    assert backend.requests[-1].gripper is None and backend.requests[-1].ee_xyz is None


def test_run_step_times_and_streams_events():
    backend = ScriptedBackend(delay_s=0.01)
    events = []
    out = run_step(
        backend,
        GenerationRequest(image=np.zeros((2, 2, 3), np.uint8), instruction="x"),
        on_event=events.append,
    )
    assert out.tokens == (0, 131, 119, 96, 128, 128, 128, 255)
    assert 5 <= out.ttft_ms < out.latency_ms
    assert out.latency_ms >= 10 * 10 * 0.9
    assert isinstance(events[-1], ActionComplete)


def test_run_step_parse_failure_moves_nothing():
    backend = ScriptedBackend(plan_text="Plan: I refuse.")
    events = []
    out = run_step(
        backend,
        GenerationRequest(image=np.zeros((2, 2, 3), np.uint8), instruction="x"),
        on_event=events.append,
    )
    assert out.command is None and out.tokens is None and "Action" in out.error
    assert isinstance(events[-1], ParseFailure)


def test_stop_event_ends_the_step_without_an_action():
    backend = ScriptedBackend(delay_s=0.02)
    policy = VLAPolicy(backend)
    policy.reset("x")
    threading.Timer(0.05, policy.stop_event.set).start()
    out = policy.step(observation("x"))
    assert out.command is None and "stopped" in out.error
    assert policy.plan is None


def test_backend_errors_propagate():
    class Broken:
        name = "broken"

        def stream(self, request, stop=None):
            raise BackendError("server went away")
            yield ""

    with pytest.raises(BackendError, match="went away"):
        run_step(Broken(), GenerationRequest(image=np.zeros((2, 2, 3), np.uint8), instruction="x"))


def test_negative_replan_every_is_refused():
    with pytest.raises(ConfigError):
        VLAPolicy(ScriptedBackend(), replan_every=-1)


class WanderingBackend(ScriptedBackend):
    """A model whose plan puts the reference somewhere else at every fresh plan (a pointer that loses
    the triangle under the arm); with the plan given, it answers with an action only."""

    def __init__(self, references):
        super().__init__()
        self.references = list(references)
        self.fresh = 0

    def stream(self, request, stop=None):
        if request.given_plan is None:
            x, y = self.references[min(self.fresh, len(self.references) - 1)]
            self.fresh += 1
            self.plan_text = f"Plan: place the green ball at 76 124 on the triangle at {x} {y}. Action: 0 128 128 128 128 128 128 255"
        yield from super().stream(request, stop)


def test_held_reference_keeps_the_first_reading_of_where_the_object_goes():
    from rt2_cot.events import ActionTokenEvent, PlanDelta

    backend = WanderingBackend([(112, 101), (112, 101), (40, 200), (113, 99)])
    policy = VLAPolicy(backend, hold_reference=True)
    policy.reset("put the green ball on the triangle")
    events = [[] for _ in range(4)]
    outs = [
        policy.step(observation("put the green ball on the triangle", s), events[s].append) for s in range(4)
    ]
    held = "place the green ball at 76 124 on the triangle at 112 101"
    assert [o.plan for o in outs] == [held] * 3 + [held.replace("112 101", "113 99")]
    assert all(o.command is not None and o.replanned for o in outs)
    # Plans that agree with the memory (within HOLD_TOLERANCE) are one pass; the others stop after
    # the plan, then act on the plan with the remembered point.
    assert [r.given_plan for r in backend.requests] == [None, None, None, held, None]
    assert "model_plan" not in outs[1].extras
    assert outs[2].extras["model_plan"].endswith("on the triangle at 40 200")
    # The wandering plan streamed live, then the held one; its action tokens arrive only once.
    plans = [e.plan for e in events[2] if isinstance(e, PlanDelta)]
    assert plans[-1] == held and any(p.endswith("40 200") for p in plans)
    assert sum(isinstance(e, ActionTokenEvent) for e in events[2]) == 8
    # A new episode forgets: its first plan is the new memory.
    policy.reset("put the green ball on the triangle")
    backend.references, backend.fresh = [(30, 30)], 0
    assert policy.step(observation("put the green ball on the triangle", 0)).plan.endswith("at 30 30")


def test_without_held_reference_every_plan_is_the_models_own():
    backend = WanderingBackend([(112, 101), (40, 200)])
    policy = VLAPolicy(backend, hold_reference=False)
    policy.reset("put the green ball on the triangle")
    outs = [policy.step(observation("put the green ball on the triangle", s)) for s in range(2)]
    assert outs[1].plan.endswith("on the triangle at 40 200")
    assert [r.given_plan for r in backend.requests] == [None, None]
    assert policy.name == "vla:scripted (reference not held)" and VLAPolicy(backend).name == "vla:scripted"
