"""Plain data shared by cameras, arms, the shield and the control loop above them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of the colour image (depth is aligned to it). Pixels, no distortion model."""

    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float

    def project(self, point_cam: np.ndarray) -> tuple[float, float]:
        """Project a point in the camera frame (x right, y down, z forward, metres) to pixels."""
        x, y, z = (float(v) for v in point_cam)
        z = max(z, 1e-6)
        return self.fx * x / z + self.ppx, self.fy * y / z + self.ppy


@dataclass
class Frame:
    """One synchronised capture.

    `color` is HxWx3 uint8 RGB. `depth` is HxW uint16 aligned to colour, in units of
    `depth_scale_m` metres (a D435 uses 0.001: millimetres), 0 meaning no reading; None when the
    source has no depth.
    """

    color: np.ndarray
    depth: np.ndarray | None
    depth_scale_m: float
    intrinsics: CameraIntrinsics
    timestamp_s: float
    index: int

    def depth_m(self) -> np.ndarray | None:
        """Depth in metres as float32, NaN where the sensor had no reading."""
        if self.depth is None:
            return None
        d = self.depth.astype(np.float32) * self.depth_scale_m
        d[self.depth == 0] = np.nan
        return d


@dataclass(frozen=True)
class EndEffectorCommand:
    """One step of RT-2-style end-effector control, in the robot base frame.

    Translation and rotation are deltas for this step; the gripper is absolute
    (0 closed .. 1 fully open). `terminate` ends the episode; the arm holds.
    """

    delta_xyz_m: tuple[float, float, float] = (0.0, 0.0, 0.0)
    delta_rpy_rad: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gripper: float = 1.0
    terminate: bool = False

    @classmethod
    def hold(cls, gripper: float) -> EndEffectorCommand:
        """No motion, gripper unchanged: what the shield sends when it refuses to move."""
        return cls(gripper=gripper)


@dataclass
class ArmState:
    """What an arm reports: end-effector pose in the base frame and the gripper opening."""

    ee_xyz_m: np.ndarray
    ee_rpy_rad: np.ndarray
    gripper: float
    connected: bool = True
    holding: bool = False  # True while the arm is holding still (e-stop, watchdog, terminate)
    extras: dict = field(default_factory=dict)
