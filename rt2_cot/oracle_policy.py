"""The scripted oracle as a Policy: privileged simulator state in, RT-2 action tokens and a plan out.

Its commands go through the same ActionCodec as the model's (encode, then decode), so what the
arm executes is exactly what a perfect model could have written.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from loguru import logger

from rt2_cot.action_codec import ActionCodec
from rt2_cot.events import ActionComplete, ActionTokenEvent, Event, PlanDelta, TextDelta
from rt2_cot.policy import Observation, PolicyOutput


class OraclePolicy:
    """Solves the simulator's current task (`sim.task`). Needs the TabletopSim the camera renders."""

    name = "oracle"

    def __init__(self, sim, codec: ActionCodec | None = None) -> None:
        self.sim = sim
        self.codec = codec or ActionCodec()

    def reset(self, instruction: str) -> None:
        # The console may type an instruction different from the scene's task: pose it in the
        # current scene when its objects are there; otherwise keep solving the scene's own task.
        if not instruction or instruction.strip().lower() == self.sim.task.instruction.strip().lower():
            return
        from robot_io.errors import RobotIOError
        from robot_io.sim.tasks import task_from_instruction

        try:
            self.sim.retarget(task_from_instruction(instruction))
        except RobotIOError as exc:
            logger.warning(f"oracle keeps the scene's task {self.sim.task.instruction!r}: {exc}")

    def step(self, observation: Observation, on_event: Callable[[Event], None] | None = None) -> PolicyOutput:
        emit = on_event or (lambda event: None)
        t0 = time.perf_counter()
        command, plan = self.sim.oracle()
        tokens = self.codec.encode(command)
        executed = self.codec.decode(tokens)
        text = f"Plan: {plan}. Action: {ActionCodec.to_text(tokens)}"
        emit(TextDelta(text))
        emit(PlanDelta(plan, plan))
        for i, value in enumerate(tokens):
            emit(ActionTokenEvent(i, value))
        emit(ActionComplete(tuple(tokens), executed, plan, text))
        return PolicyOutput(
            command=executed,
            tokens=tuple(tokens),
            plan=plan,
            text=text,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
            replanned=True,
        )
