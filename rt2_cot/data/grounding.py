"""Grounded plans: where the plan's objects are in the image, written into the plan (ECoT-style).

RT-2's plan names the object ("pick up the banana"); Embodied Chain-of-Thought (Zawalski et al.,
2024) showed that a VLA acts better when its reasoning also says where things are. At laptop scale
this matters more: a 4-layer decoder that must find "the banana" among distractors and turn its
position into a motion in one step rarely does (rt2-cot-mini's first checkpoint: the right object
in 64% of plans, 0% closed-loop success). Writing the location first turns one hard step into two
supervised ones:

    plan : pick up the banana at 140 60 . action : 0 181 36 128 128 128 128 255
    plan : move the apple at 30 41 near the red ball at 200 97 . action : ...

Coordinates are the object's centre in the image, x right and y down, scaled to 0..255 whatever the
frame size (MiniLM has single tokens for 0..255, as for the actions). Only objects are located,
never the gripper: a reused plan (rt2_cot.backends.builtin) stays true while the arm moves, because
objects stay put until grasped. The gripper is located by co-training questions instead
(`pointing_questions`: "where is the gripper" -> "128 71").

`rt2-cot datagen` records the points of every frame; `add_grounding` backfills shards written before
it did, by replaying each episode's oracle without rendering (deterministic given task and seed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from loguru import logger

GRID = 256  # coordinates are integers 0..GRID-1
GRIPPER = "gripper"


def _scaled(u: float, v: float, width: int, height: int) -> list[int]:
    x = int(np.clip(np.floor(u / width * GRID), 0, GRID - 1))
    y = int(np.clip(np.floor(v / height * GRID), 0, GRID - 1))
    return [x, y]


def scene_points(sim, width: int, height: int) -> dict[str, list[int]]:
    """Image points (0..255) of the gripper's fingertips, every object and every tile in a render
    of the given size. Objects outside the view clip to the border."""
    points = {GRIPPER: _scaled(*sim.project(sim.ee_state().ee_xyz_m, width, height), width, height)}
    for obj in sim.objects:
        points[obj.name] = _scaled(*sim.pixel_of(obj.name, width, height), width, height)
    for tile in sim.tiles:
        points[tile.name] = _scaled(*sim.pixel_of(tile.name, width, height), width, height)
    return points


def _phrases(name: str, is_tile: bool) -> list[str]:
    """How a plan may mention a scene item: 'grey rock' -> ['grey rock', 'rock']; tile '7' -> ['number 7']."""
    if is_tile and name.isdigit():
        return [f"number {name}"]
    words = name.split()
    return [name, words[-1]] if len(words) == 2 else [name]


def ground_plan(plan: str, target: str, reference: str, points: dict, tiles: list[str] | tuple = ()) -> str:
    """Insert ' at X Y' after the plan's first mention of the target, then of the reference.

    `ground_plan('move the apple near the red ball', 'apple', 'red ball', pts)` ->
    'move the apple at 30 41 near the red ball at 200 97'. Names the plan does not mention (the
    reference of a 'closest to' task) are left out; an unknown point leaves the plan unchanged.
    """
    plan = plan.strip().rstrip(".").strip()
    start = 0
    for name in (target, reference):
        if not name or name not in points:
            continue
        for phrase in _phrases(name, name in tiles):
            m = re.compile(rf"\b{re.escape(phrase)}\b").search(plan, start)
            if m is None:
                continue
            x, y = points[name]
            insert = f" at {x} {y}"
            plan = plan[: m.end()] + insert + plan[m.end() :]
            start = m.end() + len(insert)
            break
    return plan


def with_gripper(plan: str, points: dict) -> str:
    """'pick up the banana at 140 60' -> 'pick up the banana at 140 60 with the gripper at 128 78':
    ECoT's gripper-position step, so the action follows from two points in the text. Unlike the
    objects, the gripper moves every step: a reused plan's gripper point is out of date (training
    shows such plans too, see `stale_plan_fraction`)."""
    x, y = points[GRIPPER]
    return f"{plan.strip().rstrip('.').strip()} with the gripper at {x} {y}"


_GRIPPER = re.compile(r"\s+with the gripper at\s+\d{1,3}\s+\d{1,3}\b")
_AT = re.compile(r"\s+at\s+\d{1,3}\s+\d{1,3}\b")


def strip_grounding(plan: str) -> str:
    """'pick up the banana at 140 60' -> 'pick up the banana' (for display or plan comparison)."""
    return _AT.sub("", _GRIPPER.sub("", plan))


_PLAN_POINT = re.compile(r"(?:the\s+)?([a-z][a-z ]*?|number \d+)\s+at\s+(\d{1,3})\s+(\d{1,3})\b")
_LEADS = ("pick up the ", "move the ", "place the ", "near the ", "on the ", "with the ", "the ")


def plan_points(plan: str) -> list[tuple[str, int, int]]:
    """(name, x, y) for every located thing of a grounded plan, in its 0..255 image units:
    'move the apple at 30 41 near the red ball at 200 97' -> [('apple', 30, 41), ('red ball', 200, 97)]."""
    return [
        (_point_name(m), int(m.group(2)), int(m.group(3))) for m in _PLAN_POINT.finditer((plan or "").lower())
    ]


def located_points(plan: str) -> list[tuple[str, int, int]]:
    """`plan_points` without the gripper's: the objects and tiles, the target's first and then the
    reference's, as `ground_plan` writes them."""
    return [p for p in plan_points(plan) if p[0] != GRIPPER]


