"""Live-view pixels: the action arrow lands where the camera model says, depth colours are stable."""

from __future__ import annotations

import numpy as np

from app import rendering
from robot_io.types import CameraIntrinsics, EndEffectorCommand

INTR = CameraIntrinsics(640, 480, 600.0, 600.0, 320.0, 240.0)


def test_look_at_puts_the_target_on_the_optical_axis():
    pose = rendering.CameraPose.look_at(eye=(1.0, 0.0, 0.5), target=(0.4, 0.0, 0.0))
    u, v = INTR.project(pose.to_camera(np.array([0.4, 0.0, 0.0])))
    assert abs(u - 320) < 1e-6 and abs(v - 240) < 1e-6
    # A point further along base +z (up) appears higher in the image (smaller v).
    _, v_up = INTR.project(pose.to_camera(np.array([0.4, 0.0, 0.1])))
    assert v_up < 240
    # Looking along -x, base +y is on the image's right.
    u_left, _ = INTR.project(pose.to_camera(np.array([0.4, 0.1, 0.0])))
    assert u_left > 320


def test_from_matrix_round_trips_look_at():
    pose = rendering.CameraPose.look_at(eye=(0.9, 0.3, 0.6), target=(0.4, 0.0, 0.05))
    m = np.eye(4)
    m[:3, :3] = pose.rotation
    m[:3, 3] = -pose.rotation @ pose.position
    again = rendering.CameraPose.from_matrix(m)
    p = np.array([0.5, -0.1, 0.2])
    np.testing.assert_allclose(again.to_camera(p), pose.to_camera(p), atol=1e-9)


def test_projected_motion_matches_hand_computation():
    # Camera 1 m above the origin looking straight down: base x -> image ?, check by projecting.
    pose = rendering.CameraPose.look_at(eye=(0.0, 0.0, 1.0), target=(0.0, 0.0, 0.0))
    (u0, v0), (u1, v1) = rendering.project_motion(INTR, pose, np.zeros(3), (0.0, 0.05, 0.0), scale=2.0)
    assert (u0, v0) == (320.0, 240.0)
    # 0.1 m sideways at 1 m depth with fx = 600 is 60 pixels.
    assert abs(np.hypot(u1 - u0, v1 - v0) - 60.0) < 1e-6


def test_motion_behind_the_camera_is_not_drawn():
    pose = rendering.CameraPose.look_at(eye=(0.0, 0.0, 1.0), target=(0.0, 0.0, 0.0))
    assert rendering.project_motion(INTR, pose, np.array([0.0, 0.0, 1.5]), (0.0, 0.0, 0.0)) is None


def test_draw_action_draws_an_arrow_and_caption_only_when_there_is_a_command():
    img = np.full((240, 320, 3), 128, np.uint8)
    pose = rendering.CameraPose.look_at(eye=(0.0, 0.0, 1.0), target=(0.0, 0.0, 0.0))
    untouched = rendering.draw_action(img, INTR, pose, np.zeros(3), None)
    assert np.array_equal(untouched, img)
    cmd = EndEffectorCommand(delta_xyz_m=(0.05, 0.0, 0.0), gripper=0.2)
    out = rendering.draw_action(img, INTR, pose, np.zeros(3), cmd)
    assert out.shape == img.shape and not np.array_equal(out, img)
    # Arrow colour (yellow) appears along the projected path, in the half-resolution image.
    (u0, v0), (u1, v1) = rendering.project_motion(INTR, pose, np.zeros(3), cmd.delta_xyz_m)
    mid = (int((u0 + u1) / 4), int((v0 + v1) / 4))
    patch = out[mid[1] - 2 : mid[1] + 3, mid[0] - 2 : mid[0] + 3].reshape(-1, 3)
    assert any(p[0] > 200 and p[1] > 180 and p[2] < 80 for p in patch)
    assert "grip 20%" in rendering.action_caption(cmd)
    assert "+5.0" in rendering.action_caption(cmd)


def test_depth_colours_are_fixed_by_range_and_missing_depth_is_black():
    depth = np.full((10, 10), 0.5, np.float32)
    depth[0, 0] = np.nan
    depth[9, 9] = 1.5
    rgb = rendering.colorize_depth(depth, 0.5, 1.5, (10, 10))
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0]
    near, far = rgb[5, 5].astype(int), rgb[9, 9].astype(int)
    assert near[0] > near[2] and far[2] > far[0]  # near warm (red), far cool (blue)
    # Same depth, same colour, whatever else is in the frame (no per-frame normalisation).
    other = np.full((10, 10), 0.5, np.float32)
    assert rendering.colorize_depth(other, 0.5, 1.5, (10, 10))[5, 5].tolist() == rgb[5, 5].tolist()
    assert rendering.colorize_depth(None, 0.5, 1.5, (10, 12)).shape == (10, 12, 3)


def test_depth_range_ignores_outliers_and_holes():
    d = np.linspace(0.6, 1.2, 10000, dtype=np.float32).reshape(100, 100)
    d[:5] = np.nan
    near, far = rendering.depth_range(d)
    assert 0.6 <= near < 0.65 and 1.15 < far <= 1.2


def test_jpeg_data_uri_decodes_back_to_the_image():
    import base64

    import cv2

    img = np.zeros((32, 48, 3), np.uint8)
    img[:, :24] = (255, 0, 0)
    uri = rendering.jpeg_data_uri(rendering.encode_jpeg(img, 95))
    assert uri.startswith("data:image/jpeg;base64,")
    back = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)[
        ..., ::-1
    ]
    assert back.shape == img.shape and back[16, 5, 0] > 200 and back[16, 40, 0] < 50


def test_grounded_plan_points_are_ringed_where_the_plan_says():
    img = np.zeros((240, 320, 3), np.uint8)
    rendering.draw_plan_points(img, "pick up the apple at 128 64")
    u, v = round(128.5 * 320 / 256), round(64.5 * 240 / 256)
    ring = img[v - 10 : v + 11, u - 10 : u + 11].sum(axis=2)
    assert ring.max() > 0 and ring[10, 10] == 0  # a ring around the point, its centre left visible
    assert img[:, : u - 12].sum() == 0  # nothing drawn far left of it
