"""ControlLoop: event order, ends (terminate, success, step limit, stop, e-stop, error), rate, watchdog."""

from __future__ import annotations

import threading
import time

import numpy as np

from robot_io.types import ArmState, CameraIntrinsics, EndEffectorCommand, Frame
from rt2_cot.action_codec import ActionCodec
from rt2_cot.control_loop import ControlLoop
from rt2_cot.events import ActionComplete, ActionTokenEvent, PlanDelta
from rt2_cot.loop_events import EpisodeEnded, EpisodeStarted, StepRecord, StreamEvent
from rt2_cot.policy import PolicyOutput

K = CameraIntrinsics(32, 24, 30.0, 30.0, 16.0, 12.0)


class TinyCamera:
    def __init__(self) -> None:
        self.reads = 0

    def read(self) -> Frame:
        self.reads += 1
        return Frame(np.zeros((24, 32, 3), np.uint8), None, 0.001, K, time.monotonic(), self.reads)


class TinyArm:
    def __init__(self) -> None:
        self.xyz = np.zeros(3)
        self.applied: list[EndEffectorCommand] = []

    def state(self) -> ArmState:
        return ArmState(self.xyz.copy(), np.zeros(3), 1.0)

    def apply(self, command: EndEffectorCommand) -> EndEffectorCommand:
        self.xyz = self.xyz + np.asarray(command.delta_xyz_m)
        self.applied.append(command)
        return command

    def stop(self) -> None:
        pass


class PassThroughShield:
    """The SafetyShield interface with no limits: enough to test the loop's own behaviour."""

    def __init__(self, arm: TinyArm) -> None:
        self.arm = arm
        self.estopped = False
        self.last_notes: tuple[str, ...] = ()
        self.sent: list = []
        self.watchdog_calls = 0

    def send(self, command):
        if self.estopped or command is None:
            self.sent.append(None)
            return None
        self.sent.append(command)
        return self.arm.apply(command)

    def estop(self) -> None:
        self.estopped = True

    def reset_estop(self) -> None:
        self.estopped = False

    def hold_if_stale(self) -> None:
        self.watchdog_calls += 1


class ScriptedPolicy:
    name = "scripted"

    def __init__(self, terminate_at: int = 10**9, delay_s: float = 0.0, fail_at: int = -1, none_at: int = -1):
        self.terminate_at, self.delay_s, self.fail_at, self.none_at = terminate_at, delay_s, fail_at, none_at
        self.codec = ActionCodec()
        self.resets: list[str] = []
        self.on_step = None

    def reset(self, instruction: str) -> None:
        self.resets.append(instruction)

    def step(self, observation, on_event=None):
        if self.on_step:
            self.on_step(observation.step)
        if observation.step == self.fail_at:
            raise RuntimeError("policy crashed")
        time.sleep(self.delay_s)
        tokens = [1 if observation.step >= self.terminate_at else 0, 140, 128, 128, 128, 128, 128, 255]
        command = self.codec.decode(tokens)
        if on_event:
            on_event(PlanDelta("go", "go"))
            for i, t in enumerate(tokens):
                on_event(ActionTokenEvent(i, t))
            on_event(ActionComplete(tuple(tokens), command, "go", "text"))
        if observation.step == self.none_at:
            return PolicyOutput(None, None, "go", "garbage", error="unparseable")
        return PolicyOutput(command, tuple(tokens), "go", "text")


def _rig(**policy_kwargs):
    arm = TinyArm()
    shield = PassThroughShield(arm)
    return TinyCamera(), shield, ScriptedPolicy(**policy_kwargs)


def test_events_arrive_in_order_and_terminate_ends_the_episode():
    camera, shield, policy = _rig(terminate_at=3)
    events = []
    loop = ControlLoop(camera, shield, policy, [events.append], rate_hz=1000, max_steps=50)
    ended = loop.run_episode("pick up the rock")
    assert ended.reason == "terminate" and ended.steps == 4 and ended.success is None
    assert isinstance(events[0], EpisodeStarted) and events[0].instruction == "pick up the rock"
    assert isinstance(events[-1], EpisodeEnded) and events[-1] is ended
    steps = [e for e in events if isinstance(e, StepRecord)]
    assert [s.step for s in steps] == [0, 1, 2, 3]
    # Every step's stream events come before that step's record.
    kinds = [(type(e).__name__, getattr(e, "step", None)) for e in events[1:-1]]
    for i in range(len(steps)):
        streams = [j for j, k in enumerate(kinds) if k == ("StreamEvent", i)]
        record = kinds.index(("StepRecord", i))
        assert streams and max(streams) < record
        if i + 1 < len(steps):
            assert record < kinds.index(("StreamEvent", i + 1))
    assert all(
        isinstance(e.event, (PlanDelta, ActionTokenEvent, ActionComplete))
        for e in events
        if isinstance(e, StreamEvent)
    )
    assert policy.resets == ["pick up the rock"]
    assert shield.watchdog_calls == 4
    assert steps[0].command_sent is not None and steps[0].arm_state.ee_xyz_m[0] == 0.0
    assert steps[1].arm_state.ee_xyz_m[0] > 0.0, "the observation after a step sees the arm moved"