def with_point(plan: str, index: int, x: int, y: int) -> str:
    """The plan with its `index`-th located thing (as `located_points` counts them) moved to `x y`:
    with_point('move the apple at 30 41 near the red ball at 200 97', 1, 190, 99) ->
    'move the apple at 30 41 near the red ball at 190 99'. An index past the last point changes nothing."""
    text = plan or ""
    lower = text.lower()
    if len(lower) != len(text):  # match offsets must index the text they were found in
        text = lower
    located = [m for m in _PLAN_POINT.finditer(lower) if _point_name(m) != GRIPPER]
    if not 0 <= index < len(located):
        return plan
    m = located[index]
    return f"{text[: m.start(2)]}{int(x)} {int(y)}{text[m.end(3) :]}"


def _point_name(m: re.Match) -> str:
    name = m.group(1).strip()
    for lead in _LEADS:
        name = name.split(lead)[-1]
    return name


def pointing_questions(points: dict, frame: int, rng: np.random.Generator, k: int = 2) -> list[dict]:
    """`k` 'where is the X' questions for one frame, the gripper always among them."""
    names = [n for n in points if n != GRIPPER]
    chosen = [GRIPPER]
    if names and k > 1:
        chosen += [names[int(i)] for i in rng.choice(len(names), size=min(k - 1, len(names)), replace=False)]
    return [pointing_question(points, name, frame) for name in chosen]


def tile_pointing_questions(points: dict, tiles: list, frame: int) -> list[dict]:
    """'where is the number 7' / 'where is the star' for every tile (robot_io.sim.scene.Tile) on the
    table: the question a plan's "on the number 7 at X Y" needs."""
    return [pointing_question(points, tile.name, frame) for tile in tiles if tile.name in points]


WHERE = "where is the "
LOCATE = "locate the "


def pointing_question(points: dict, name: str, frame: int) -> dict:
    """'where is the X' about one item of a frame, answered with its point in 0..255 image units."""
    label = f"number {name}" if name.isdigit() else name
    x, y = points[name]
    return {"frame": frame, "question": WHERE + label, "answer": f"{x} {y}", "kind": "pointing"}


def locate_question(pointing: dict) -> dict | None:
    """A pointing question asked in the plan's words: "where is the lemon" -> "103 121" becomes
    "locate the lemon" -> "the lemon at 103 121", the name written together with its point as a
    grounded plan writes it ("pick up the lemon at 103 121"). Question scenes hold objects no robot
    example shows; asked this way they train the plan's habit of copying a name from the prompt
    and locating it, instead of only the point (TrainConfig.locate_questions). None for the
    gripper: plans locate objects and tiles, never the gripper (this module's docstring)."""
    label = pointing["question"].removeprefix(WHERE)
    if label == GRIPPER:
        return None
    return {
        **pointing,
        "question": LOCATE + label,
        "answer": f"the {label} at {pointing['answer']}",
        "kind": "locate",
    }


