"""The tabletop world: object catalogue, flat symbol/number tiles, backgrounds, and MJCF generation.

Coordinates are the robot base frame: x forward, y left, z up, metres, with the table top at z = 0
(the arm is mounted on the table, as an xArm usually is). Objects and tiles are laid out inside
`LAYOUT_X` x `LAYOUT_Y`; the end-effector is a kinematic (mocap) gripper, so it never collides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robot_io.errors import RobotIOError

# Where objects and tiles may be placed. The gripper can reach a little further (env.SimConfig).
LAYOUT_X = (0.30, 0.62)
LAYOUT_Y = (-0.22, 0.22)
HOME_XYZ = (0.40, 0.0, 0.20)

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "green": (0.10, 0.62, 0.20),
    "blue": (0.10, 0.25, 0.85),
    "yellow": (0.95, 0.83, 0.10),
    "orange": (1.00, 0.50, 0.05),
    "purple": (0.55, 0.20, 0.70),
    "grey": (0.50, 0.50, 0.50),
    "white": (0.92, 0.92, 0.90),
}

# Table colours. The held-out ones never appear in split="train" scenes ("unseen backgrounds").
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "wood": (0.62, 0.47, 0.32),
    "grey": (0.55, 0.55, 0.56),
    "white": (0.86, 0.86, 0.83),
    "blue": (0.22, 0.30, 0.48),
    "green": (0.22, 0.42, 0.26),
}
TRAIN_BACKGROUNDS = ("wood", "grey", "white")
HELDOUT_BACKGROUNDS = ("blue", "green")


class SceneError(RobotIOError):
    """A task asks for a scene that cannot be built (unknown object, impossible layout)."""


@dataclass(frozen=True)
class ObjectKind:
    """One kind of object. `half_size` is per shape: box (x, y, z), sphere (r,), cylinder (r, h/2),
    capsule (r, half-length) lying along x, ellipsoid (x, y, z). It is scaled per scene."""

    kind: str
    shape: str
    cls: str  # semantic class: toy, drink, fruit, tool
    colours: tuple[str, ...]
    half_size: tuple[float, ...]
    heldout: bool = False  # only in held-out scenes ("unseen objects")

    @property
    def generic(self) -> bool:
        """Generic kinds are named by colour ("red block"); natural ones by kind ("apple")."""
        return len(self.colours) > 1


# Orange toys exist (the training data has them); layout() keeps them out of scenes that hold the
# fruit "orange" unless a task names both, so "the orange" is never ambiguous by accident.
_TOY_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple")
KINDS: dict[str, ObjectKind] = {
    k.kind: k
    for k in (
        ObjectKind("block", "box", "toy", _TOY_COLOURS, (0.022, 0.022, 0.022)),
        ObjectKind("ball", "sphere", "toy", _TOY_COLOURS, (0.023,)),
        ObjectKind("can", "cylinder", "drink", ("red", "blue", "green", "white"), (0.022, 0.040)),
        ObjectKind("apple", "sphere", "fruit", ("red",), (0.027,)),
        ObjectKind("orange", "sphere", "fruit", ("orange",), (0.028,)),
        ObjectKind("banana", "capsule", "fruit", ("yellow",), (0.015, 0.035)),
        ObjectKind("rock", "ellipsoid", "tool", ("grey",), (0.032, 0.025, 0.020)),
        # Held out of training scenes.
        ObjectKind("bottle", "cylinder", "drink", ("blue", "green", "white"), (0.018, 0.050), heldout=True),
        ObjectKind("lemon", "ellipsoid", "fruit", ("yellow",), (0.030, 0.022, 0.022), heldout=True),
        ObjectKind("pear", "ellipsoid", "fruit", ("green",), (0.024, 0.024, 0.032), heldout=True),
    )
}

SYMBOLS = ("star", "circle", "triangle", "square", "cross", "diamond")
HELDOUT_SYMBOLS = ("diamond",)
NUMBERS = tuple(str(n) for n in range(1, 10))
TILE_HALF = 0.035  # tiles are 7 cm squares, 2 mm thick, flush on the table


@dataclass(frozen=True)
class SceneObject:
    """An object in the current scene. `position` is where reset put it; ask the sim for live poses."""

    name: str  # unique in the scene: "red block", "apple"
    kind: str
    colour: str
    shape: str
    cls: str
    size: float  # characteristic length (m): cube root of the bounding box volume
    half_extents: tuple[float, float, float]  # bounding box half sizes (x, y, z) before yaw
    geom_size: tuple[float, ...]
    position: tuple[float, float, float]
    yaw: float = 0.0


@dataclass(frozen=True)
class Tile:
    """A flat symbol or number tile lying on the table."""

    name: str  # "star", "3"
    kind: str  # "symbol" | "number"
    position: tuple[float, float, float]

    @property
    def label(self) -> str:
        return f"the number {self.name}" if self.kind == "number" else f"the {self.name}"


def object_name(kind: str, colour: str) -> str:
    return f"{colour} {kind}" if KINDS[kind].generic else kind


def parse_object_name(name: str) -> tuple[str, str]:
    """'red block' -> ('block', 'red'); 'apple' -> ('apple', 'red'). Raises SceneError if unknown."""
    words = name.strip().lower().split()
    if len(words) == 1 and words[0] in KINDS and not KINDS[words[0]].generic:
        return words[0], KINDS[words[0]].colours[0]
    if len(words) == 2 and words[1] in KINDS and words[0] in KINDS[words[1]].colours:
        return words[1], words[0]
    raise SceneError(
        f"unknown object {name!r}; objects are a colour + block/ball/can/bottle "
        f"or one of {', '.join(k for k, v in KINDS.items() if not v.generic)}"
    )


def all_object_names(include_heldout: bool = True) -> list[str]:
    names = []
    for kind in KINDS.values():
        if kind.heldout and not include_heldout:
            continue
        names.extend(object_name(kind.kind, c) for c in kind.colours)
    return names


def tile_kind(name: str) -> str:
    if name in SYMBOLS:
        return "symbol"
    if name in NUMBERS:
        return "number"
    raise SceneError(f"unknown tile {name!r}; tiles are {', '.join(SYMBOLS)} or the numbers 1-9")


def make_object(name: str, scale: float, position: tuple[float, float, float], yaw: float) -> SceneObject:
    kind_name, colour = parse_object_name(name)
    kind = KINDS[kind_name]
    hs = tuple(v * scale for v in kind.half_size)
    if kind.shape == "box" or kind.shape == "ellipsoid":
        ext = (hs[0], hs[1], hs[2])
    elif kind.shape == "sphere":
        ext = (hs[0], hs[0], hs[0])
    elif kind.shape == "cylinder":
        ext = (hs[0], hs[0], hs[1])
    else:  # capsule lying along x
        ext = (hs[1] + hs[0], hs[0], hs[0])
    size = (8 * ext[0] * ext[1] * ext[2]) ** (1 / 3)
    x, y, _ = position
    return SceneObject(
        name=name,
        kind=kind_name,
        colour=colour,
        shape=kind.shape,
        cls=kind.cls,
        size=size,
        half_extents=ext,
        geom_size=hs,
        position=(x, y, ext[2]),
        yaw=yaw,
    )


# -- textures ---------------------------------------------------------------------------------------
def _glyph_png(name: str) -> bytes:
    """A 96x96 black-on-white image of a symbol or digit, PNG encoded (MuJoCo reads it from memory)."""
    import cv2  # opencv-python-headless; imported here so the catalogue imports without it

    n = 96
    img = np.full((n, n, 3), 245, np.uint8)
    ink = (20, 20, 20)
    c = n // 2
    if name in NUMBERS:
        font = cv2.FONT_HERSHEY_SIMPLEX
        (tw, th), _ = cv2.getTextSize(name, font, 2.6, 8)
        cv2.putText(img, name, (c - tw // 2, c + th // 2), font, 2.6, ink, 8, cv2.LINE_AA)
    elif name == "circle":
        cv2.circle(img, (c, c), 30, ink, -1, cv2.LINE_AA)
    elif name == "square":
        cv2.rectangle(img, (c - 27, c - 27), (c + 27, c + 27), ink, -1)
    elif name == "triangle":
        pts = np.array([[c, c - 32], [c - 34, c + 26], [c + 34, c + 26]], np.int32)
        cv2.fillPoly(img, [pts], ink, cv2.LINE_AA)
    elif name == "diamond":
        pts = np.array([[c, c - 36], [c - 24, c], [c, c + 36], [c + 24, c]], np.int32)
        cv2.fillPoly(img, [pts], ink, cv2.LINE_AA)
    elif name == "cross":
        cv2.line(img, (c - 28, c - 28), (c + 28, c + 28), ink, 14, cv2.LINE_AA)
        cv2.line(img, (c - 28, c + 28), (c + 28, c - 28), ink, 14, cv2.LINE_AA)
    elif name == "star":
        angles = np.arange(10) * math.pi / 5 - math.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, 36, 15)
        pts = np.stack([c + radii * np.cos(angles), c + radii * np.sin(angles)], 1).astype(np.int32)
        cv2.fillPoly(img, [pts], ink, cv2.LINE_AA)
    else:
        raise SceneError(f"no texture for tile {name!r}")
    cv2.rectangle(img, (1, 1), (n - 2, n - 2), (90, 90, 90), 2)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


_PNG_CACHE: dict[str, bytes] = {}


def glyph_png(name: str) -> bytes:
    if name not in _PNG_CACHE:
        _PNG_CACHE[name] = _glyph_png(name)
    return _PNG_CACHE[name]


# -- camera ---------------------------------------------------------------------------------------
# A D435 colour stream at 640x480 has fx = fy ~ 615 px; MuJoCo renders square pixels from fovy.
D435_FY_640x480 = 615.0
CAMERA_FOVY_DEG = math.degrees(2 * math.atan(240.0 / D435_FY_640x480))
CAMERA_POS = (-0.08, 0.0, 0.56)
CAMERA_LOOKAT = (0.47, 0.0, 0.0)


def _xyaxes(pos: tuple[float, ...], lookat: tuple[float, ...]) -> str:
    fwd = np.asarray(lookat, float) - np.asarray(pos, float)
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    return " ".join(f"{v:.6f}" for v in (*right, *up))


def _f(values: tuple[float, ...] | list[float]) -> str:
    return " ".join(f"{v:.5f}" for v in values)


def build_mjcf(
    objects: list[SceneObject], tiles: list[Tile], background: str, physics_dt: float
) -> tuple[str, dict]:
    """MJCF text and in-memory assets (tile textures) for one scene."""
    table_rgb = BACKGROUNDS[background]
    assets: dict[str, bytes] = {}
    asset_xml, tile_xml, obj_xml = [], [], []
    for tile in tiles:
        fname = f"tile_{tile.name}.png"
        assets[fname] = glyph_png(tile.name)
        asset_xml.append(f'<texture name="tex_{tile.name}" type="2d" file="{fname}"/>')
        asset_xml.append(f'<material name="mat_{tile.name}" texture="tex_{tile.name}" specular="0.1"/>')
        x, y, _ = tile.position
        # A textured plane (its texture maps once over the whole square) lying 1 mm above the table.
        tile_xml.append(
            f'<geom name="tile_{tile.name}" type="plane" size="{TILE_HALF} {TILE_HALF} 0.01" '
            f'pos="{x:.5f} {y:.5f} 0.0012" euler="0 0 -1.5708" material="mat_{tile.name}" '
            f'contype="0" conaffinity="0" group="1"/>'
        )
    for obj in objects:
        rgb = COLOURS[obj.colour]
        x, y, z = obj.position
        euler = f"0 0 {obj.yaw:.5f}"
        geom_euler = ' euler="0 1.5708 0"' if obj.shape == "capsule" else ""
        size = _f(obj.geom_size)
        # Rolling/torsional friction (condim 6) so balls and fruit stay where they are put.
        obj_xml.append(
            f'<body name="obj_{obj.name}" pos="{x:.5f} {y:.5f} {z + 0.002:.5f}" euler="{euler}">'
            f'<joint name="free_{obj.name}" type="free" damping="0.002"/>'
            f'<geom name="geom_{obj.name}" type="{obj.shape}" size="{size}"{geom_euler} '
            f'rgba="{_f(rgb)} 1" mass="0.08" condim="6" friction="1.0 0.02 0.002" '
            f'solref="0.01 1"/>'
            f"</body>"
        )
    finger = 'type="box" size="0.006 0.012 0.03" rgba="0.25 0.25 0.28 1" contype="0" conaffinity="0"'
    xml = f"""
