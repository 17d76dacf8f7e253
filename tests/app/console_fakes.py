"""Small stand-ins for the devices, shield, policy and loop, so console tests do not depend on
the simulator or a trained model. They follow the real interfaces (robot_io / rt2_cot)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import numpy as np

from robot_io.arms.base import Arm
from robot_io.cameras.base import Camera
from robot_io.types import ArmState, CameraIntrinsics, EndEffectorCommand, Frame
from rt2_cot.action_codec import ActionCodec
from rt2_cot.events import ActionComplete, ActionTokenEvent, PlanDelta, TextDelta
from rt2_cot.loop_events import EpisodeEnded, EpisodeStarted, StepRecord, StreamEvent
from rt2_cot.policy import Observation, PolicyOutput

INTR = CameraIntrinsics(640, 480, 615.0, 615.0, 320.0, 240.0)


class FakeCamera(Camera):
    """A moving gradient with a plane of depth; each read is a new frame."""

    name = "fake"

    def __init__(self, width: int = 160, height: int = 120) -> None:
        super().__init__()
        self.w, self.h, self.n = width, height, 0
        self.connected = False

    @property
    def intrinsics(self) -> CameraIntrinsics:
        return INTR

    def connect(self) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def _read(self) -> Frame:
        self.n += 1
        color = np.zeros((self.h, self.w, 3), np.uint8)
        color[..., 0] = (np.arange(self.w) + self.n * 3) % 256
        color[..., 1] = np.arange(self.h)[:, None] % 256
        depth = np.full((self.h, self.w), 800, np.uint16)
        depth[:, : self.w // 2] = 600
        depth[:4] = 0
        return Frame(color, depth, 0.001, INTR, time.monotonic(), self.n)


class FakeArm(Arm):
    name = "fake"

    def __init__(self) -> None:
        self.xyz = np.array([0.45, 0.0, 0.2])
        self.grip = 1.0
        self.holding = False
        self.lock = threading.Lock()

    def connect(self) -> None:
        pass

    def home(self) -> None:
        pass

    def state(self) -> ArmState:
        with self.lock:
            return ArmState(self.xyz.copy(), np.zeros(3), self.grip, holding=self.holding)

    def apply(self, command: EndEffectorCommand) -> EndEffectorCommand:
        with self.lock:
            self.xyz = self.xyz + np.asarray(command.delta_xyz_m)
            self.grip = command.gripper
            self.holding = False
        return command

    def stop(self) -> None:
        with self.lock:
            self.holding = True


class FakeShield:
    """SafetyShield's interface: send/estop/reset_estop/estopped; e-stop wins."""

    def __init__(self, arm: FakeArm) -> None:
        self.arm = arm
        self._estop = threading.Event()
        self.last_notes: tuple[str, ...] = ()

    @property
    def estopped(self) -> bool:
        return self._estop.is_set()

    def estop(self) -> None:
        self._estop.set()
        self.arm.stop()

    def reset_estop(self) -> None:
        self._estop.clear()

    def send(self, command: EndEffectorCommand | None) -> EndEffectorCommand | None:
        if self._estop.is_set():
            self.arm.stop()
            return None
        if command is None:
            self.arm.stop()
            return None
        return self.arm.apply(command)

    def hold_if_stale(self) -> None:
        pass


class FakePolicy:
    """Streams a plan word by word, then eight tokens, with a little model-like latency."""

    name = "fake"

    def __init__(
        self, plan: str = "pick up the rock", token_delay_s: float = 0.01, terminate_after: int = 10**9
    ):
        self.plan, self.delay, self.terminate_after = plan, token_delay_s, terminate_after
        self.replan_every = 1
        self.codec = ActionCodec()

    def reset(self, instruction: str) -> None:
        pass

    def step(self, obs: Observation, on_event: Callable | None = None) -> PolicyOutput:
        emit = on_event or (lambda e: None)
        t0 = time.perf_counter()
        replan = obs.step % self.replan_every == 0
        text, ttft = "", None
        if replan:
            plan = ""
            for word in self.plan.split():
                time.sleep(self.delay)
                ttft = ttft or (time.perf_counter() - t0) * 1000
                plan = f"{plan} {word}".strip()
                emit(TextDelta(word + " "))
                emit(PlanDelta(word, plan))
        terminate = 1 if obs.step + 1 >= self.terminate_after else 0
        tokens = (terminate, 131, 125, 128, 128, 128, 128, 200)
        for i, t in enumerate(tokens):
            time.sleep(self.delay / 4)
            emit(ActionTokenEvent(i, t))
        cmd = self.codec.decode(tokens)
        text = f"Plan: {self.plan}. Action: {' '.join(map(str, tokens))}"
        emit(ActionComplete(tokens, cmd, self.plan, text))
        return PolicyOutput(
            cmd,
            tokens,
            self.plan,
            text,
            latency_ms=(time.perf_counter() - t0) * 1000,
            ttft_ms=ttft,
            replanned=replan,
        )


class FakeLoop:
    """The ControlLoop contract in a dozen lines: observe, decide, shield, notify, check the end."""

    def __init__(self, camera, shield, policy, subscribers=(), rate_hz=10.0, max_steps=100, success_fn=None):
        self.camera, self.shield, self.policy = camera, shield, policy
        self.subs, self.rate_hz, self.max_steps = list(subscribers), rate_hz, max_steps
        self._stop = threading.Event()
        self.episode_id = ""
        self.step_index = 0

    def _emit(self, ev) -> None:
        for s in self.subs:
            s(ev)

    def stop(self) -> None:
        self._stop.set()

    def _begin(self, instruction: str) -> None:
        self.episode_id = uuid.uuid4().hex[:8]
        self.step_index = 0
        self.policy.reset(instruction)
        self._emit(EpisodeStarted(self.episode_id, instruction, self.policy.name, time.time()))

    def _one(self, instruction: str) -> PolicyOutput:
        t0 = time.monotonic()
        frame = self.camera.read()
        state = self.shield.arm.state()
        obs = Observation(frame, state, instruction, self.step_index)
        out = self.policy.step(obs, lambda e: self._emit(StreamEvent(self.episode_id, obs.step, e)))
        sent = self.shield.send(out.command)
        hz = 1.0 / max(time.monotonic() - t0, 1e-6)
        self._emit(StepRecord(self.episode_id, obs.step, t0, instruction, frame, state, out, sent, (), hz))
        self.step_index += 1
        return out

    def step_once(self, instruction: str) -> StepRecord:
        if not self.episode_id:
            self._begin(instruction)
        return self._one(instruction)

    def run_episode(self, instruction: str) -> EpisodeEnded:
        self._stop.clear()
        self._begin(instruction)
        reason = "step_limit"
        while self.step_index < self.max_steps:
            t0 = time.monotonic()
            if self.shield.estopped:
                reason = "estop"
                break
            out = self._one(instruction)
            if self.shield.estopped:
                reason = "estop"
                break
            if out.command is not None and out.command.terminate:
                reason = "terminate"
                break
            if self._stop.is_set():
                reason = "stop"
                break
            time.sleep(max(0.0, 1.0 / self.rate_hz - (time.monotonic() - t0)))
        ended = EpisodeEnded(self.episode_id, reason, self.step_index, None)
        self._emit(ended)
        return ended
