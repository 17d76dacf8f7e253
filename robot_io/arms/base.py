"""The arm interface. Every arm is driven through `robot_io.safety.SafetyShield`, never directly."""

from __future__ import annotations

import abc

from robot_io.types import ArmState, EndEffectorCommand


class Arm(abc.ABC):
    """An arm with a gripper commanded by RT-2-style end-effector deltas in its base frame."""

    name: str = "arm"

    @abc.abstractmethod
    def connect(self) -> None:
        """Connect and enable motion. Raises ArmError with a message that says what to do."""

    @abc.abstractmethod
    def home(self) -> None:
        """Move to the home pose, gripper open."""

    @abc.abstractmethod
    def state(self) -> ArmState:
        """Current end-effector pose and gripper opening."""

    @abc.abstractmethod
    def apply(self, command: EndEffectorCommand) -> EndEffectorCommand:
        """Execute one (already shielded) step; return the command actually executed."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop moving now and hold position. Must be safe to call from any thread, at any time."""

    def disconnect(self) -> None:  # noqa: B027 - a deliberate no-op default: not every arm holds a connection
        """Release the arm. Safe to call twice."""

    def __enter__(self) -> Arm:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