def test_success_fn_and_step_limit():
    camera, shield, policy = _rig()
    arm = shield.arm
    loop = ControlLoop(
        camera, shield, policy, rate_hz=1000, max_steps=50, success_fn=lambda: arm.xyz[0] > 0.012
    )
    ended = loop.run_episode("push")
    assert ended.reason == "success" and ended.success is True and ended.steps == 3
    loop = ControlLoop(camera, shield, policy, rate_hz=1000, max_steps=5, success_fn=lambda: False)
    ended = loop.run_episode("push")
    assert ended.reason == "step_limit" and ended.steps == 5 and ended.success is False


def test_stop_from_another_thread_ends_within_one_step():
    camera, shield, policy = _rig(delay_s=0.02)
    loop = ControlLoop(camera, shield, policy, rate_hz=20, max_steps=1000)
    stopped_at = {}

    def on_step(step):
        if step == 3:
            stopped_at["step"] = step
            threading.Thread(target=loop.stop).start()
            time.sleep(0.01)

    policy.on_step = on_step
    t0 = time.monotonic()
    ended = loop.run_episode("go")
    assert ended.reason == "stop"
    assert ended.steps == stopped_at["step"] + 1, "the step in progress finishes, no further step starts"
    assert time.monotonic() - t0 < 1.0


def test_estop_through_the_shield_ends_the_episode_and_nothing_more_is_sent():
    camera, shield, policy = _rig()
    policy.on_step = lambda step: shield.estop() if step == 2 else None
    loop = ControlLoop(camera, shield, policy, rate_hz=1000, max_steps=100)
    ended = loop.run_episode("go")
    assert ended.reason == "estop" and ended.steps == 3
    assert shield.sent[-1] is None and len(shield.arm.applied) == 2
    # A latched e-stop refuses the next episode before any step.
    ended = loop.run_episode("go again")
    assert ended.reason == "estop" and ended.steps == 0


def test_rate_is_honoured_without_busy_waiting():
    camera, shield, policy = _rig(terminate_at=9)
    loop = ControlLoop(camera, shield, policy, rate_hz=25, max_steps=100)
    t0, c0 = time.monotonic(), time.process_time()
    ended = loop.run_episode("go")
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    assert ended.steps == 10
    assert 0.30 < wall < 0.8, f"10 steps at 25 Hz should take ~0.36 s, took {wall:.2f}"
    assert cpu < 0.5 * wall, "the loop sleeps between steps"


def test_unparseable_output_holds_and_continues():
    camera, shield, policy = _rig(terminate_at=4, none_at=1)
    records = []
    loop = ControlLoop(
        camera, shield, policy, [lambda e: records.append(e) if isinstance(e, StepRecord) else None], 1000
    )
    ended = loop.run_episode("go")
    assert ended.reason == "terminate"
    assert records[1].command_sent is None and records[1].output.error == "unparseable"
    assert len(shield.arm.applied) == 4


def test_policy_error_ends_with_reason_error_and_a_broken_subscriber_does_not():
    camera, shield, policy = _rig(fail_at=2)

    def broken(event):
        raise ValueError("subscriber bug")

    loop = ControlLoop(camera, shield, policy, [broken], rate_hz=1000)
    ended = loop.run_episode("go")
    assert ended.reason == "error" and "policy crashed" in ended.message and ended.steps == 2
    assert shield.sent[-1] is None, "after an error the arm is held"


def test_step_once_starts_a_new_episode_on_a_new_instruction():
    camera, shield, policy = _rig()
    events = []
    loop = ControlLoop(camera, shield, policy, [events.append])
    r0 = loop.step_once("a")
    r1 = loop.step_once("a")
    r2 = loop.step_once("b")
    assert (r0.step, r1.step, r2.step) == (0, 1, 0)
    assert r0.episode_id == r1.episode_id != r2.episode_id
    assert [e.instruction for e in events if isinstance(e, EpisodeStarted)] == ["a", "b"]


def test_stop_cancels_a_streaming_policy_and_a_later_single_step_still_runs():
    camera, shield, policy = _rig()
    policy.stop_event = threading.Event()
    loop = ControlLoop(camera, shield, policy)
    loop.stop()
    assert policy.stop_event.is_set(), "stop() reaches into a generating policy"
    record = loop.step_once("a")
    assert record.command_sent is not None and not policy.stop_event.is_set()
