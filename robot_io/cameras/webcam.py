"""A USB/UVC webcam through OpenCV (`webcam:N`): colour only, no depth."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

import numpy as np
from loguru import logger

from robot_io.cameras.base import Camera, require
from robot_io.cameras.image_folder import default_intrinsics
from robot_io.errors import CameraError
from robot_io.types import CameraIntrinsics, Frame


class WebcamCamera(Camera):
    """OpenCV VideoCapture on device N (/dev/videoN on Linux). Intrinsics are a D435-like guess:
    webcams do not report theirs, and the policy only needs them for depth-free overlays."""

    name = "webcam"

    def __init__(self, device: int = 0, width: int = 640, height: int = 480, fps: int = 30) -> None:
        super().__init__()
        self.device, self.width, self.height, self.fps = device, width, height, fps
        self._capture = None
        self._intrinsics: CameraIntrinsics | None = None
        self._index = 0
        self._lock = threading.Lock()

    @property
    def intrinsics(self) -> CameraIntrinsics:
        require(self._intrinsics is not None, f"webcam:{self.device} is not connected; call connect() first")
        return self._intrinsics

    @property
    def connected(self) -> bool:
        return self._capture is not None

    def connect(self) -> None:
        if self._capture is not None:
            return
        import cv2

        # Ask the OS first: OpenCV takes longer to fail and prints its own warnings to stderr.
        require(
            not sys.platform.startswith("linux") or Path(f"/dev/video{self.device}").exists(),
            f"no webcam at /dev/video{self.device}; `rt2-cot cameras list` shows what is attached",
        )
        with contextlib.suppress(AttributeError):  # quiet OpenCV's own open/read warnings
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        capture = cv2.VideoCapture(self.device)
        if not capture.isOpened():
            capture.release()
            raise CameraError(
                f"webcam {self.device} could not be opened: is a camera attached at /dev/video{self.device} "
                "and not in use? (`rt2-cot cameras list` shows what is attached)"
            )
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        capture.set(cv2.CAP_PROP_FPS, self.fps)
        ok, image = capture.read()
        if not ok or image is None:
            capture.release()
            raise CameraError(f"webcam {self.device} opened but gives no frames; check the device and cable")
        h, w = image.shape[:2]
        self._intrinsics = default_intrinsics(w, h)
        self.fps = int(capture.get(cv2.CAP_PROP_FPS) or self.fps)
        self._capture = capture
        logger.info("webcam {} opened at {}x{}", self.device, w, h)

    def stream_info(self) -> dict[str, dict | None]:
        i = self.intrinsics
        return {
            "color": {"width": i.width, "height": i.height, "fps": self.fps, "format": "rgb8"},
            "depth": None,
        }

    def _read(self) -> Frame:
        import cv2

        require(self._capture is not None, f"webcam:{self.device} is not connected; call connect() first")
        with self._lock:
            ok, image = self._capture.read()
            if not ok or image is None:
                raise CameraError(f"webcam {self.device} stopped giving frames; was it unplugged?")
            timestamp = time.monotonic()
            self._index += 1
            color = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            return Frame(color, None, 0.0, self.intrinsics, timestamp, self._index)

    def disconnect(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