<mujoco model="tabletop">
  <compiler angle="radian"/>
  <option timestep="{physics_dt}" integrator="implicitfast" cone="elliptic"/>
  <visual>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0.05 0.05 0.05"/>
    <map znear="0.02" zfar="10"/>
    <quality shadowsize="1024"/>
    <global offwidth="1280" offheight="960"/>
  </visual>
  <statistic extent="1.0" center="0.45 0 0"/>
  <asset>
    <material name="table" rgba="{_f(table_rgb)} 1" specular="0.05"/>
    <material name="floor" rgba="0.30 0.30 0.32 1"/>
    {"".join(asset_xml)}
  </asset>
  <worldbody>
    <light name="top" pos="0.4 0.1 1.2" dir="0 0 -1" diffuse="0.55 0.55 0.55" castshadow="true"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" material="floor"/>
    <geom name="table" type="box" size="0.55 0.6 0.02" pos="0.40 0 -0.02" material="table"
          friction="1.0 0.02 0.002"/>
    <geom name="base" type="cylinder" size="0.06 0.05" pos="0 0 0.05" rgba="0.85 0.85 0.87 1"
          contype="0" conaffinity="0"/>
    {"".join(tile_xml)}
    {"".join(obj_xml)}
    <body name="ee" mocap="true" pos="{_f(HOME_XYZ)}">
      <geom name="palm" type="box" size="0.015 0.05 0.012" pos="0 0 0.05" rgba="0.25 0.25 0.28 1"
            contype="0" conaffinity="0"/>
      <geom name="wrist" type="cylinder" size="0.02 0.06" pos="0 0 0.12" rgba="0.85 0.85 0.87 1"
            contype="0" conaffinity="0"/>
      <site name="grasp" size="0.004" rgba="1 0 0 0"/>
    </body>
    <body name="finger_left" mocap="true" pos="{HOME_XYZ[0]} {HOME_XYZ[1] + 0.04} {HOME_XYZ[2] + 0.01}">
      <geom name="finger_left" {finger}/>
    </body>
    <body name="finger_right" mocap="true" pos="{HOME_XYZ[0]} {HOME_XYZ[1] - 0.04} {HOME_XYZ[2] + 0.01}">
      <geom name="finger_right" {finger}/>
    </body>
    <camera name="front" mode="fixed" pos="{_f(CAMERA_POS)}" xyaxes="{_xyaxes(CAMERA_POS, CAMERA_LOOKAT)}"
            fovy="{CAMERA_FOVY_DEG:.4f}"/>
  </worldbody>
