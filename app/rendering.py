"""Pixels for the live view: depth colourisation, the action overlay, and the side-by-side JPEG.

Pure numpy/OpenCV functions (no gradio, no devices), so they run on the preview thread and are
unit-tested against hand-computed projections.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import cv2
import numpy as np

from robot_io.types import CameraIntrinsics, EndEffectorCommand

# Drawn motion is scaled up because one RT-2 step (<= 5 cm) is a few pixels at arm's length;
# the legend prints the factor so nobody mistakes the arrow for the true distance.
ARROW_SCALE = 4.0


@dataclass(frozen=True)
class CameraPose:
    """Where the camera sits in the robot base frame: p_cam = rotation @ (p_base - position).

    Camera axes follow the pinhole convention of CameraIntrinsics.project (x right, y down,
    z forward).
    """

    rotation: np.ndarray  # 3x3, rows are the camera axes expressed in the base frame
    position: np.ndarray  # camera centre in the base frame, metres

    @classmethod
    def look_at(cls, eye: tuple[float, float, float], target: tuple[float, float, float]) -> CameraPose:
        """A camera at `eye` looking at `target`, image 'up' towards base +z."""
        e, t = np.asarray(eye, float), np.asarray(target, float)
        forward = t - e
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, (0.0, 0.0, 1.0))
        if np.linalg.norm(right) < 1e-9:  # looking straight down: pick base -y as image right
            right = np.array([0.0, -1.0, 0.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        return cls(rotation=np.stack([right, down, forward]), position=e)

    @classmethod
    def from_matrix(cls, base_to_camera: np.ndarray) -> CameraPose:
        """From a 4x4 homogeneous transform taking base-frame points into the camera frame."""
        m = np.asarray(base_to_camera, float)
        rot = m[:3, :3]
        return cls(rotation=rot, position=-rot.T @ m[:3, 3])

    def to_camera(self, point_base: np.ndarray) -> np.ndarray:
        return self.rotation @ (np.asarray(point_base, float) - self.position)


# A D435 on a tripod in front of the robot looking down at the workspace: used only when the
# camera does not report its pose (real rigs should calibrate; the sim camera reports its own).
DEFAULT_CAMERA_POSE = CameraPose.look_at(eye=(1.1, 0.0, 0.7), target=(0.45, 0.0, 0.0))


def camera_pose_of(camera: object) -> CameraPose:
    """The camera's pose if it exposes one (`base_to_camera` 4x4 or a CameraPose), else the default."""
    for attr in ("camera_pose", "base_to_camera", "extrinsics"):
        value = getattr(camera, attr, None)
        if callable(value):
            value = value()
        if isinstance(value, CameraPose):
            return value
        if isinstance(value, tuple) and len(value) == 2:
            # (position, rotation whose columns are the camera axes in the base frame): the sim's form
            position, axes = (np.asarray(v, float) for v in value)
            return CameraPose(rotation=axes.T, position=position)
        if value is not None:
            arr = np.asarray(value, float)
            if arr.shape == (4, 4):
                return CameraPose.from_matrix(arr)
    return DEFAULT_CAMERA_POSE


def depth_range(depth_m: np.ndarray) -> tuple[float, float]:
    """A stable colour range from one frame (2nd..98th percentile of valid pixels)."""
    valid = depth_m[np.isfinite(depth_m) & (depth_m > 0)]
    if valid.size < 16:
        return 0.2, 2.0
    near, far = np.percentile(valid, [2, 98])
    if far - near < 0.05:
        far = near + 0.05
    return float(near), float(far)


def colorize_depth(depth_m: np.ndarray | None, near: float, far: float, shape: tuple[int, int]) -> np.ndarray:
    """Depth in metres -> RGB (near = red/warm, far = blue), pixels without a reading black.

    A fixed range (not per-frame normalisation) keeps a colour meaning the same distance from
    frame to frame, so the operator can read depth at a glance.
    """
    h, w = shape
    if depth_m is None:
        out = np.full((h, w, 3), 40, np.uint8)
        cv2.putText(
            out, "no depth", (10, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (200, 200, 200), 1, cv2.LINE_AA
        )
        return out
    valid = np.isfinite(depth_m) & (depth_m > 0)
    norm = np.clip((np.nan_to_num(depth_m, nan=far) - near) / max(far - near, 1e-6), 0.0, 1.0)
    # TURBO maps 0 -> dark blue; invert so near objects are warm, as in the RealSense viewer.
    u8 = ((1.0 - norm) * 255).astype(np.uint8)
    bgr = cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)
    rgb = bgr[..., ::-1].copy()
    rgb[~valid] = 0
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_NEAREST)
    return rgb


