"""The MuJoCo tabletop simulator: a mocap gripper driven by RT-2 end-effector deltas, seeded scenes,
task success predicates, a scripted oracle, and colour+depth rendering like a D435.

Thread safety: one lock guards MuJoCo's model/data, so a console may render previews from another
thread while the control loop steps. All OpenGL work happens on one process-wide render thread
(EGL contexts belong to one thread at a time), which is why `render()` can be called from anywhere.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

# Headless rendering default; must be set before mujoco is imported.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import mujoco
import numpy as np
from loguru import logger

from robot_io.errors import RobotIOError
from robot_io.sim.scene import (
    CAMERA_FOVY_DEG,
    HOME_XYZ,
    TILE_HALF,
    SceneObject,
    Tile,
    build_mjcf,
    layout,
)
from robot_io.sim.tasks import SPLITS, TaskSpec, sample_task
from robot_io.types import ArmState, CameraIntrinsics, EndEffectorCommand, Frame


class SimError(RobotIOError):
    """The simulator cannot do what was asked (rendering unavailable, no scene yet)."""


@dataclass(frozen=True)
class SimConfig:
    """Simulator settings. Defaults match the RT-2 setup the model is trained for."""

    control_hz: float = 10.0  # one apply() = 1/control_hz of simulated time (RT-2 ran at ~3-5 Hz)
    physics_dt: float = 0.005  # 200 Hz physics is plenty for resting/dropping rigid objects
    width: int = 320  # default render size; intrinsics are a D435 at 640x480 scaled to it
    height: int = 240
    # Where the end-effector may go (base frame, metres). Wider than the object layout so the
    # shield, not the sim, is what normally limits motion; z keeps the fingertips off the table.
    ee_bounds: tuple[tuple[float, float], ...] = ((0.15, 0.80), (-0.40, 0.40), (0.008, 0.45))
    max_roll_pitch_rad: float = 0.6
    grasp_threshold: float = 0.5  # gripper opening below which the gripper counts as closed
    grasp_radius_m: float = 0.022  # how far (xy) the object centre may be from the fingertips
    max_opening_m: float = 0.085  # finger gap when fully open
    settle_s: float = 0.2  # physics time run after reset so objects rest before the first frame

    @property
    def substeps(self) -> int:
        return max(1, round(1.0 / (self.control_hz * self.physics_dt)))


# -- rendering on one GL thread ---------------------------------------------------------------------
class _GLThread:
    """One thread owning one offscreen GL context; every MuJoCo render call is submitted here."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mujoco-gl")
        self._context = None

    def run(self, fn):
        return self._pool.submit(self._call, fn).result()

    def _call(self, fn):
        if self._context is None:
            try:
                self._context = mujoco.GLContext(1280, 960)
            except Exception as exc:  # EGL/OSMesa missing or no device: say what to install
                raise SimError(
                    f"cannot create an offscreen OpenGL context with MUJOCO_GL={os.environ.get('MUJOCO_GL')}: "
                    f"{exc}. Install libegl1 (or libosmesa6 and set MUJOCO_GL=osmesa)"
                ) from exc
            self._context.make_current()
        return fn()


_GL: _GLThread | None = None
_GL_PID = 0
_GL_LOCK = threading.Lock()


def _gl() -> _GLThread:
    global _GL, _GL_PID
    with _GL_LOCK:
        if _GL is not None and os.getpid() != _GL_PID:
            # OpenGL (EGL/llvmpipe) state does not survive fork(): rendering would hang forever.
            raise SimError(
                "cannot render in a process forked after this process rendered; start workers with "
                "multiprocessing's 'spawn' or 'forkserver' method (or fork before the first render)"
            )
        if _GL is None:
            _GL, _GL_PID = _GLThread(), os.getpid()
            atexit.register(_GL._pool.shutdown, wait=False)
        return _GL


def _rpy_to_quat(rpy: np.ndarray) -> np.ndarray:
    """Roll-pitch-yaw (extrinsic x, y, z) -> MuJoCo quaternion (w, x, y, z)."""
    q = np.zeros(4)
    mat = _rpy_to_mat(rpy)
    mujoco.mju_mat2Quat(q, mat.reshape(-1))
    return q


def _rpy_to_mat(rpy: np.ndarray) -> np.ndarray:
    r, p, y = (float(v) for v in rpy)
    cr, sr, cp, sp, cy, sy = math.cos(r), math.sin(r), math.cos(p), math.sin(p), math.cos(y), math.sin(y)
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


