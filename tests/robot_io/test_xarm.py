"""xArm driver: unit conversions (pure), the driver against a recording fake SDK, the registry."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from robot_io.arms.registry import NullArm, make_arm
from robot_io.arms.xarm import (
    XArm,
    XArmConfig,
    command_to_xarm_move,
    gripper_to_pulse,
    pulse_to_gripper,
    xarm_pose_to_state,
)
from robot_io.errors import ArmError
from robot_io.safety import SafetyShield
from robot_io.types import EndEffectorCommand


def test_command_translation_metres_radians_to_mm_degrees():
    move = command_to_xarm_move(
        EndEffectorCommand(delta_xyz_m=(0.01, -0.02, 0.05), delta_rpy_rad=(math.pi / 2, 0.0, -0.25))
    )
    assert move["relative"] is True and move["is_radian"] is False
    assert (move["x"], move["y"], move["z"]) == pytest.approx((10.0, -20.0, 50.0))
    assert (move["roll"], move["pitch"], move["yaw"]) == pytest.approx((90.0, 0.0, math.degrees(-0.25)))
    still = command_to_xarm_move(EndEffectorCommand(delta_xyz_m=(0.05, 0, 0), terminate=True))
    assert all(still[k] == 0.0 for k in ("x", "y", "z", "roll", "pitch", "yaw"))


def test_gripper_pulse_round_trip_and_clamping():
    assert gripper_to_pulse(0.0) == 0 and gripper_to_pulse(1.0) == 850 and gripper_to_pulse(0.5) == 425
    assert gripper_to_pulse(-0.3) == 0 and gripper_to_pulse(7.0) == 850
    for g in np.linspace(0, 1, 11):
        assert pulse_to_gripper(gripper_to_pulse(g)) == pytest.approx(g, abs=1 / 850)
    assert pulse_to_gripper(-10) == 0.0 and pulse_to_gripper(900) == 1.0
    with pytest.raises(ArmError):
        gripper_to_pulse(float("nan"))


def test_pose_conversion():
    state = xarm_pose_to_state([400.0, -50.0, 200.0, 180.0, 0.0, 90.0], 425)
    assert state.ee_xyz_m == pytest.approx([0.4, -0.05, 0.2])
    assert state.ee_rpy_rad == pytest.approx([math.pi, 0.0, math.pi / 2])
    assert state.gripper == pytest.approx(0.5)
    with pytest.raises(ArmError):
        xarm_pose_to_state([1.0, 2.0], 0)


class FakeXArmAPI:
    """Records SDK calls and integrates relative moves like the controller would (mm, degrees)."""

    def __init__(self, ip: str, fail: dict | None = None) -> None:
        self.ip, self.calls, self.fail = ip, [], fail or {}
        self.connected = True
        self.pose = [400.0, 0.0, 200.0, 180.0, 0.0, 0.0]
        self.pulse = 850.0
        self.state = 0

    def _record(self, name, **kw):
        self.calls.append((name, kw))
        return self.fail.get(name, 0)

    def clean_warn(self):
        return self._record("clean_warn")

    def clean_error(self):
        return self._record("clean_error")

    def motion_enable(self, enable=True):
        return self._record("motion_enable", enable=enable)

    def set_mode(self, mode=0):
        return self._record("set_mode", mode=mode)

    def set_state(self, state=0):
        self.state = state
        return self._record("set_state", state=state)

    def set_gripper_mode(self, mode):
        return self._record("set_gripper_mode", mode=mode)

    def set_gripper_enable(self, enable):
        return self._record("set_gripper_enable", enable=enable)

    def set_gripper_speed(self, speed):
        return self._record("set_gripper_speed", speed=speed)

    def set_position(self, x, y, z, roll, pitch, yaw, relative, is_radian, speed, mvacc, wait):
        assert is_radian is False
        code = self._record("set_position", x=x, y=y, z=z, relative=relative, wait=wait)
        if code == 0 and self.state == 0:
            delta = [x, y, z, roll, pitch, yaw]
            self.pose = [p + d for p, d in zip(self.pose, delta, strict=True)] if relative else delta
        return code

    def set_gripper_position(self, pos, wait=False):
        self.pulse = float(pos)
        return self._record("set_gripper_position", pos=pos)

    def get_position(self, is_radian=None):
        return self._record("get_position"), list(self.pose)

    def get_gripper_position(self):
        return self._record("get_gripper_position"), self.pulse

    def disconnect(self):
        self.connected = False
        self._record("disconnect")


def _arm(**fail):
    apis = []

    def factory(ip):
        apis.append(FakeXArmAPI(ip, fail))
        return apis[-1]

    return XArm(XArmConfig(ip="10.0.0.7"), api_factory=factory), apis


def test_driver_steps_relative_moves_and_reports_state():
    arm, apis = _arm()
    with arm:
        api = apis[0]
        assert [c[0] for c in api.calls[:5]] == [
            "clean_warn",
            "clean_error",
            "motion_enable",
            "set_mode",
            "set_state",
        ]
        arm.apply(EndEffectorCommand(delta_xyz_m=(0.01, 0.0, -0.02), gripper=0.5))
        state = arm.state()
        assert state.ee_xyz_m == pytest.approx([0.41, 0.0, 0.18])
        assert state.gripper == pytest.approx(0.5)
        move = next(kw for name, kw in api.calls if name == "set_position")
        assert move["relative"] is True and move["x"] == pytest.approx(10.0)
        arm.stop()
        assert api.state == 4 and arm.state().holding
        arm.apply(EndEffectorCommand(delta_xyz_m=(0.0, 0.01, 0.0), gripper=0.5))  # re-readied after a stop
        assert api.state == 0 and arm.state().ee_xyz_m == pytest.approx([0.41, 0.01, 0.18])
    assert not api.connected


def test_driver_behind_the_shield_never_leaves_the_box():
    arm, apis = _arm()
    arm.connect()
    shield = SafetyShield(arm)
    for _ in range(30):
        shield.send(EndEffectorCommand(delta_xyz_m=(0.0, 0.0, -0.05), gripper=1.0))
    assert arm.state().ee_xyz_m[2] == pytest.approx(shield.limits.floor_z_m)
    shield.estop()
    assert apis[0].state == 4


def test_controller_errors_and_missing_connection_are_arm_errors():
    arm, _ = _arm(set_mode=9)
    with pytest.raises(ArmError, match=r"set_mode.*code 9"):
        arm.connect()
    arm, _ = _arm()
    with pytest.raises(ArmError, match="not connected"):
        arm.state()

    def unreachable(ip):
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(ArmError, match=r"could not connect to the xArm at 10\.0\.0\.9"):
        XArm(XArmConfig(ip="10.0.0.9"), api_factory=unreachable).connect()


def test_missing_sdk_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "xarm", None)
    monkeypatch.setitem(sys.modules, "xarm.wrapper", None)
    with pytest.raises(ArmError, match=r"pip install rt2-cot\[xarm\]"):
        XArm(XArmConfig(ip="10.0.0.7")).connect()


def test_registry_kinds_and_unknown_specs():
    assert isinstance(make_arm("none"), NullArm)
    arm = make_arm("xarm:192.168.1.185")
    assert isinstance(arm, XArm) and arm.config.ip == "192.168.1.185"
    for bad in ("ur5", "xarm", "none:3", ""):
        with pytest.raises(ArmError, match="xarm:"):  # the message shows the valid form
            make_arm(bad)


def test_null_arm_tracks_a_virtual_pose_behind_the_shield():
    arm = make_arm("none")
    arm.connect()
    shield = SafetyShield(arm)
    start = arm.state().ee_xyz_m.copy()
    sent = shield.send(EndEffectorCommand(delta_xyz_m=(0.02, 0.0, 0.0), gripper=0.2))
    assert arm.state().ee_xyz_m == pytest.approx(start + np.array([0.02, 0, 0]))
    assert arm.state().gripper == pytest.approx(sent.gripper) == pytest.approx(0.5)  # rate-limited
    arm.home()
    assert arm.state().ee_xyz_m == pytest.approx(start)


@pytest.mark.hardware
def test_real_xarm_connects_and_reports_a_pose():
    ip = os.environ.get("RT2_XARM_IP")
    if not ip:
        pytest.skip("set RT2_XARM_IP to the controller's address to run against a real xArm")
    with make_arm(f"xarm:{ip}") as arm:
        state = arm.state()
        assert state.connected and np.all(np.isfinite(state.ee_xyz_m))


def test_registry_sim_arm_moves_behind_the_shield():
    pytest.importorskip("mujoco")
    arm = make_arm("sim")
    with arm:
        shield = SafetyShield(arm)
        try:
            before = arm.state().ee_xyz_m.copy()
            sent = shield.send(EndEffectorCommand(delta_xyz_m=(0.0, 0.0, -0.04), gripper=1.0))
            assert sent.delta_xyz_m[2] == pytest.approx(-0.04)
            assert arm.state().ee_xyz_m[2] == pytest.approx(before[2] - 0.04, abs=0.005)
        finally:
            shield.close()
            arm.sim.close()
