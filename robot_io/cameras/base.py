"""The camera interface every source implements, so the control loop cannot tell them apart."""

from __future__ import annotations

import abc
import threading
import time

from robot_io.errors import CameraError
from robot_io.types import CameraIntrinsics, Frame


class Camera(abc.ABC):
    """A source of colour (+ depth) frames.

    `read()` blocks for the next frame (what the control loop uses); `read_latest(max_age_s)`
    never blocks and returns the newest frame seen by anyone, so a browser preview can never
    stall the loop. Use as a context manager, or call `connect()` / `disconnect()`.
    """

    name: str = "camera"

    def __init__(self) -> None:
        self._latest: Frame | None = None
        self._latest_lock = threading.Lock()

    @property
    @abc.abstractmethod
    def intrinsics(self) -> CameraIntrinsics:
        """Intrinsics of the colour stream (valid after connect)."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the device or file. Raises CameraError with a message that says what to do."""

    @abc.abstractmethod
    def _read(self) -> Frame:
        """Block until the next frame is available and return it."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Release the device. Safe to call twice."""

    def read(self) -> Frame:
        frame = self._read()
        with self._latest_lock:
            self._latest = frame
        return frame

    def read_latest(self, max_age_s: float | None = None) -> Frame | None:
        """Newest frame already captured, or None if there is none (or it is older than max_age_s)."""
        with self._latest_lock:
            frame = self._latest
        if frame is None:
            return None
        if max_age_s is not None and time.monotonic() - frame.timestamp_s > max_age_s:
            return None
        return frame

    def __enter__(self) -> Camera:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


def require(condition: bool, message: str) -> None:
    """Raise CameraError(message) unless condition holds: keeps device checks one line each."""
    if not condition:
        raise CameraError(message)