</mujoco>
"""
    return xml, assets


# -- layout ---------------------------------------------------------------------------------------
def _footprint(obj: SceneObject) -> float:
    """Radius of the object's footprint on the table (any yaw)."""
    return math.hypot(obj.half_extents[0], obj.half_extents[1])


def layout(task, rng: np.random.Generator, include_heldout: bool) -> tuple[list[SceneObject], list[Tile]]:
    """Objects and tiles for `task` (a robot_io.sim.tasks.TaskSpec), randomised by `rng`.

    Required objects and tiles come first; distractors are drawn so that the instruction stays
    unambiguous (task.constraint); positions are rejection-sampled without overlaps.
    """
    required = list(dict.fromkeys(task.objects or (task.target,)))
    for name in required:
        parse_object_name(name)
    constraint = task.constraint or ""
    pool = [n for n in all_object_names(include_heldout) if n not in required]
    if constraint.startswith("unique_colour:"):
        colour = constraint.split(":", 1)[1]
        pool = [n for n in pool if parse_object_name(n)[1] != colour]
    if constraint.startswith("unique_class:"):
        cls = constraint.split(":", 1)[1]
        pool = [n for n in pool if KINDS[parse_object_name(n)[0]].cls != cls]
    if "orange" in required:
        pool = [n for n in pool if parse_object_name(n)[1] != "orange"]
    if any(n != "orange" and parse_object_name(n)[1] == "orange" for n in required):
        pool = [n for n in pool if n != "orange"]
    if constraint in ("smallest", "largest"):
        # Only distractors that can be made clearly (25%) larger / smaller than the target.
        t_size = make_object(task.target, 0.8 if constraint == "smallest" else 1.25, (0, 0, 0), 0.0).size
        base = {n: make_object(n, 1.0, (0, 0, 0), 0.0).size for n in pool}
        if constraint == "smallest":
            pool = [n for n in pool if base[n] * 1.2 >= t_size * 1.25]
        else:
            pool = [n for n in pool if base[n] * 0.8 <= t_size / 1.25]
    for _attempt in range(200):
        n_extra = min(task.distractors, len(pool))
        extra = [str(x) for x in rng.choice(pool, size=n_extra, replace=False)] if n_extra else []
        names = required + extra
        scales = {n: float(rng.uniform(0.85, 1.15)) for n in names}
        if constraint in ("smallest", "largest"):
            # Make the target clearly the extreme one (>= 25% apart in characteristic size).
            scales[task.target] = 0.8 if constraint == "smallest" else 1.25
            probe = {n: make_object(n, scales[n], (0, 0, 0), 0.0).size for n in names}
            t_size = probe[task.target]
            ok = True
            for n in names:
                if n == task.target:
                    continue
                base = probe[n] / scales[n]
                lo, hi = (
                    (t_size * 1.25 / base, 1.2) if constraint == "smallest" else (0.8, t_size / 1.25 / base)
                )
                if lo > hi:
                    ok = False
                    break
                scales[n] = float(rng.uniform(lo, hi))
            if not ok:
                continue
        placed = _place(task, names, scales, rng)
        if placed is not None:
            return placed
    raise SceneError(f"could not lay out a scene for {task.instruction!r}; use fewer distractors")


