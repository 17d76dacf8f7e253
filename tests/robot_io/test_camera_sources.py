"""The camera registry and the non-RealSense sources: image folders, webcams, the simulator."""

from __future__ import annotations

import itertools
import json
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from robot_io.cameras.image_folder import ImageFolderCamera, default_intrinsics
from robot_io.cameras.registry import CAMERA_KINDS, list_cameras, make_camera
from robot_io.errors import CameraError


def _folder(tmp_path, n=3, depth=True, size=(40, 30)):
    w, h = size
    colors, depths = [], []
    for k in range(n):
        color = np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(color).save(tmp_path / f"frame_{k:03d}.png")
        colors.append(color)
        if depth:
            d = np.random.default_rng(50 + k).integers(0, 4000, (h, w), dtype=np.uint16)
            assert cv2.imwrite(str(tmp_path / f"frame_{k:03d}.depth.png"), d)
            depths.append(d)
    return colors, depths


def test_image_folder_plays_sorted_with_depth_and_loops(tmp_path):
    colors, depths = _folder(tmp_path)
    camera = make_camera(f"images:{tmp_path}")
    assert isinstance(camera, ImageFolderCamera)
    with camera:
        frames = [camera.read() for _ in range(5)]
        assert camera.stream_info()["depth"]["format"] == "z16"
    order = [0, 1, 2, 0, 1]  # sorted by name, then around again
    for frame, k in zip(frames, order, strict=True):
        assert np.array_equal(frame.color, colors[k])
        assert np.array_equal(frame.depth, depths[k]) and frame.depth_scale_m == 0.001
    assert [f.index for f in frames] == [1, 2, 3, 4, 5]
    assert frames[0].intrinsics == default_intrinsics(40, 30)
    assert all(a.timestamp_s <= b.timestamp_s for a, b in itertools.pairwise(frames))


def test_image_folder_colour_only_intrinsics_json_and_no_loop(tmp_path):
    colors, _ = _folder(tmp_path, n=2, depth=False)
    (tmp_path / "intrinsics.json").write_text(json.dumps({"fx": 50.0, "fy": 51.0, "ppx": 20.0, "ppy": 15.0}))
    with ImageFolderCamera(tmp_path, loop=False) as camera:
        a, b = camera.read(), camera.read()
        with pytest.raises(CameraError, match="no more images"):
            camera.read()
    assert a.depth is None and np.array_equal(b.color, colors[1])
    assert (a.intrinsics.fx, a.intrinsics.fy, a.intrinsics.ppx) == (50.0, 51.0, 20.0)


def test_image_folder_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(CameraError, match="not found"):
        make_camera(f"images:{tmp_path / 'missing'}").connect()
    with pytest.raises(CameraError, match="no images"):
        make_camera(f"images:{tmp_path}").connect()
    _folder(tmp_path, n=2)
    (tmp_path / "frame_001.depth.png").unlink()
    with pytest.raises(CameraError, match="1 of 2 images"):
        make_camera(f"images:{tmp_path}").connect()


def test_unknown_sources_list_the_valid_forms():
    for bad in ("bogus", "kinect:1", "sim:2", "file", "webcam", "images"):
        with pytest.raises(CameraError) as err:
            make_camera(bad)
        assert "realsense:SERIAL" in str(err.value) and "images:DIR" in str(err.value)
    with pytest.raises(CameraError, match="device number"):
        make_camera("webcam:front")
    with pytest.raises(CameraError, match="not found"):
        make_camera("file:/definitely/not/here.bag")
    assert set(CAMERA_KINDS) == {"sim", "realsense", "file", "webcam", "images"}


def test_missing_webcam_fails_fast():
    t0 = time.monotonic()
    with pytest.raises(CameraError, match="webcam"):
        make_camera("webcam:63").connect()
    assert time.monotonic() - t0 < 1.0


def test_list_cameras_always_offers_the_simulator():
    cameras = list_cameras()
    assert {"source": "sim"}.items() <= cameras[-1].items()
    assert all({"source", "kind", "name"} <= set(c) for c in cameras)


def test_sim_source_renders_rgbd():
    camera = make_camera("sim", width=64, height=48)
    with camera:
        frame = camera.read()
    assert frame.color.shape == (48, 64, 3) and frame.depth.shape == (48, 64)
    assert 0.2 < np.nanmedian(frame.depth_m()) < 3.0


def test_file_source_as_the_console_opens_it_plays_past_the_end(realsense_bag):
    # The console opens recordings with real_time=True, loop=True; the one-frame D435 fixture
    # therefore needs a restart for every read after the first.
    pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed")
    camera = make_camera(f"file:{realsense_bag}", real_time=True, loop=True)
    with camera:
        frames = [camera.read() for _ in range(4)]
        assert camera.loops >= 3
    assert [f.index for f in frames] == [1, 2, 3, 4]
    for f in frames:
        assert f.color.shape == (480, 640, 3) and np.array_equal(f.color, frames[0].color)
        assert f.depth.shape == (480, 640) and 0.5 < np.nanmedian(f.depth_m()) < 2.0
