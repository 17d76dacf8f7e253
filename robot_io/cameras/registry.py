"""Build a camera from a `--camera` SOURCE string. One explicit dict of source kinds.

sim                 the MuJoCo tabletop's front camera (robot_io.cameras.sim_camera)
realsense           the first RealSense camera attached
realsense:SERIAL    a RealSense camera by serial number
file:PATH           a RealSense recording (.bag or .db3)
webcam:N            OpenCV device N (/dev/videoN)
images:DIR          a folder of images (+ NAME.depth.png), sorted, looping
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable
from pathlib import Path

from robot_io.cameras.base import Camera
from robot_io.errors import CameraError


def _make_sim(arg: str, sim=None, width: int | None = None, height: int | None = None, **kw) -> Camera:
    from robot_io.cameras.sim_camera import SimCamera

    if sim is None:
        from robot_io.sim.env import TabletopSim

        sim = TabletopSim(**kw)
    return SimCamera(sim, width, height)


def _make_realsense(arg: str, **kw) -> Camera:
    from robot_io.cameras.realsense import RealSenseCamera, RealSenseConfig

    return RealSenseCamera(RealSenseConfig(serial=arg or None, **kw))


def _make_file(arg: str, **kw) -> Camera:
    from robot_io.cameras.realsense import PLAYBACK_SUFFIXES, RealSenseCamera, RealSenseConfig

    path = Path(arg).expanduser()
    if not arg or not path.is_file():
        raise CameraError(f"recording {arg!r} not found; file:PATH needs an existing .bag or .db3 file")
    if path.suffix.lower() not in PLAYBACK_SUFFIXES:
        raise CameraError(f"{path} is not a RealSense recording; file:PATH plays .bag or .db3 files")
    return RealSenseCamera(RealSenseConfig(file=str(path), **kw))


def _make_webcam(arg: str, **kw) -> Camera:
    from robot_io.cameras.webcam import WebcamCamera

    if not re.fullmatch(r"\d+", arg or ""):
        raise CameraError(f"webcam needs a device number, e.g. webcam:0 (got webcam:{arg})")
    return WebcamCamera(int(arg), **kw)


def _make_images(arg: str, **kw) -> Camera:
    from robot_io.cameras.image_folder import ImageFolderCamera

    if not arg:
        raise CameraError("images needs a folder, e.g. images:./frames")
    return ImageFolderCamera(Path(arg).expanduser(), **kw)


# kind -> (constructor(arg, **kw), argument: "none" | "optional" | "required", usage for errors)
CAMERA_KINDS: dict[str, tuple[Callable[..., Camera], str, str]] = {
    "sim": (_make_sim, "none", "sim"),
    "realsense": (_make_realsense, "optional", "realsense or realsense:SERIAL"),
    "file": (_make_file, "required", "file:PATH (.bag or .db3)"),
    "webcam": (_make_webcam, "required", "webcam:N"),
    "images": (_make_images, "required", "images:DIR"),
}


def valid_forms() -> str:
    return ", ".join(usage for *_, usage in CAMERA_KINDS.values())


def make_camera(source: str, **kw) -> Camera:
    """An unconnected camera for `source`; keyword arguments go to its constructor/config."""
    kind, sep, arg = source.strip().partition(":")
    entry = CAMERA_KINDS.get(kind.lower())
    if entry is None or (entry[1] == "none" and sep) or (entry[1] == "required" and not sep):
        raise CameraError(f"unknown camera source {source!r}; use one of: {valid_forms()}")
    return entry[0](arg, **kw)


def list_cameras() -> list[dict]:
    """Sources that can be opened now: attached RealSense devices, video devices, and the simulator."""
    from robot_io.cameras.realsense import list_realsense_devices

    cameras = list_realsense_devices()
    for dev in sorted(glob.glob("/dev/video[0-9]*"), key=lambda p: int(re.sub(r"\D", "", p))):
        n = int(re.sub(r"\D", "", dev))
        name_file = Path(f"/sys/class/video4linux/video{n}/name")
        name = name_file.read_text().strip() if name_file.is_file() else dev
        # RealSense cameras also expose /dev/video nodes; they are listed above as realsense:SERIAL.
        cameras.append({"source": f"webcam:{n}", "kind": "webcam", "name": name, "device": dev})
    cameras.append({"source": "sim", "kind": "sim", "name": "MuJoCo tabletop front camera (D435-like)"})
    return cameras