@dataclass
class _Body:
    obj: SceneObject
    body_id: int
    qpos_adr: int
    qvel_adr: int


@dataclass
class _RenderState:
    model: mujoco.MjModel
    context: object = None  # mujoco.MjrContext, created on the GL thread
    scene: object = None
    option: object = field(default_factory=mujoco.MjvOption)
    camera: object = None


class TabletopSim:
    """A table, objects, flat tiles and a mocap gripper. Call `reset(task, seed)` to build a scene."""

    def __init__(self, config: SimConfig = SimConfig()) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._render_state: _RenderState | None = None
        self._frame_index = 0
        self.task: TaskSpec
        self.objects: list[SceneObject] = []
        self.tiles: list[Tile] = []
        self.seed = 0
        self.reset(sample_task(np.random.default_rng(0), "pick"), seed=0)

    # -- scene ---------------------------------------------------------------------------------
    def reset(self, task: TaskSpec, seed: int) -> None:
        """Build a randomised scene for `task` (same task + seed -> same scene) and home the gripper."""
        rng = np.random.default_rng(seed)
        include_heldout = task.split in SPLITS and SPLITS[task.split].objects
        objects, tiles = layout(task, rng, include_heldout=include_heldout)
        xml, assets = build_mjcf(objects, tiles, task.background, self.config.physics_dt)
        model = mujoco.MjModel.from_xml_string(xml, assets)
        data = mujoco.MjData(model)
        with self._lock:
            old = self._render_state
            self.model, self.data = model, data
            self.task, self.seed = task, seed
            self.objects, self.tiles = objects, tiles
            self._bodies = {}
            for obj in objects:
                bid = model.body(f"obj_{obj.name}").id
                jnt = model.body_jntadr[bid]
                self._bodies[obj.name] = _Body(
                    obj, bid, int(model.jnt_qposadr[jnt]), int(model.jnt_dofadr[jnt])
                )
            self._mocap = {
                n: int(model.body_mocapid[model.body(n).id]) for n in ("ee", "finger_left", "finger_right")
            }
            self._ee_pos = np.array(HOME_XYZ, dtype=float)
            self._ee_rpy = np.zeros(3)
            self._gripper = 1.0
            self._opening = 1.0
            self._held: str | None = None
            self._held_offset = np.zeros(3)
            self._held_quat = np.array([1.0, 0.0, 0.0, 0.0])
            self._terminated = False
            self._last_delta = np.zeros(3)
            self.steps = 0
            self._render_state = _RenderState(model)
            self._set_mocap(self._ee_pos, self._ee_rpy, self._opening)
            mujoco.mj_forward(model, data)
            for _ in range(max(1, round(self.config.settle_s / self.config.physics_dt))):
                mujoco.mj_step(model, data)
            self.data.qvel[:] = 0.0
            mujoco.mj_forward(model, data)
        if old is not None:
            self._free_render_state(old)

    def retarget(self, task: TaskSpec) -> None:
        """Pose a different task in the current scene (the console typed a new instruction).

        Raises SimError unless every object and tile the task needs is already on the table.
        """
        have = {o.name for o in self.objects} | {t.name for t in self.tiles}
        missing = [n for n in (task.target, *([task.reference] if task.reference else [])) if n not in have]
        if missing:
            raise SimError(
                f"this scene has no {', '.join(missing)}; start a new scene for {task.instruction!r}"
            )
        with self._lock:
            self.task = task

    def home(self, xyz: tuple[float, float, float] | None = None) -> None:
        """Teleport the gripper home (or to `xyz`, metres in the base frame), open, releasing anything
        it holds. Datagen starts some episodes from elsewhere so the arm's pose stops giving the
        target away."""
        with self._lock:
            self._held = None
            self._ee_pos = np.array(HOME_XYZ if xyz is None else xyz, dtype=float)
            self._ee_rpy = np.zeros(3)
            self._gripper = self._opening = 1.0
            self._terminated = False
            self._set_mocap(self._ee_pos, self._ee_rpy, self._opening)
            mujoco.mj_forward(self.model, self.data)

    # -- control -------------------------------------------------------------------------------
    def apply(self, command: EndEffectorCommand) -> EndEffectorCommand:
        """Run one control step (1/control_hz s of physics); return the command actually executed
        after the simulator's own reach limits (a terminate command holds still)."""
        cfg = self.config
        with self._lock:
            start_pos, start_rpy, start_open = self._ee_pos.copy(), self._ee_rpy.copy(), self._opening
            if command.terminate:
                self._terminated = True
                goal_pos, goal_rpy, grip = start_pos, start_rpy, self._gripper
            else:
                lo = np.array([b[0] for b in cfg.ee_bounds])
                hi = np.array([b[1] for b in cfg.ee_bounds])
                goal_pos = np.clip(start_pos + np.asarray(command.delta_xyz_m, dtype=float), lo, hi)
                goal_rpy = start_rpy + np.asarray(command.delta_rpy_rad, dtype=float)
                lim = cfg.max_roll_pitch_rad
                goal_rpy[:2] = np.clip(goal_rpy[:2], -lim, lim)
                goal_rpy[2] = (goal_rpy[2] + math.pi) % (2 * math.pi) - math.pi
                grip = float(np.clip(command.gripper, 0.0, 1.0))
            was_open = self._gripper >= cfg.grasp_threshold
            goal_open = grip
            if self._held is not None:  # fingers stop on the object they hold
                goal_open = max(grip, self._held_opening())
            n = cfg.substeps
            d_rpy = goal_rpy - start_rpy
            d_rpy[2] = (d_rpy[2] + math.pi) % (2 * math.pi) - math.pi
            for i in range(n):
                a = (i + 1) / n
                self._set_mocap(
                    start_pos + a * (goal_pos - start_pos),
                    start_rpy + a * d_rpy,
                    start_open + a * (goal_open - start_open),
                )
                if self._held is not None:
                    self._pin_held()
                mujoco.mj_step(self.model, self.data)
            self._ee_pos, self._ee_rpy, self._gripper, self._opening = (
                goal_pos,
                start_rpy + d_rpy,
                grip,
                goal_open,
            )
            self._last_delta = goal_pos - start_pos
            self._ee_rpy[2] = (self._ee_rpy[2] + math.pi) % (2 * math.pi) - math.pi
            closed = grip < cfg.grasp_threshold
            if self._held is not None and not closed:
                self._release()
            elif self._held is None and closed and was_open:
                self._try_grasp()
            if self._held is not None:
                self._opening = max(grip, self._held_opening())
                self._set_mocap(self._ee_pos, self._ee_rpy, self._opening)
                self._pin_held()
            mujoco.mj_forward(self.model, self.data)
            self.steps += 1
            if command.terminate:
                return command
            return EndEffectorCommand(
                delta_xyz_m=tuple(float(v) for v in goal_pos - start_pos),
                delta_rpy_rad=tuple(float(v) for v in d_rpy),
                gripper=grip,
                terminate=False,
            )

    def _set_mocap(self, pos: np.ndarray, rpy: np.ndarray, opening: float) -> None:
        mat = _rpy_to_mat(rpy)
        quat = _rpy_to_quat(rpy)
        ee = self._mocap["ee"]
        self.data.mocap_pos[ee] = pos
        self.data.mocap_quat[ee] = quat
        half_gap = 0.5 * self.config.max_opening_m * float(np.clip(opening, 0.0, 1.0)) + 0.006
        for name, sign in (("finger_left", 1.0), ("finger_right", -1.0)):
            mid = self._mocap[name]
            self.data.mocap_pos[mid] = pos + mat @ np.array([0.0, sign * half_gap, 0.03])
            self.data.mocap_quat[mid] = quat

    def _held_opening(self) -> float:
        obj = self._bodies[self._held].obj
        return min(1.0, 2 * min(obj.half_extents[0], obj.half_extents[1]) / self.config.max_opening_m)

    def _try_grasp(self) -> None:
        best, best_d = None, float("inf")
        for name, body in self._bodies.items():
            d = float(np.linalg.norm(self.data.xpos[body.body_id][:2] - self._ee_pos[:2]))
            if d < best_d and self.can_grasp(name):
                best, best_d = name, d
        if best is None:
            return
        body = self._bodies[best]
        ee_mat = _rpy_to_mat(self._ee_rpy)
        self._held = best
        self._held_offset = ee_mat.T @ (self.data.xpos[body.body_id] - self._ee_pos)
        ee_quat = _rpy_to_quat(self._ee_rpy)
        inv = np.zeros(4)
        mujoco.mju_negQuat(inv, ee_quat)
        rel = np.zeros(4)
        mujoco.mju_mulQuat(rel, inv, self.data.xquat[body.body_id])
        self._held_quat = rel

    def _pin_held(self) -> None:
        """A held object follows the fingers rigidly: a grasp that never slips (robust oracle data)."""
        body = self._bodies[self._held]
        pos = self.data.mocap_pos[self._mocap["ee"]]
        quat = self.data.mocap_quat[self._mocap["ee"]]
        mat = np.zeros(9)
        mujoco.mju_quat2Mat(mat, quat)
        self.data.qpos[body.qpos_adr : body.qpos_adr + 3] = pos + mat.reshape(3, 3) @ self._held_offset
        q = np.zeros(4)
        mujoco.mju_mulQuat(q, quat, self._held_quat)
        self.data.qpos[body.qpos_adr + 3 : body.qpos_adr + 7] = q
        self.data.qvel[body.qvel_adr : body.qvel_adr + 6] = 0.0

    def _release(self) -> None:
        self._held = None

    # -- state ---------------------------------------------------------------------------------
    def ee_state(self) -> ArmState:
        with self._lock:
            return ArmState(
                ee_xyz_m=self._ee_pos.copy(),
                ee_rpy_rad=self._ee_rpy.copy(),
                gripper=float(self._gripper),
                holding=self._terminated,
                extras={"grasped": self._held, "sim_time_s": float(self.data.time), "steps": self.steps},
            )

    @property
    def held(self) -> str | None:
        """Name of the object in the gripper, or None."""
        return self._held

    @property
    def last_delta(self) -> np.ndarray:
        """End-effector translation actually executed by the last step (after shield and reach limits)."""
        return self._last_delta.copy()

    def can_grasp(self, name: str) -> bool:
        """Would closing the gripper now pick up `name`? (fingertips around its centre, within its height)"""
        with self._lock:
            pos = self.data.xpos[self._bodies[name].body_id]
            hz = self._bodies[name].obj.half_extents[2]
            d = float(np.linalg.norm(pos[:2] - self._ee_pos[:2]))
            return (
                d <= self.config.grasp_radius_m
                and pos[2] - hz - 0.01 <= self._ee_pos[2] <= pos[2] + hz + 0.005
            )

    @property
    def gripper(self) -> float:
        return self._gripper

    def object_position(self, name: str) -> np.ndarray:
        with self._lock:
            return self.data.xpos[self._bodies[name].body_id].copy()

    def object_speed(self, name: str) -> float:
        with self._lock:
            b = self._bodies[name]
            return float(np.linalg.norm(self.data.qvel[b.qvel_adr : b.qvel_adr + 3]))

    def object(self, name: str) -> SceneObject:
        return self._bodies[name].obj

    def tile(self, name: str) -> Tile:
        for t in self.tiles:
            if t.name == name:
                return t
        raise SimError(f"no tile {name!r} in this scene")

    def scene_objects(self) -> list[SceneObject]:
        """Objects with their current positions."""
        from dataclasses import replace

        with self._lock:
            return [
                replace(o, position=tuple(float(v) for v in self.object_position(o.name)))
                for o in self.objects
            ]

    # -- task ----------------------------------------------------------------------------------
    def _resting(self, name: str) -> bool:
        obj = self.object(name)
        return (
            self._held != name
            and self.object_position(name)[2] < obj.half_extents[2] + 0.015
            and self.object_speed(name) < 0.05
        )

    def goal_reached(self, name: str | None = None) -> bool:
        """Is the target (or `name`) where the goal wants it, whether or not it is still moving?"""
        task = self.task
        name = name or task.target
        pos = self.object_position(name)
        if task.goal == "lift":
            return self._held == name and pos[2] - self.object(name).half_extents[2] > 0.05
        if task.goal == "near":
            ref = self.object_position(task.reference)
            return self._held != name and float(np.linalg.norm(pos[:2] - ref[:2])) < NEAR_DISTANCE_M
        tile = np.array(self.tile(task.reference).position[:2])
        return self._held != name and bool(np.all(np.abs(pos[:2] - tile) <= TILE_HALF))

    def success(self) -> bool:
        """The task's predicate on the simulator state (lifted / resting near / resting on the tile)."""
        with self._lock:
            if not self.goal_reached():
                return False
            return self.task.goal == "lift" or self._resting(self.task.target)

    def oracle(self) -> tuple[EndEffectorCommand, str]:
        """Scripted action from privileged state and the canonical natural-language plan."""
        from robot_io.sim.oracle import oracle_command

        with self._lock:
            return oracle_command(self), self.task.plan

    # -- rendering -----------------------------------------------------------------------------
    def intrinsics(self, width: int | None = None, height: int | None = None) -> CameraIntrinsics:
        """A D435 at 640x480 scaled to the render size (square pixels, centred principal point)."""
        w, h = width or self.config.width, height or self.config.height
        fy = 0.5 * h / math.tan(math.radians(CAMERA_FOVY_DEG) / 2)
        return CameraIntrinsics(width=w, height=h, fx=fy, fy=fy, ppx=w / 2, ppy=h / 2)

    def camera_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Camera position and rotation (columns: x right, y down, z forward) in the base frame."""
        with self._lock:
            cid = self.model.camera("front").id
            pos = self.data.cam_xpos[cid].copy()
            mat = self.data.cam_xmat[cid].reshape(3, 3).copy()
        # MuJoCo cameras look along -z with y up; the optical frame flips y and z.
        return pos, mat @ np.diag([1.0, -1.0, -1.0])

    def project(
        self, point_xyz: np.ndarray, width: int | None = None, height: int | None = None
    ) -> tuple[float, float]:
        """Pixel (u, v) of a base-frame point in a render of the given size (for image-space questions)."""
        pos, rot = self.camera_pose()
        return self.intrinsics(width, height).project(rot.T @ (np.asarray(point_xyz, float) - pos))

    def pixel_of(self, name: str, width: int | None = None, height: int | None = None) -> tuple[float, float]:
        """Pixel of an object's centre or a tile's centre in a render of the given size."""
        if name in self._bodies:
            return self.project(self.object_position(name), width, height)
        return self.project(np.array(self.tile(name).position), width, height)

    def render(self, width: int | None = None, height: int | None = None) -> Frame:
        """Colour (RGB uint8) + depth (uint16 mm) from the fixed front camera, like a D435."""
        w, h = width or self.config.width, height or self.config.height
        if w > 1280 or h > 960:
            raise SimError(f"render size {w}x{h} is larger than the 1280x960 offscreen buffer")
        color, depth_m = _gl().run(lambda: self._render_on_gl_thread(w, h))
        depth = np.where(depth_m < 9.0, np.round(depth_m * 1000.0), 0).astype(np.uint16)
        with self._lock:
            self._frame_index += 1
            index = self._frame_index
        return Frame(
            color=color,
            depth=depth,
            depth_scale_m=0.001,
            intrinsics=self.intrinsics(w, h),
            timestamp_s=time.monotonic(),
            index=index,
        )

    def _render_on_gl_thread(self, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            rs = self._render_state
            if rs.context is None:
                rs.context = mujoco.MjrContext(rs.model, mujoco.mjtFontScale.mjFONTSCALE_100)
                mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, rs.context)
                rs.context.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
                rs.scene = mujoco.MjvScene(rs.model, maxgeom=200)
                rs.camera = mujoco.MjvCamera()
                rs.camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
                rs.camera.fixedcamid = rs.model.camera("front").id
            mujoco.mjv_updateScene(
                self.model, self.data, rs.option, None, rs.camera, mujoco.mjtCatBit.mjCAT_ALL, rs.scene
            )
            model = self.model
        rect = mujoco.MjrRect(0, 0, w, h)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, rs.context)
        mujoco.mjr_render(rect, rs.scene, rs.context)
        rgb = np.empty((h, w, 3), np.uint8)
        zbuf = np.empty((h, w), np.float32)
        mujoco.mjr_readPixels(rgb, zbuf, rect, rs.context)
        # Reverse-Z depth buffer -> metric z-depth (same algebra as mujoco.Renderer).
        near = np.float32(model.vis.map.znear * model.stat.extent)
        far = np.float32(model.vis.map.zfar * model.stat.extent)
        c = -(far + near) / (far - near)
        d = -(np.float32(2) * far * near) / (far - near)
        c, d = np.float32(-0.5) * c - np.float32(0.5), np.float32(-0.5) * d
        depth = (d / (zbuf.astype(np.float64) + c)).astype(np.float32)
        return np.ascontiguousarray(np.flipud(rgb)), np.ascontiguousarray(np.flipud(depth))

    def _free_render_state(self, rs: _RenderState) -> None:
        if rs.context is not None:
            ctx = rs.context
            rs.context = None
            try:
                _gl().run(ctx.free)
            except Exception as exc:  # freeing must never break a reset
                logger.debug(f"freeing a render context failed: {exc}")

    def close(self) -> None:
        """Free the GL resources of this simulator (the process-wide GL thread stays)."""
        with self._lock:
            rs = self._render_state
        if rs is not None:
            self._free_render_state(rs)


NEAR_DISTANCE_M = 0.10  # centre-to-centre distance that counts as "near" (objects are 3-6 cm wide)
