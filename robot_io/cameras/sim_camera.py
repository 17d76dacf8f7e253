"""The simulated camera: renders the MuJoCo tabletop like a D435 (colour + aligned depth in mm)."""

from __future__ import annotations

from robot_io.cameras.base import Camera
from robot_io.types import CameraIntrinsics, Frame


class SimCamera(Camera):
    """`read()` renders the sim's current state; `read_latest()` returns the last render without
    rendering (never blocks). Intrinsics: a D435 at 640x480 scaled to `width` x `height`."""

    name = "sim"

    def __init__(self, sim, width: int | None = None, height: int | None = None) -> None:
        super().__init__()
        self.sim = sim
        self.width = width or sim.config.width
        self.height = height or sim.config.height
        self._connected = False

    @property
    def intrinsics(self) -> CameraIntrinsics:
        return self.sim.intrinsics(self.width, self.height)

    def connect(self) -> None:
        self._connected = True

    def _read(self) -> Frame:
        # Nothing to open in a simulator, so reading before connect() is allowed.
        return self.sim.render(self.width, self.height)

    def disconnect(self) -> None:
        self._connected = False
