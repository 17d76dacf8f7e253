"""The safety shield: the only path from a decoded action to an arm.

Every command is clipped (per-step limits, then the workspace box and the table floor, then the
gripper rate) before it reaches `Arm.apply`; an e-stop latches until an explicit reset and wins
against a send already in progress; a watchdog holds the arm when valid actions stop arriving.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
from loguru import logger

from robot_io.arms.base import Arm
from robot_io.types import ArmState, EndEffectorCommand

_AXES = "xyz"


@dataclass(frozen=True)
class SafetyLimits:
    """Limits in the arm's base frame (metres, radians). Defaults suit a tabletop arm.

    Why these defaults:
    - The box (x 0.15..0.80, y -0.40..0.40, z up to 0.45) is the reach of a 7-dof tabletop arm
      (xArm 7, Franka) in front of its base, kept away from the base itself (x < 0.15 is where the
      arm folds onto its own links) and below head height of a seated operator. It matches the
      MuJoCo tabletop's reach so the simulator and a real arm are shielded the same way.
    - `floor_z_m` 0.01: the table top is z = 0 in the base frame of a table-mounted arm; one
      centimetre keeps the fingertips off the surface while still letting them close around a
      flat object (a banana is ~3 cm tall).
    - `max_translation_m` 0.05: the action codec's per-axis range is +-0.05 m, so this only bites
      on diagonal moves (up to 0.087 m); at the 3-10 Hz RT-2 control rates that caps the speed at
      0.15-0.5 m/s, slow enough for an operator to hit the e-stop.
    - `max_rotation_rad` 0.25: the codec's per-axis rotation range; again limits only diagonals.
    - `max_gripper_change` 0.5: a full close takes two steps, so a single stray action cannot
      snap the gripper shut on a finger; a deliberate grasp still closes within ~0.2-0.6 s.
    - `watchdog_timeout_s` 2.0: a step of a CPU-run model (or a remote one over a LAN) takes up to
      about a second; twice that with no valid action means the policy or the link is stuck, so
      the arm holds. A relative xArm step (<= 5 cm at 100 mm/s) finishes well inside it.
    """

    workspace_min_xyz_m: tuple[float, float, float] = (0.15, -0.40, 0.0)
    workspace_max_xyz_m: tuple[float, float, float] = (0.80, 0.40, 0.45)
    floor_z_m: float = 0.01
    max_translation_m: float = 0.05
    max_rotation_rad: float = 0.25
    max_gripper_change: float = 0.5
    watchdog_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.workspace_min_xyz_m, float), np.asarray(self.workspace_max_xyz_m, float)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(lo < hi):
            raise ValueError(
                "SafetyLimits: workspace_min_xyz_m must be below workspace_max_xyz_m on every axis"
            )
        if not self.floor_z_m < hi[2]:
            raise ValueError("SafetyLimits: floor_z_m must be below the top of the workspace box")
        for name in ("max_translation_m", "max_rotation_rad", "max_gripper_change", "watchdog_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SafetyLimits: {name} must be positive")

    def lower_bound(self) -> np.ndarray:
        """Lowest allowed end-effector position: the box, raised to the floor."""
        lo = np.asarray(self.workspace_min_xyz_m, dtype=float).copy()
        lo[2] = max(lo[2], self.floor_z_m)
        return lo

    def upper_bound(self) -> np.ndarray:
        return np.asarray(self.workspace_max_xyz_m, dtype=float).copy()


def _finite(values) -> bool:
    return all(math.isfinite(float(v)) for v in values)


def clip_command(
    command: EndEffectorCommand, state: ArmState, limits: SafetyLimits
) -> tuple[EndEffectorCommand, tuple[str, ...]]:
    """Pure clipping of one command against the arm's current state.

    Order: per-step translation/rotation norms, then the target position into the workspace box
    and above the floor, then the gripper (0..1, rate limited). Scaling the step first and clamping
    the target second keeps both guarantees: the clamp only shortens each axis of the step.
    An arm already outside the box may only move back towards it (never further out).
    """
    notes: list[str] = []
    gripper_now = float(state.gripper) if math.isfinite(float(state.gripper)) else 1.0
    if not (
        _finite(command.delta_xyz_m) and _finite(command.delta_rpy_rad) and math.isfinite(command.gripper)
    ):
        return EndEffectorCommand.hold(gripper_now), ("non-finite command: hold",)
    if not _finite(state.ee_xyz_m):  # without a pose the box cannot be enforced
        return EndEffectorCommand.hold(gripper_now), ("arm pose unknown: hold",)
    if command.terminate:
        # The episode ends: hold still, keep the gripper where it is (dropping an object is a motion).
        return EndEffectorCommand(gripper=gripper_now, terminate=True), ()

    delta = np.asarray(command.delta_xyz_m, dtype=float)
    norm = float(np.linalg.norm(delta))
    if norm > limits.max_translation_m:
        delta *= limits.max_translation_m / norm
        notes.append(f"clipped translation: step {norm:.3f} m > {limits.max_translation_m:.3f} m")
    rot = np.asarray(command.delta_rpy_rad, dtype=float)
    rot_norm = float(np.linalg.norm(rot))
    if rot_norm > limits.max_rotation_rad:
        rot *= limits.max_rotation_rad / rot_norm
        notes.append(f"clipped rotation: step {rot_norm:.3f} rad > {limits.max_rotation_rad:.3f} rad")

    pos = np.asarray(state.ee_xyz_m, dtype=float)
    lo, hi = limits.lower_bound(), limits.upper_bound()
    # Widen the box to contain the current pose, so an arm outside it can only come back in.
    lo, hi = np.minimum(lo, pos), np.maximum(hi, pos)
    target = pos + delta
    clamped = np.clip(target, lo, hi)
    for i, axis in enumerate(_AXES):
        if clamped[i] != target[i]:
            floor_hit = (
                i == 2 and target[i] < clamped[i] and limits.floor_z_m >= limits.workspace_min_xyz_m[2]
            )
            reason = "floor" if floor_hit else "workspace"
            notes.append(f"clipped d{axis}: {reason}")
            delta[i] = clamped[i] - pos[i]  # only clipped axes: keeps unclipped deltas bit-exact

    gripper = float(np.clip(command.gripper, 0.0, 1.0))
    if gripper != command.gripper:
        notes.append("clipped gripper: range 0..1")
    step = limits.max_gripper_change
    limited = float(np.clip(gripper, gripper_now - step, gripper_now + step))
    if limited != gripper:
        notes.append(f"clipped gripper: rate {abs(gripper - gripper_now):.2f} > {step:.2f} per step")
    clipped = EndEffectorCommand(
        delta_xyz_m=tuple(float(v) for v in delta),
        delta_rpy_rad=tuple(float(v) for v in rot),
        gripper=limited,
        terminate=False,
    )
    return clipped, tuple(notes)


class SafetyShield:
    """Wraps an arm; the control loop moves the arm only through `send`.

    Thread model: `send` calls are serialised (the state read and the apply are one step, so two
    threads cannot both clip against the same pose); `estop` takes no lock, so it never waits for a
    send in progress: it latches a flag and stops the arm at once, and a send that was already inside
    `arm.apply` stops the arm again as soon as the apply returns.

    The watchdog runs on its own daemon thread from the first applied command (so a policy that
    hangs inside a step is caught, not only between steps); the loop may also call
    `hold_if_stale()` itself. `close()` stops the thread.
    """

    def __init__(self, arm: Arm, limits: SafetyLimits | None = None) -> None:
        self.arm = arm
        self.limits = limits or SafetyLimits()
        self.last_notes: tuple[str, ...] = ()
        self._estop = threading.Event()
        self._send_lock = threading.Lock()
        self._last_valid_s: float | None = None  # monotonic time of the last command applied
        self._stale_held = False
        # Guards the watchdog's check-then-stop against a send starting in between (which would
        # otherwise be stopped right after being applied); held only for microseconds.
        self._watch_lock = threading.Lock()
        self._sending = False
        self._watchdog_thread: threading.Thread | None = None
        self._closed = threading.Event()

    # -- clipping -----------------------------------------------------------------------------

    def clip(
        self, command: EndEffectorCommand, state: ArmState
    ) -> tuple[EndEffectorCommand, tuple[str, ...]]:
        """Pure: the command the arm would receive from `state`, and why it differs (if it does)."""
        return clip_command(command, state, self.limits)

    # -- e-stop -------------------------------------------------------------------------------

    @property
    def estopped(self) -> bool:
        return self._estop.is_set()

    def estop(self) -> None:
        """Latch the e-stop and stop the arm now. Safe from any thread; never blocks on a send."""
        self._estop.set()
        self.arm.stop()
        logger.warning("e-stop latched; the arm holds until reset_estop()")

    def reset_estop(self) -> None:
        """The only way to clear a latched e-stop. The watchdog restarts from the next command."""
        self._estop.clear()
        with self._watch_lock:
            self._last_valid_s = None
            self._stale_held = False
        logger.info("e-stop reset")

    # -- sending ------------------------------------------------------------------------------

    def send(self, command: EndEffectorCommand | None) -> EndEffectorCommand | None:
        """Clip and apply one command; return what the arm executed, or None when it held.

        None in (no valid action this step) holds the arm; so does a latched e-stop.
        """
        if self._estop.is_set():
            self.arm.stop()
            self.last_notes = ("e-stop latched: hold",)
            return None
        if command is None:
            self.arm.stop()
            self.last_notes = ("no valid action: hold",)
            return None
        with self._send_lock:
            clipped, notes = self.clip(command, self.arm.state())
            if self._estop.is_set():  # latched while we were reading the state
                self.arm.stop()
                self.last_notes = ("e-stop latched: hold",)
                return None
            with self._watch_lock:
                self._sending = True
                self._last_valid_s = time.monotonic()
                self._stale_held = False
            try:
                executed = self.arm.apply(clipped)
            finally:
                with self._watch_lock:
                    self._sending = False
                    self._last_valid_s = time.monotonic()
            if self._estop.is_set():
                # The e-stop arrived while the arm was executing: its stop() may have run before
                # the motion began, so stop again now that apply has returned.
                self.arm.stop()
                notes = (*notes, "e-stop latched during the step: stopped")
            self.last_notes = notes
        self._start_watchdog()
        if notes:
            logger.debug("shield: {}", "; ".join(notes))
        return executed

    # -- watchdog -----------------------------------------------------------------------------

    def watchdog_expired(self, now: float | None = None) -> bool:
        """True when a command was applied once and none followed within the timeout."""
        last = self._last_valid_s
        if last is None:
            return False
        now = time.monotonic() if now is None else now
        return now - last > self.limits.watchdog_timeout_s

    def hold_if_stale(self, now: float | None = None) -> bool:
        """Hold the arm (once per stale period) when the watchdog expired; True if it did.

        Never while a send is executing: an action is arriving, and stopping it would be wrong.
        """
        with self._watch_lock:
            if self._sending or self._stale_held or self.estopped or not self.watchdog_expired(now):
                return False
            self._stale_held = True
            self.arm.stop()
        self.last_notes = (f"watchdog: no valid action for {self.limits.watchdog_timeout_s:.1f} s: hold",)
        logger.warning(
            "watchdog: no valid action for {:.1f} s; holding the arm", self.limits.watchdog_timeout_s
        )
        return True

    def _start_watchdog(self) -> None:
        if self._watchdog_thread is not None or self._closed.is_set():
            return
        period = min(0.1, self.limits.watchdog_timeout_s / 4)
        # The thread holds only a weak reference, so a forgotten shield is still garbage-collected.
        ref, closed = weakref.ref(self), self._closed

        def watch() -> None:
            while not closed.wait(period):
                shield = ref()
                if shield is None:
                    return
                try:
                    shield.hold_if_stale()
                except Exception as exc:  # a failing arm.stop() must not kill the watchdog
                    logger.error("watchdog could not hold the arm: {}", exc)
                del shield

        self._watchdog_thread = threading.Thread(target=watch, name="shield-watchdog", daemon=True)
        self._watchdog_thread.start()

    def close(self) -> None:
        """Stop the watchdog thread. The shield still clips and e-stops afterwards."""
        self._closed.set()
        thread = self._watchdog_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