def project_motion(
    intrinsics: CameraIntrinsics,
    pose: CameraPose,
    ee_xyz_m: np.ndarray,
    delta_xyz_m: tuple[float, float, float],
    scale: float = ARROW_SCALE,
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Pixels of the end effector and of where the (scaled) translation would take it, or None
    when either point is behind the camera."""
    start = pose.to_camera(ee_xyz_m)
    end = pose.to_camera(np.asarray(ee_xyz_m, float) + scale * np.asarray(delta_xyz_m, float))
    if start[2] <= 0.01 or end[2] <= 0.01:
        return None
    return intrinsics.project(start), intrinsics.project(end)


def action_caption(command: EndEffectorCommand) -> str:
    dx, dy, dz = (v * 100 for v in command.delta_xyz_m)
    rr, rp, ry = (float(np.degrees(v)) for v in command.delta_rpy_rad)
    return (
        f"dxyz {dx:+.1f} {dy:+.1f} {dz:+.1f} cm  drpy {rr:+.0f} {rp:+.0f} {ry:+.0f} deg  "
        f"grip {command.gripper * 100:.0f}%"
    )


def draw_action(
    color: np.ndarray,
    intrinsics: CameraIntrinsics,
    pose: CameraPose,
    ee_xyz_m: np.ndarray | None,
    command: EndEffectorCommand | None,
) -> np.ndarray:
    """Colour image with the commanded translation as an arrow from the end effector, a gripper
    glyph whose jaw gap shows the commanded opening, and a one-line caption."""
    img = np.ascontiguousarray(color).copy()
    h, w = img.shape[:2]
    # Intrinsics describe the camera's native resolution; the frame may be rendered smaller.
    sx, sy = w / intrinsics.width, h / intrinsics.height
    if command is None:
        return img
    if ee_xyz_m is not None:
        pts = project_motion(intrinsics, pose, ee_xyz_m, command.delta_xyz_m)
        if pts is not None:
            (u0, v0), (u1, v1) = pts
            p0 = (round(u0 * sx), round(v0 * sy))
            p1 = (round(u1 * sx), round(v1 * sy))
            if max(abs(p0[0]), abs(p0[1]), abs(p1[0]), abs(p1[1])) < 10 * max(w, h):
                cv2.arrowedLine(img, p0, p1, (0, 0, 0), 4, cv2.LINE_AA, tipLength=0.3)
                cv2.arrowedLine(img, p0, p1, (255, 230, 0), 2, cv2.LINE_AA, tipLength=0.3)
                _draw_gripper(img, p0, command.gripper)
    bar_h = 18
    cv2.rectangle(img, (0, h - bar_h), (w, h), (0, 0, 0), -1)
    caption = action_caption(command) + f"  (arrow x{ARROW_SCALE:g})"
    font_scale = 0.35 if w < 400 else 0.45
    cv2.putText(
        img, caption, (4, h - 5), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA
    )
    if command.terminate:
        cv2.putText(img, "TERMINATE", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 80, 80), 2, cv2.LINE_AA)
    return img


def draw_plan_points(img: np.ndarray, plan: str) -> np.ndarray:
    """Mark where a grounded plan says its objects are: a ring and the object's name (in place)."""
    from rt2_cot.data.grounding import plan_points

    h, w = img.shape[:2]
    for name, x, y in plan_points(plan):
        u, v = round((x + 0.5) * w / 256), round((y + 0.5) * h / 256)
        cv2.circle(img, (u, v), 9, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.circle(img, (u, v), 9, (0, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(img, name, (u + 11, v + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, name, (u + 11, v + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 255, 255), 1, cv2.LINE_AA)
    return img


def _draw_gripper(img: np.ndarray, centre: tuple[int, int], opening: float) -> None:
    """Two jaws whose gap is the commanded opening: green open, orange closed."""
    u, v = centre
    gap = int(3 + 9 * float(np.clip(opening, 0.0, 1.0)))
    colour = (60, 220, 60) if opening >= 0.5 else (255, 150, 0)
    for side in (-1, 1):
        x = u + side * gap
        cv2.line(img, (x, v - 8), (x, v + 8), colour, 3, cv2.LINE_AA)
    cv2.line(img, (u - gap, v - 8), (u + gap, v - 8), colour, 2, cv2.LINE_AA)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    h = max(left.shape[0], right.shape[0])
    if right.shape[0] != left.shape[0]:
        right = cv2.resize(right, (int(right.shape[1] * left.shape[0] / right.shape[0]), left.shape[0]))
    spacer = np.zeros((h, gap, 3), np.uint8)
    return np.concatenate([left, spacer, right], axis=1)


def encode_jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV only fails on empty images
        raise ValueError("could not encode preview image")
    return buf.tobytes()


def jpeg_data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