def _sample_xy(rng: np.random.Generator, margin: float) -> np.ndarray:
    return np.array(
        [
            rng.uniform(LAYOUT_X[0] + margin, LAYOUT_X[1] - margin),
            rng.uniform(LAYOUT_Y[0] + margin, LAYOUT_Y[1] - margin),
        ]
    )


def _closer_than_target(task, name: str, p: np.ndarray, tile_pos: dict, obj_pos: dict) -> bool:
    """closest_to: every other object must be clearly (6 cm) further from the reference than the target."""
    if task.constraint != "closest_to" or name in (task.target, task.reference) or task.target not in obj_pos:
        return False
    ref = tile_pos.get(task.reference, obj_pos.get(task.reference))
    if ref is None:
        return False
    return bool(np.linalg.norm(p - ref) < np.linalg.norm(obj_pos[task.target] - ref) + 0.06)


def _place(task, names: list[str], scales: dict[str, float], rng: np.random.Generator):
    tile_names = list(dict.fromkeys(task.tiles))
    tiles: list[Tile] = []
    circles: list[tuple[np.ndarray, float]] = []  # occupied footprints (centre, radius)
    tile_r = TILE_HALF * math.sqrt(2)
    for t in tile_names:
        for _ in range(100):
            p = _sample_xy(rng, TILE_HALF + 0.01)
            if all(np.linalg.norm(p - c) > r + tile_r + 0.02 for c, r in circles):
                break
        else:
            return None
        circles.append((p, tile_r))
        tiles.append(Tile(t, tile_kind(t), (float(p[0]), float(p[1]), 0.0)))
    tile_pos = {t.name: np.array(t.position[:2]) for t in tiles}
    objects: list[SceneObject] = []
    obj_pos: dict[str, np.ndarray] = {}
    # Place the reference first for closest_to / near so the target can be placed relative to it.
    order = sorted(names, key=lambda n: (n != task.reference, n != task.target))
    ref_radius = 0.0
    for name in order:
        proto = make_object(name, scales[name], (0, 0, 0), 0.0)
        r = _footprint(proto)
        for _ in range(200):
            if task.constraint == "closest_to" and name == task.target:
                ref = tile_pos.get(task.reference, obj_pos.get(task.reference))
                if ref is None:
                    return None
                ref_r = tile_r if task.reference in tile_pos else ref_radius
                ang = rng.uniform(0, 2 * math.pi)
                p = ref + (ref_r + r + 0.03 + rng.uniform(0, 0.02)) * np.array([math.cos(ang), math.sin(ang)])
            else:
                p = _sample_xy(rng, r + 0.005)
            if not (LAYOUT_X[0] <= p[0] <= LAYOUT_X[1] and LAYOUT_Y[0] <= p[1] <= LAYOUT_Y[1]):
                continue
            if any(np.linalg.norm(p - c) < rr + r + 0.025 for c, rr in circles):
                continue
            # A near goal must not start out reached.
            near_ref = task.goal == "near" and name == task.target and task.reference in obj_pos
            if near_ref and np.linalg.norm(p - obj_pos[task.reference]) < 0.18:
                continue
            if _closer_than_target(task, name, p, tile_pos, obj_pos):
                continue
            break
        else:
            return None
        circles.append((p, r))
        obj_pos[name] = p
        if name == task.reference:
            ref_radius = r
        objects.append(
            make_object(
                name, scales[name], (float(p[0]), float(p[1]), 0.0), float(rng.uniform(-math.pi, math.pi))
            )
        )
    # Keep the caller's order (required first) so objects[0] is the target in most tasks.
    objects.sort(key=lambda o: names.index(o.name))
    return objects, tiles
