"""The simulated arm: the MuJoCo tabletop's mocap gripper behind the `Arm` interface."""

from __future__ import annotations

import threading

from robot_io.arms.base import Arm
from robot_io.errors import ArmError
from robot_io.types import ArmState, EndEffectorCommand


class SimArm(Arm):
    """Drives `TabletopSim`'s gripper. Share the sim with a `SimCamera` so both see one world.

    `apply` runs one control step of physics (1/control_hz of simulated time) and returns the
    command the simulator actually executed after its own reach limits.
    """

    name = "sim"

    def __init__(self, sim) -> None:  # sim: robot_io.sim.env.TabletopSim (untyped: lazy mujoco import)
        self.sim = sim
        self._connected = False
        self._stopped = threading.Event()

    def connect(self) -> None:
        self._connected = True
        self._stopped.clear()

    def home(self) -> None:
        self.sim.home()

    def state(self) -> ArmState:
        state = self.sim.ee_state()
        state.connected = self._connected
        state.holding = state.holding or self._stopped.is_set()
        return state

    def apply(self, command: EndEffectorCommand) -> EndEffectorCommand:
        if not self._connected:
            raise ArmError("the sim arm is not connected; call connect() (or use it as a context manager)")
        self._stopped.clear()
        return self.sim.apply(command)

    def stop(self) -> None:
        # The mocap gripper has no momentum, so stopping is immediate; the shield (not the arm)
        # latches e-stops and decides when motion may resume. Reported as `holding` until the next step.
        self._stopped.set()

    def disconnect(self) -> None:
        self._connected = False
