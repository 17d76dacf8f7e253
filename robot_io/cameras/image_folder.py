"""A folder of images played as a camera (`images:DIR`): sorted by name, looping, optional depth.

Naming rule for depth: next to a colour image `NAME.EXT` (png, jpg, jpeg, bmp, webp), a 16-bit PNG
`NAME.depth.png` holds its depth, aligned to the colour image, in units of `depth_scale_m`
(default 0.001: millimetres, like a D435), 0 meaning no reading. `*.depth.png` files are never
shown as colour. Either every colour image has a depth image or none has (mixed folders are an
error, since the loop would see depth come and go). An optional `intrinsics.json` with
`fx, fy, ppx, ppy` (pixels) describes the camera; otherwise a D435 colour camera at 640x480
(fx = fy = 615, principal point at the centre) scaled to the image size is assumed.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from robot_io.cameras.base import Camera, require
from robot_io.errors import CameraError
from robot_io.types import CameraIntrinsics, Frame

COLOR_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEPTH_SUFFIX = ".depth.png"
D435_FX_640 = 615.0  # typical D435 colour focal length at 640x480, in pixels


def default_intrinsics(width: int, height: int) -> CameraIntrinsics:
    """A D435-like colour camera scaled to width x height (used when nothing better is known)."""
    f = D435_FX_640 * width / 640.0
    return CameraIntrinsics(width, height, f, f, (width - 1) / 2.0, (height - 1) / 2.0)


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except Exception as exc:  # PIL raises several types for unreadable files
        raise CameraError(f"cannot read image {path}: {exc}; remove or replace the file") from None


def _load_depth(path: Path, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    depth = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
    require(depth is not None, f"cannot read depth image {path}; it must be a 16-bit PNG")
    require(
        depth.dtype == np.uint16, f"depth image {path} is {depth.dtype}, not 16-bit; save it as uint16 PNG"
    )
    require(
        depth.shape == shape, f"depth image {path} is {depth.shape[::-1]}, its colour image {shape[::-1]}"
    )
    return depth


class ImageFolderCamera(Camera):
    """Replays the images of a folder in name order, forever (`loop=False` stops at the end)."""

    name = "images"

    def __init__(self, folder: str | Path, depth_scale_m: float = 0.001, loop: bool = True, fps: float = 0.0):
        super().__init__()
        self.folder = Path(folder)
        self.depth_scale_m = depth_scale_m
        self.loop = loop
        self.fps = fps  # > 0 paces read() like a live camera; 0 returns frames as fast as asked
        self.files: list[Path] = []
        self.has_depth = False
        self._intrinsics: CameraIntrinsics | None = None
        self._next = 0
        self._index = 0
        self._last_read = 0.0
        self._lock = threading.Lock()

    @property
    def intrinsics(self) -> CameraIntrinsics:
        require(self._intrinsics is not None, f"images:{self.folder} is not connected; call connect() first")
        return self._intrinsics

    @property
    def connected(self) -> bool:
        return self._intrinsics is not None

    def connect(self) -> None:
        require(
            self.folder.is_dir(),
            f"image folder {self.folder} not found; give images:DIR with a folder of images",
        )
        files = sorted(
            p
            for p in self.folder.iterdir()
            if p.suffix.lower() in COLOR_SUFFIXES and not p.name.lower().endswith(DEPTH_SUFFIX)
        )
        require(files, f"no images ({', '.join(COLOR_SUFFIXES)}) in {self.folder}")
        with_depth = [p for p in files if self._depth_path(p).is_file()]
        require(
            len(with_depth) in (0, len(files)),
            f"{len(with_depth)} of {len(files)} images in {self.folder} have a NAME{DEPTH_SUFFIX} depth image; "
            "give every image one, or none",
        )
        self.files, self.has_depth = files, bool(with_depth)
        first = _load_rgb(files[0])
        h, w = first.shape[:2]
        self._intrinsics = self._read_intrinsics(w, h)
        self._next = self._index = 0

    def _read_intrinsics(self, width: int, height: int) -> CameraIntrinsics:
        path = self.folder / "intrinsics.json"
        if not path.is_file():
            return default_intrinsics(width, height)
        try:
            data = json.loads(path.read_text())
            return CameraIntrinsics(width, height, *(float(data[k]) for k in ("fx", "fy", "ppx", "ppy")))
        except (ValueError, KeyError, TypeError) as exc:
            raise CameraError(f"{path} must be JSON with numbers fx, fy, ppx, ppy ({exc})") from None

    @staticmethod
    def _depth_path(color_path: Path) -> Path:
        return color_path.with_name(color_path.stem + DEPTH_SUFFIX)

    def stream_info(self) -> dict[str, dict | None]:
        w, h = self.intrinsics.width, self.intrinsics.height
        color = {"width": w, "height": h, "fps": self.fps, "format": "rgb8"}
        depth = {"width": w, "height": h, "fps": self.fps, "format": "z16"} if self.has_depth else None
        return {"color": color, "depth": depth}

    def _read(self) -> Frame:
        intrinsics = self.intrinsics
        with self._lock:
            if self._next >= len(self.files):
                require(self.loop, f"images:{self.folder} has no more images (loop is off)")
                self._next = 0
            path = self.files[self._next]
            self._next += 1
            if self.fps > 0:
                time.sleep(max(0.0, self._last_read + 1.0 / self.fps - time.monotonic()))
            color = _load_rgb(path)
            require(
                color.shape[:2] == (intrinsics.height, intrinsics.width),
                f"{path} is {color.shape[1]}x{color.shape[0]}, the first image {intrinsics.width}x"
                f"{intrinsics.height}; every image in a folder must have one size",
            )
            depth = _load_depth(self._depth_path(path), color.shape[:2]) if self.has_depth else None
            self._last_read = time.monotonic()
            self._index += 1
            return Frame(color, depth, self.depth_scale_m, intrinsics, self._last_read, self._index)

    def disconnect(self) -> None:
        self._intrinsics = None