def image_cell(x: int, y: int, grid: int) -> int:
    """The row-major index of the grid cell (of `grid` x `grid` over the image, as the model's image
    tokens lie) that holds the point (x, y) in 0..255 image units."""
    return min(int(y) * grid // GRID, grid - 1) * grid + min(int(x) * grid // GRID, grid - 1)


# ---------------------------------------------------------------------------------------------
# Backfill for shards written before datagen recorded points
# ---------------------------------------------------------------------------------------------
def _task(d: dict):
    from robot_io.sim.tasks import TaskSpec

    d = dict(d)
    d["objects"], d["tiles"] = tuple(d["objects"]), tuple(d["tiles"])
    return TaskSpec(**d)


def execute(sim, command, shielded: bool) -> None:
    """One recorded step in the simulator, as datagen executes it and replays must: through the
    safety shield's clipping (default limits) when `shielded`, else as commanded."""
    if shielded:
        from robot_io.safety import SafetyLimits, clip_command

        command, _notes = clip_command(command, sim.ee_state(), SafetyLimits())
    sim.apply(command)


def replay_points(
    sim, episode: dict, actions: np.ndarray, width: int, height: int, shielded: bool = False
) -> list[dict]:
    """Replay one recorded oracle episode without rendering; the points of each of its frames.
    `shielded`: the episode was executed through the safety shield's clipping (datagen's default
    since session 3; shards record it in their `datagen` settings).

    Raises ValueError if the replay diverges from the recorded actions (then the points would lie).
    """
    from rt2_cot.action_codec import ActionCodec

    codec = ActionCodec()
    sim.reset(_task(episode["task"]), seed=int(episode["seed"]))
    points = []
    for step, recorded in enumerate(actions):
        command, _plan = sim.oracle()
        if list(codec.encode(command)) != [int(v) for v in recorded]:
            raise ValueError(f"episode {episode['id']} diverges from its recording at step {step}")
        points.append(scene_points(sim, width, height))
        if command.terminate:
            break
        execute(sim, command, shielded)
    return points


def add_grounding(folder: Path, pointing_per_frame: int = 2, seed: int = 0) -> dict:
    """Add `points` and `grounded_plan` to every frame of every shard in `folder` (idempotent), plus
    pointing questions for the frames that already have vision-language questions."""
    from robot_io.sim.env import SimConfig, TabletopSim
    from rt2_cot.data import format as fmt

    sim = TabletopSim(SimConfig())
    totals = {"shards": 0, "frames": 0, "skipped_shards": 0, "diverged_episodes": 0}
    for path in fmt.shard_paths(Path(folder)):
        side = path.with_suffix(".json")
        meta = json.loads(side.read_text())
        if all("grounded_plan" in fr for fr in meta["frames"]):
            totals["skipped_shards"] += 1
            continue
        cfg = meta.get("datagen", {})
        width, height = int(cfg.get("render_width", 320)), int(cfg.get("render_height", 240))
        with np.load(path) as z:
            actions, episode_ids = z["actions"], z["episode"]
        rng = np.random.default_rng([seed, totals["shards"]])
        keep = np.ones(len(meta["frames"]), dtype=bool)
        for ep in meta["episodes"]:
            idx = np.flatnonzero(episode_ids == ep["id"])
            try:
                points = replay_points(sim, ep, actions[idx], width, height, bool(cfg.get("shielded", False)))
            except ValueError as exc:
                logger.warning(f"{path.name}: {exc}; its frames keep ungrounded plans")
                totals["diverged_episodes"] += 1
                keep[idx] = False
                continue
            task = ep["task"]
            for i, pts in zip(idx, points, strict=True):
                fr = meta["frames"][i]
                fr["points"] = pts
                fr["grounded_plan"] = ground_plan(
                    fr["plan"], task["target"], task["reference"], pts, task["tiles"]
                )
        asked = sorted({int(q["frame"]) for q in meta["vl"] if keep[int(q["frame"])]})
        meta["vl"] = [q for q in meta["vl"] if q.get("kind") != "pointing"]
        for f in asked:
            if "points" in meta["frames"][f]:
                meta["vl"].extend(pointing_questions(meta["frames"][f]["points"], f, rng, pointing_per_frame))
        tmp = side.with_name(side.name + ".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.rename(side)
        totals["shards"] += 1
        totals["frames"] += int(keep.sum())
        logger.info(f"{path.name}: grounded {int(keep.sum())}/{len(keep)} frames")
    return totals
