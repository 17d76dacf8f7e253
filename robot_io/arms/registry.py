"""Build an arm from a `--arm` spec: `sim`, `none`, `xarm:IP`. One explicit dict of kinds."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from robot_io.arms.base import Arm
from robot_io.errors import ArmError
from robot_io.types import ArmState, EndEffectorCommand

NULL_HOME_XYZ_M = (0.40, 0.0, 0.20)  # the simulator's home, so a camera-only session starts alike


class NullArm(Arm):
    """No hardware: integrates commands into a virtual pose, for camera-only sessions.

    It lets the whole loop (policy, shield, recording) run against a real camera with nothing
    moving; the shield still clips against the virtual pose, so the logged actions are the ones a
    real arm would have received from the same start.
    """

    name = "none"

    def __init__(self, home_xyz_m: tuple[float, float, float] = NULL_HOME_XYZ_M) -> None:
        self._home = np.asarray(home_xyz_m, dtype=float)
        self._lock = threading.Lock()
        self._xyz = self._home.copy()
        self._rpy = np.zeros(3)
        self._gripper = 1.0
        self._holding = False
        self.connected = False

    def connect(self) -> None:
        self.connected = True

    def home(self) -> None:
        with self._lock:
            self._xyz, self._rpy, self._gripper = self._home.copy(), np.zeros(3), 1.0

    def state(self) -> ArmState:
        with self._lock:
            return ArmState(
                self._xyz.copy(),
                self._rpy.copy(),
                self._gripper,
                connected=self.connected,
                holding=self._holding,
            )

    def apply(self, command: EndEffectorCommand) -> EndEffectorCommand:
        with self._lock:
            self._holding = command.terminate
            if not command.terminate:
                self._xyz = self._xyz + np.asarray(command.delta_xyz_m, dtype=float)
                self._rpy = self._rpy + np.asarray(command.delta_rpy_rad, dtype=float)
                self._gripper = float(command.gripper)
        return command

    def stop(self) -> None:
        self._holding = True

    def disconnect(self) -> None:
        self.connected = False


def _make_sim(arg: str, sim=None, **kw) -> Arm:
    from robot_io.arms.sim_arm import SimArm

    if sim is None:
        from robot_io.sim.env import TabletopSim

        sim = TabletopSim(**kw)
    return SimArm(sim)


def _make_none(arg: str, **kw) -> Arm:
    return NullArm(**kw)


def _make_xarm(arg: str, **kw) -> Arm:
    from robot_io.arms.xarm import XArm, XArmConfig

    if not arg:
        raise ArmError("xarm needs the controller's address: --arm xarm:192.168.1.185")
    api_factory = kw.pop("api_factory", None)
    return XArm(XArmConfig(ip=arg, **kw), api_factory=api_factory)


# kind -> (constructor(arg, **kw), whether the kind takes an argument, usage shown in errors)
ARM_KINDS: dict[str, tuple[Callable[..., Arm], bool, str]] = {
    "sim": (_make_sim, False, "sim (the MuJoCo tabletop)"),
    "none": (_make_none, False, "none (no arm: a virtual pose, for camera-only sessions)"),
    "xarm": (_make_xarm, True, "xarm:IP (a UFACTORY xArm, e.g. xarm:192.168.1.185)"),
}


def make_arm(spec: str, **kw) -> Arm:
    """An unconnected arm for `spec`; keyword arguments go to its constructor/config."""
    kind, _, arg = spec.strip().partition(":")
    entry = ARM_KINDS.get(kind.lower())
    if entry is None or (not entry[1] and arg):
        forms = ", ".join(usage for _, _, usage in ARM_KINDS.values())
        raise ArmError(f"unknown arm {spec!r}; use one of: {forms}")
    return entry[0](arg, **kw)
