"""SafetyShield: clipping properties (hypothesis), e-stop latching under concurrent sends, watchdog."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_io.arms.base import Arm
from robot_io.safety import SafetyLimits, SafetyShield
from robot_io.types import ArmState, EndEffectorCommand

EPS = 1e-9


class KinematicArm(Arm):
    """Test-only arm: integrates deltas exactly, with no limits of its own, and logs every call."""

    def __init__(self, xyz=(0.4, 0.0, 0.2), gripper: float = 1.0, apply_delay_s: float = 0.0) -> None:
        self.xyz = np.asarray(xyz, dtype=float)
        self.rpy = np.zeros(3)
        self.gripper = gripper
        self.apply_delay_s = apply_delay_s
        self.log: list[tuple[str, float]] = []
        self.applied: list[EndEffectorCommand] = []
        self.holding = False
        self._lock = threading.Lock()

    def connect(self) -> None:
        pass

    def home(self) -> None:
        self.xyz = np.array([0.4, 0.0, 0.2])

    def state(self) -> ArmState:
        with self._lock:
            return ArmState(self.xyz.copy(), self.rpy.copy(), self.gripper, holding=self.holding)

    def apply(self, command: EndEffectorCommand) -> EndEffectorCommand:
        with self._lock:
            self.log.append(("apply", time.monotonic()))
            self.holding = False
        if self.apply_delay_s:
            time.sleep(self.apply_delay_s)
        with self._lock:
            self.xyz = self.xyz + np.asarray(command.delta_xyz_m)
            self.rpy = self.rpy + np.asarray(command.delta_rpy_rad)
            self.gripper = command.gripper
            self.applied.append(command)
        return command

    def stop(self) -> None:
        with self._lock:
            self.log.append(("stop", time.monotonic()))
            self.holding = True


finite = st.floats(min_value=-0.5, max_value=0.5, allow_nan=False)
wild = st.one_of(finite, st.sampled_from([float("nan"), float("inf"), -float("inf"), 10.0, -10.0]))
commands = st.builds(
    EndEffectorCommand,
    delta_xyz_m=st.tuples(wild, wild, wild),
    delta_rpy_rad=st.tuples(wild, wild, wild),
    gripper=st.one_of(st.floats(min_value=-2, max_value=3, allow_nan=False), st.just(float("nan"))),
    terminate=st.booleans(),
)
start_xyz = st.tuples(
    st.floats(min_value=0.15, max_value=0.80),
    st.floats(min_value=-0.40, max_value=0.40),
    st.floats(min_value=0.01, max_value=0.45),
)


@settings(max_examples=150, deadline=None)
@given(start=start_xyz, sequence=st.lists(st.one_of(st.none(), commands), min_size=1, max_size=40))
def test_no_command_sequence_leaves_the_box_or_breaks_step_limits(start, sequence):
    limits = SafetyLimits()
    arm = KinematicArm(xyz=start)
    shield = SafetyShield(arm, limits)
    lo, hi = limits.lower_bound(), limits.upper_bound()
    for command in sequence:
        before = arm.state()
        sent = shield.send(command)
        after = arm.state()
        assert np.all(after.ee_xyz_m >= lo - EPS) and np.all(after.ee_xyz_m <= hi + EPS), shield.last_notes
        assert after.ee_xyz_m[2] >= limits.floor_z_m - EPS
        step = np.linalg.norm(after.ee_xyz_m - before.ee_xyz_m)
        assert step <= limits.max_translation_m + EPS
        assert np.linalg.norm(after.ee_rpy_rad - before.ee_rpy_rad) <= limits.max_rotation_rad + EPS
        assert 0.0 <= after.gripper <= 1.0
        assert abs(after.gripper - before.gripper) <= limits.max_gripper_change + EPS
        if command is None:
            assert sent is None and after.holding
        else:
            assert sent is not None and sent == arm.applied[-1]  # the truth is returned
    shield.close()  # one watchdog thread per example otherwise lingers until garbage collection


@settings(max_examples=100, deadline=None)
@given(
    start=st.tuples(
        st.floats(min_value=-1.0, max_value=1.5),
        st.floats(min_value=-1.0, max_value=1.0),
        st.floats(min_value=-0.3, max_value=1.0),
    ),
    sequence=st.lists(commands, min_size=1, max_size=20),
)
def test_an_arm_outside_the_box_never_moves_further_out(start, sequence):
    limits = SafetyLimits()
    arm = KinematicArm(xyz=start)
    shield = SafetyShield(arm, limits)
    lo, hi = limits.lower_bound(), limits.upper_bound()

    def outside(p):  # per-axis distance outside the box
        return np.maximum(lo - p, 0) + np.maximum(p - hi, 0)

    for command in sequence:
        before = outside(arm.state().ee_xyz_m)
        shield.send(command)
        assert np.all(outside(arm.state().ee_xyz_m) <= before + EPS)
    shield.close()


def test_clip_notes_say_what_was_clipped_and_why():
    shield = SafetyShield(KinematicArm(), SafetyLimits())
    state = ArmState(np.array([0.4, 0.0, 0.03]), np.zeros(3), 1.0)
    clipped, notes = shield.clip(EndEffectorCommand(delta_xyz_m=(0.0, 0.0, -0.05), gripper=0.0), state)
    assert clipped.delta_xyz_m[2] == pytest.approx(0.01 - 0.03)
    assert clipped.gripper == pytest.approx(0.5)
    assert "clipped dz: floor" in notes
    assert any(n.startswith("clipped gripper: rate") for n in notes)

    state = ArmState(np.array([0.79, 0.0, 0.2]), np.zeros(3), 1.0)
    clipped, notes = shield.clip(EndEffectorCommand(delta_xyz_m=(0.05, 0.05, 0.05)), state)
    assert clipped.delta_xyz_m[0] == pytest.approx(0.01)
    assert np.linalg.norm(clipped.delta_xyz_m) <= 0.05 + EPS
    assert any(n.startswith("clipped translation") for n in notes) and "clipped dx: workspace" in notes

    # A small in-range command passes through untouched, with no notes.
    command = EndEffectorCommand(delta_xyz_m=(0.01, -0.02, 0.0), delta_rpy_rad=(0.0, 0.0, 0.1), gripper=0.8)
    assert shield.clip(command, ArmState(np.array([0.4, 0, 0.2]), np.zeros(3), 1.0)) == (command, ())


def test_clip_is_pure():
    arm = KinematicArm()
    shield = SafetyShield(arm, SafetyLimits())
    shield.clip(EndEffectorCommand(delta_xyz_m=(0.05, 0, 0)), arm.state())
    assert arm.log == [] and arm.applied == []


def test_nan_and_terminate_hold_still():
    arm = KinematicArm(gripper=0.3)
    shield = SafetyShield(arm)
    sent = shield.send(EndEffectorCommand(delta_xyz_m=(float("nan"), 0, 0), gripper=1.0))
    assert sent == EndEffectorCommand.hold(0.3) and shield.last_notes == ("non-finite command: hold",)
    clipped, notes = shield.clip(
        EndEffectorCommand(delta_xyz_m=(0.01, 0, 0)), ArmState(np.array([np.nan, 0, 0.2]), np.zeros(3), 0.3)
    )
    assert clipped == EndEffectorCommand.hold(0.3) and notes == ("arm pose unknown: hold",)
    sent = shield.send(EndEffectorCommand(delta_xyz_m=(0.05, 0, 0), gripper=1.0, terminate=True))
    assert sent.terminate and sent.delta_xyz_m == (0.0, 0.0, 0.0) and sent.gripper == 0.3
    assert np.allclose(arm.xyz, [0.4, 0.0, 0.2])


def test_estop_latches_until_reset():
    arm = KinematicArm()
    shield = SafetyShield(arm)
    move = EndEffectorCommand(delta_xyz_m=(0.01, 0, 0))
    assert shield.send(move) is not None
    shield.estop()
    assert shield.estopped and arm.holding
    for _ in range(5):
        assert shield.send(move) is None
    assert len(arm.applied) == 1 and shield.last_notes == ("e-stop latched: hold",)
    shield.reset_estop()
    assert not shield.estopped
    assert shield.send(move) is not None and len(arm.applied) == 2


@pytest.mark.parametrize("apply_delay_s", [0.0, 0.002])
def test_estop_wins_against_concurrent_sends(apply_delay_s):
    """Several threads send as fast as they can; once estop() returns, nothing moves the arm
    without a stop after it, no send that starts later applies, and it stays latched."""
    arm = KinematicArm(apply_delay_s=apply_delay_s)
    shield = SafetyShield(arm)
    move = EndEffectorCommand(delta_xyz_m=(0.001, 0, 0), gripper=1.0)
    go = threading.Event()
    stop_threads = threading.Event()
    late_results: list = []
    estop_done = threading.Event()

    def sender():
        go.wait()
        while not stop_threads.is_set():
            started_after = estop_done.is_set()
            result = shield.send(move)
            if started_after:
                late_results.append(result)

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    go.set()
    time.sleep(0.05)
    shield.estop()
    t_estop = time.monotonic()
    estop_done.set()
    time.sleep(0.05)
    stop_threads.set()
    for t in threads:
        t.join(timeout=5)
    assert arm.applied, "the senders never ran before the e-stop"
    assert late_results and all(r is None for r in late_results)
    assert shield.estopped and arm.holding
    # Every apply after the e-stop (one that was already in flight) is followed by a stop.
    events = [e for e in arm.log if e[1] >= t_estop]
    for i, (kind, _t) in enumerate(events):
        if kind == "apply":
            assert any(k == "stop" for k, _ in events[i + 1 :])
    applies_after = sum(1 for k, _ in events if k == "apply")
    assert applies_after <= len(threads)  # at most the sends already in flight


def test_watchdog_holds_once_per_stale_period():
    arm = KinematicArm()
    shield = SafetyShield(arm, SafetyLimits(watchdog_timeout_s=0.5))
    shield.close()  # only the explicit calls below, with explicit clocks
    assert not shield.watchdog_expired() and not shield.hold_if_stale()  # nothing sent yet
    shield.send(EndEffectorCommand(delta_xyz_m=(0.01, 0, 0)))
    now = time.monotonic()
    assert not shield.watchdog_expired(now + 0.4)
    assert shield.watchdog_expired(now + 0.6)
    assert shield.hold_if_stale(now + 0.6) and arm.holding
    assert shield.last_notes[0].startswith("watchdog")
    assert not shield.hold_if_stale(now + 0.7)  # already held; no repeated stops
    # A None command does not feed the watchdog; a valid one does.
    shield.send(None)
    assert shield.watchdog_expired(now + 0.8)
    shield.send(EndEffectorCommand(delta_xyz_m=(0.01, 0, 0)))
    assert not shield.watchdog_expired()


def test_limits_reject_nonsense():
    with pytest.raises(ValueError):
        SafetyLimits(workspace_min_xyz_m=(1, 0, 0), workspace_max_xyz_m=(0, 1, 1))
    with pytest.raises(ValueError):
        SafetyLimits(max_translation_m=0)


def test_watchdog_thread_holds_a_stuck_policy_but_never_mid_step():
    arm = KinematicArm()
    shield = SafetyShield(arm, SafetyLimits(watchdog_timeout_s=0.2))
    try:
        shield.send(EndEffectorCommand(delta_xyz_m=(0.01, 0, 0)))
        time.sleep(0.5)  # the policy "hangs": nobody calls hold_if_stale
        assert arm.holding and shield.last_notes[0].startswith("watchdog")
        stops = [e for e in arm.log if e[0] == "stop"]
        assert len(stops) == 1  # once per stale period

        # A slow step (longer than the timeout) is an action arriving, not a stale policy.
        arm.apply_delay_s = 0.5
        arm.log.clear()
        shield.send(EndEffectorCommand(delta_xyz_m=(0.01, 0, 0)))
        assert [kind for kind, _ in arm.log] == ["apply"]
    finally:
        shield.close()
    assert shield._watchdog_thread is not None and not shield._watchdog_thread.is_alive()
