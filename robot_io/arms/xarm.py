"""UFACTORY xArm (5/6/7, Lite 6) driver through `xarm-python-sdk`, behind the `Arm` interface.

The unit conversions live in pure functions (`command_to_xarm_move`, `gripper_to_pulse`,
`pulse_to_gripper`, `xarm_pose_to_state`) so they are tested without an arm. The SDK is imported
only when an arm is connected.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from loguru import logger

from robot_io.arms.base import Arm
from robot_io.errors import ArmError
from robot_io.types import ArmState, EndEffectorCommand

# The xArm gripper's position is a pulse count: 850 is fully open, 0 closed (the controller
# accepts -10..850; below 0 only squeezes harder, which we never ask for).
GRIPPER_OPEN_PULSE = 850.0


@dataclass(frozen=True)
class XArmConfig:
    """How to reach and drive the arm. Speeds are deliberately slow for a demo next to people."""

    ip: str
    speed_mm_s: float = 100.0  # Cartesian speed of each relative move (SDK default is 100 mm/s)
    accel_mm_s2: float = 2000.0  # Cartesian acceleration (SDK default)
    gripper_speed: float = 3000.0  # pulses/s: a full close in ~0.3 s
    wait: bool = False  # don't block the loop: the next step's command queues behind this one
    home_xyz_mm: tuple[float, float, float] = (400.0, 0.0, 200.0)  # the sim's home, in mm
    home_rpy_deg: tuple[float, float, float] = (180.0, 0.0, 0.0)  # gripper pointing down
    has_gripper: bool = True


def command_to_xarm_move(command: EndEffectorCommand) -> dict[str, Any]:
    """Keyword arguments for `XArmAPI.set_position` executing one relative step.

    EndEffectorCommand deltas are metres and radians in the base frame; the SDK takes millimetres
    and (with is_radian=False) degrees. A terminate command is a zero move. With relative=True the
    controller adds the roll/pitch/yaw deltas to its current Euler angles, the same additive rule
    the simulator uses; for the small per-step rotations the shield allows (<= 0.25 rad) that is
    close to a rotation about the base axes.
    """
    if command.terminate:
        dx = dy = dz = droll = dpitch = dyaw = 0.0
    else:
        dx, dy, dz = (1000.0 * float(v) for v in command.delta_xyz_m)
        droll, dpitch, dyaw = (math.degrees(float(v)) for v in command.delta_rpy_rad)
    return {
        "x": dx,
        "y": dy,
        "z": dz,
        "roll": droll,
        "pitch": dpitch,
        "yaw": dyaw,
        "relative": True,
        "is_radian": False,
    }


def gripper_to_pulse(opening: float) -> int:
    """Gripper opening 0 (closed) .. 1 (open) -> xArm gripper pulse 0 .. 850 (clamped)."""
    if not math.isfinite(opening):
        raise ArmError(f"gripper opening must be a finite number in 0..1, got {opening}")
    return round(min(max(opening, 0.0), 1.0) * GRIPPER_OPEN_PULSE)


def pulse_to_gripper(pulse: float) -> float:
    """xArm gripper pulse -> opening 0..1 (readings slightly below 0 or above 850 are clamped)."""
    return min(max(float(pulse) / GRIPPER_OPEN_PULSE, 0.0), 1.0)


def xarm_pose_to_state(pose_mm_deg, gripper_pulse: float | None) -> ArmState:
    """`get_position(is_radian=False)` values [x, y, z (mm), roll, pitch, yaw (deg)] -> ArmState."""
    values = [float(v) for v in pose_mm_deg]
    if len(values) < 6:
        raise ArmError(f"the xArm reported a malformed pose {pose_mm_deg!r}; reconnect the arm")
    xyz = np.asarray(values[:3]) / 1000.0
    rpy = np.radians(np.asarray(values[3:6]))
    gripper = 1.0 if gripper_pulse is None else pulse_to_gripper(gripper_pulse)
    return ArmState(ee_xyz_m=xyz, ee_rpy_rad=rpy, gripper=gripper)


def _check(code: Any, what: str) -> None:
    """SDK calls return 0 on success, or a controller error code."""
    if isinstance(code, tuple | list):
        code = code[0]
    if code != 0:
        raise ArmError(
            f"xArm {what} failed with code {code}; check the arm's error LED / UFACTORY Studio, "
            "clear the error and reconnect"
        )


def _import_sdk():
    try:
        from xarm.wrapper import XArmAPI
    except ImportError as exc:
        raise ArmError(
            f"the xArm driver needs xarm-python-sdk ({exc}); install it with: pip install rt2-cot[xarm]"
        ) from exc
    return XArmAPI


class XArm(Arm):
    """A UFACTORY xArm in position mode, stepped by relative Cartesian moves."""

    name = "xarm"

    def __init__(self, config: XArmConfig, api_factory=None) -> None:
        # api_factory (ip -> XArmAPI-like object) lets tests substitute the SDK.
        self.config = config
        self._api_factory = api_factory
        self._api = None
        self._lock = threading.Lock()  # the SDK socket is not meant for concurrent commands
        self._holding = False
        self._last_gripper = 1.0

    @property
    def connected(self) -> bool:
        return self._api is not None and bool(getattr(self._api, "connected", True))

    def connect(self) -> None:
        if self._api is not None:
            return
        factory = self._api_factory or _import_sdk()
        try:
            api = factory(self.config.ip)
        except Exception as exc:  # the SDK raises plain exceptions for unreachable hosts
            raise ArmError(
                f"could not connect to the xArm at {self.config.ip}: {exc}; check the IP, the cable "
                "and that the controller is powered"
            ) from exc
        if not getattr(api, "connected", True):
            raise ArmError(f"could not connect to the xArm at {self.config.ip}; check the IP and the cable")
        api.clean_warn()
        api.clean_error()
        _check(api.motion_enable(enable=True), "motion_enable")
        _check(api.set_mode(0), "set_mode(position)")
        _check(api.set_state(0), "set_state(ready)")
        if self.config.has_gripper:
            _check(api.set_gripper_mode(0), "set_gripper_mode")
            _check(api.set_gripper_enable(True), "set_gripper_enable")
            _check(api.set_gripper_speed(self.config.gripper_speed), "set_gripper_speed")
        self._api = api
        logger.info("xArm at {} connected", self.config.ip)

    def _require(self):
        if self._api is None:
            raise ArmError("the xArm is not connected; call connect() (or use it as a context manager)")
        return self._api

    def home(self) -> None:
        api = self._require()
        x, y, z = self.config.home_xyz_mm
        roll, pitch, yaw = self.config.home_rpy_deg
        with self._lock:
            _check(
                api.set_position(
                    x=x,
                    y=y,
                    z=z,
                    roll=roll,
                    pitch=pitch,
                    yaw=yaw,
                    speed=self.config.speed_mm_s,
                    mvacc=self.config.accel_mm_s2,
                    relative=False,
                    is_radian=False,
                    wait=True,
                ),
                "home",
            )
            if self.config.has_gripper:
                _check(api.set_gripper_position(gripper_to_pulse(1.0), wait=True), "gripper open")
                self._last_gripper = 1.0

    def state(self) -> ArmState:
        api = self._require()
        with self._lock:
            code, pose = api.get_position(is_radian=False)
            _check(code, "get_position")
            pulse = None
            if self.config.has_gripper:
                gcode, pulse = api.get_gripper_position()
                _check(gcode, "get_gripper_position")
        state = xarm_pose_to_state(pose, pulse)
        if not self.config.has_gripper:
            state.gripper = self._last_gripper
        state.holding = self._holding
        return state

    def apply(self, command: EndEffectorCommand) -> EndEffectorCommand:
        api = self._require()
        move = command_to_xarm_move(command)
        with self._lock:
            if self._holding:
                # stop() put the controller in the stopped state; ready it again for this step.
                _check(api.set_state(0), "set_state(ready)")
                self._holding = False
            if not command.terminate:
                _check(
                    api.set_position(
                        **move,
                        speed=self.config.speed_mm_s,
                        mvacc=self.config.accel_mm_s2,
                        wait=self.config.wait,
                    ),
                    "set_position",
                )
            if self.config.has_gripper and command.gripper != self._last_gripper:
                _check(api.set_gripper_position(gripper_to_pulse(command.gripper), wait=False), "gripper")
            self._last_gripper = command.gripper
        return command

    def stop(self) -> None:
        # No lock: a stop must not wait behind a command in progress. set_state(4) stops motion
        # and clears the command queue without the full e-stop (which also disables the motors).
        api = self._api
        self._holding = True
        if api is not None:
            try:
                api.set_state(4)
            except Exception as exc:  # a stop must never raise into the e-stop path
                logger.error("xArm stop failed: {}", exc)

    def disconnect(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            try:
                api.disconnect()
            finally:
                logger.info("xArm at {} disconnected", self.config.ip)
