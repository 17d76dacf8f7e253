"""`rt2-cot datagen`: oracle episodes from the MuJoCo tabletop plus vision-language questions about
the same scenes, written as shards (see `rt2_cot.data.format`).

Robot data: per step, the frame (rendered at the sim camera's aspect and squashed to 128x128 exactly
as the processor does at inference), the instruction, the oracle's plan and its command encoded by
`ActionCodec` (deltas clipped to the per-step limit). Only `split="train"` tasks are generated, so the
held-out phrasings, objects, backgrounds and distractor counts of `robot_io.sim.tasks` stay unseen
in robot data. (`--question-split` writes question scenes with held-out objects or backgrounds:
vision-language questions only, the analogue of RT-2's web data; see `DatagenConfig.question_split`.)

Every frame also records `gripper` (the opening the arm reports before the step, 0..1), `points`
(image positions of the gripper, objects and tiles, 0..255) and a `grounded_plan` that says where
the plan's objects are (`rt2_cot.data.grounding`). Half the episodes by default are DART-style noisy: some executed steps are jittered while the recorded label stays the
oracle's command, so the data shows how to recover from drifting off the oracle's path.

Vision-language data (RT-2's co-training half, at toy scale): questions answered from privileged
scene state - colours, object classes, sizes, positions, symbols and numbers on the table, counting -
plus text-only arithmetic and word-meaning questions ("what could you hammer a nail with"), and
pointing questions ("where is the gripper" -> "128 71") for frames that have questions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from loguru import logger

from robot_io.errors import RobotIOError
from rt2_cot.action_codec import ActionCodec
from rt2_cot.data import format as fmt
from rt2_cot.data.grounding import (
    GRIPPER,
    execute,
    ground_plan,
    pointing_question,
    pointing_questions,
    scene_points,
    tile_pointing_questions,
)
from rt2_cot.model.processing_rt2_cot_mini import resize_image

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLASS_QUESTIONS = {
    "drink": ("which object could you drink", "what would quench my thirst"),
    "fruit": ("which object is a fruit", "what could i eat"),
    "tool": ("what could you hammer a nail with", "which object is hard like a hammer"),
    "toy": ("which object is a toy",),
}


@dataclass
class DatagenConfig:
    episodes: int
    seed: int = 0
    render_width: int = 320  # the sim camera's default frame (4:3); squashed to 128x128 as camera frames are
    render_height: int = 240
    max_steps: int = 80
    episodes_per_shard: int = 50
    vl_frames_per_episode: int = 3  # frames per episode that get questions (the first always does)
    keep_failed: bool = False
    # DART-style noise injection (Laskey et al., 2017): in this fraction of episodes, some executed
    # steps are the oracle's command plus Gaussian noise on the translation, while the recorded label
    # stays the oracle's clean command. The data then shows how to get back on track from states a
    # learned policy drifts into, which pure oracle rollouts never visit.
    noisy_episodes: float = 0.5
    noise_step_prob: float = 0.3
    noise_std_m: float = 0.015
    # Execute every step through the safety shield's clipping (`robot_io.safety.clip_command`, default
    # limits), as the console and `rt2-cot eval` do: a close then takes two steps (gripper rate 0.5 a
    # step), so the model sees the half-closed gripper it will meet in closed loop. Labels stay the
    # oracle's command. Data written before session 3 executed commands unshielded (one-step close);
    # a model trained on it fails closed loop even when handed a correct plan (model card).
    shielded: bool = True
    # Decoy starts: in this fraction of episodes the arm first makes 1..decoy_max_steps full-size
    # moves toward somewhere else (above another object, or a random spot over the table), gripper
    # open, while every recorded label stays the oracle's (which heads for the real target from
    # wherever the arm is). In pure oracle data the arm always heads for the target, so a model can
    # read the target's place off the arm's motion instead of the image (session 6's pointing probe:
    # the plan's point 38 units off on first frames, 3 once the arm has moved); closed loop, a wrong
    # first plan then steers the arm, and the arm's heading confirms the wrong plan. Decoy starts
    # put the arm's heading at odds with the target, so only the image and the words say where it is.
    decoy_episodes: float = 0.0
    decoy_max_steps: int = 5
    # Random starts: in this fraction of episodes the gripper starts (open, teleported) at a random
    # place over the table instead of home. Together with `start_frames_only` this gives the
    # plan many first frames where the arm's pose says nothing about the target.
    random_start: float = 0.0
    # One frame per scene: the first, where the policy writes its first plan from the image and the
    # words alone (evaluation episodes all start there). Session 7's pointing probe put that first
    # plan's point 26 units off while later frames, where the arm's heading helps, were at 4: in
    # episode data a scene gives one first frame per ~19, so grounding sees ~19x fewer layouts.
    # Episodes are not run to their end, so the oracle's success is not checked.
    start_frames_only: bool = False
    # Task families to sample from (uniformly); empty: all of them. Session 8's evaluation named the
    # object right 100% of the time when the words name it and 0-58% when only the image can
    # (smallest, closest to, arithmetic, which can is the drink): `--families` aims new scenes there.
    families: tuple[str, ...] = ()
    # Point at every tile: each questioned frame also asks "where is the number 7" / "where is the
    # star" for every tile on the table, not only for the one random item `pointing_questions`
    # picks. Session 12's checkpoint wrote number tiles' points 40-50 units (of 256) from the tile
    # in rt2_core's episodes (objects as references: 5-7), though a linear probe on the frozen
    # features reads the digit (benchmarks/tile_probe.py). Session 13 trained on such frames: the
    # plans' points improved, digits did not (model card).
    point_at_every_tile: bool = False
    # DAgger (Ross et al., 2011): in this fraction of episodes a trained model (`driver`, a checkpoint
    # folder or "builtin") acts, with its own chain-of-thought plans, through the same shield as the
    # console; each visited frame is still labelled with the oracle's plan and command. Oracle data
    # only shows the states the oracle visits; closed loop the model meets its own mistakes (a plan
    # that follows the arm, a grasp a little off, a release too early) and has never been shown the
    # way back from them. Within a driven episode each step is the model's with probability
    # `driver_step_prob`, else the oracle's (so later stages, e.g. carrying, are reached too).
    # Driven episodes are kept whether or not they succeed; the model's own plan is recorded too
    # (`driver_plan`), so the data also measures the model on the states it visits.
    driver: str = ""
    driver_episodes: float = 0.0
    driver_step_prob: float = 1.0
    # Question scenes: lay out each scene as this held-out split of `robot_io.sim.tasks.SPLITS` would
    # ("heldout_objects": bottles, lemons, pears and the diamond tile; "heldout_background": blue and
    # green tables), render its first frame and write only vision-language questions about it (every
    # scene question plus "where is the X" for every object and tile). No instruction, plan or action
    # is recorded: the frames' episodes have split `fmt.QUESTION_SCENES` and training never makes robot examples
    # of them. RT-2's unseen objects and backgrounds are unseen in robot data, not unknown to the
    # model (its web data holds them); these questions are this project's analogue of that web data.
    # The held-out instructions stay held out: no task of the evaluation suites is ever trained on.
    question_split: str = ""


# ---------------------------------------------------------------------------------------------
# Vision-language questions from privileged state
# ---------------------------------------------------------------------------------------------
def scene_questions(
    objects: list, tiles: list, rng: np.random.Generator, initial: bool
) -> list[tuple[str, str, str]]:
    """(question, answer, kind) about one scene. `objects` are robot_io.sim.scene.SceneObject (name,
    kind, colour, cls, size, position), `tiles` are Tile (name, kind, position). Position questions
    only for `initial` frames, where reset's positions still hold."""
    qs: list[tuple[str, str, str]] = []
    names = [o.name for o in objects]
    by_colour: dict[str, list] = {}
    by_class: dict[str, list] = {}
    for o in objects:
        by_colour.setdefault(o.colour, []).append(o)
        by_class.setdefault(o.cls, []).append(o)
    for o in objects:
        # Colour of a thing named by kind ("apple", or "block" when only one block is present).
        same_kind = [p for p in objects if p.kind == o.kind]
        if len(same_kind) == 1:
            qs.append((f"what colour is the {o.kind}", o.colour, "colour"))
            qs.append(
                (
                    f"what kind of object is the {o.colour} one"
                    if len(by_colour[o.colour]) == 1
                    else f"is there a {o.kind} on the table",
                    o.kind if len(by_colour[o.colour]) == 1 else "yes",
                    "class",
                )
            )
    for colour, objs in by_colour.items():
        if len(objs) == 1:
            qs.append((f"which object is {colour}", objs[0].name, "colour"))
    for cls, objs in by_class.items():
        if len(objs) == 1 and cls in CLASS_QUESTIONS:
            q = CLASS_QUESTIONS[cls][int(rng.integers(len(CLASS_QUESTIONS[cls])))]
            qs.append((q, objs[0].name, "semantic"))
    sizes = sorted(objects, key=lambda o: o.size)
    if len(sizes) >= 2 and sizes[1].size - sizes[0].size > 0.003:
        qs.append(("which object is the smallest", sizes[0].name, "size"))
    if len(sizes) >= 2 and sizes[-1].size - sizes[-2].size > 0.003:
        qs.append(("which object is the largest", sizes[-1].name, "size"))
    qs.append(("how many objects are on the table", NUMBER_WORDS[min(len(objects), 9)], "count"))
    absent = _absent_object(names, rng)
    if absent:
        qs.append((f"is there a {absent} on the table", "no", "class"))
    qs.append((f"is there a {names[int(rng.integers(len(names)))]} on the table", "yes", "class"))
    symbols = [t for t in tiles if t.kind == "symbol"]
    numbers = [t for t in tiles if t.kind == "number"]
    if len(symbols) == 1:
        qs.append(("which symbol is on the table", symbols[0].name, "symbol"))
    if len(numbers) == 1:
        qs.append(("which number is on the table", numbers[0].name, "symbol"))
    if initial:
        # Base frame: +x away from the robot, +y to the robot's left.
        if len(objects) >= 2:
            xs = sorted(objects, key=lambda o: o.position[0])
            ys = sorted(objects, key=lambda o: o.position[1])
            if xs[1].position[0] - xs[0].position[0] > 0.03:
                qs.append(("which object is closest to the robot", xs[0].name, "position"))
            if xs[-1].position[0] - xs[-2].position[0] > 0.03:
                qs.append(("which object is farthest from the robot", xs[-1].name, "position"))
            if ys[-1].position[1] - ys[-2].position[1] > 0.03:
                qs.append(("which object is furthest to the left", ys[-1].name, "position"))
            if ys[1].position[1] - ys[0].position[1] > 0.03:
                qs.append(("which object is furthest to the right", ys[0].name, "position"))
        for t in tiles:
            d = sorted(
                (np.hypot(o.position[0] - t.position[0], o.position[1] - t.position[1]), o.name)
                for o in objects
            )
            if len(d) == 1 or d[1][0] - d[0][0] > 0.03:
                label = f"the number {t.name}" if t.kind == "number" else f"the {t.name}"
                qs.append((f"which object is closest to {label}", d[0][1], "position"))
    return qs


def _absent_object(present: list[str], rng: np.random.Generator) -> str | None:
    from robot_io.sim.scene import all_object_names

    candidates = [n for n in all_object_names(include_heldout=False) if n not in present]
    return candidates[int(rng.integers(len(candidates)))] if candidates else None


def text_questions(rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    """Image-free questions that the reasoning families lean on: arithmetic and number words."""
    out = []
    for _ in range(n):
        if rng.random() < 0.7:
            op = "plus" if rng.random() < 0.6 else "minus"
            while True:
                a, b = int(rng.integers(1, 9)), int(rng.integers(1, 9))
                r = a + b if op == "plus" else a - b
                if 1 <= r <= 9:
                    break
            words = rng.random() < 0.7
            sa, sb = (NUMBER_WORDS[a], NUMBER_WORDS[b]) if words else (str(a), str(b))
            q = ["what is {a} {op} {b}", "what is the sum of {a} {op} {b}", "what number is {a} {op} {b}"][
                int(rng.integers(3))
            ]
            out.append((q.format(a=sa, op=op, b=sb), str(r), "arithmetic"))
        else:
            k = int(rng.integers(1, 10))
            out.append((f"which digit is the number {NUMBER_WORDS[k]}", str(k), "arithmetic"))
    return out


# ---------------------------------------------------------------------------------------------
# Episodes
# ---------------------------------------------------------------------------------------------
def scene_state(sim) -> tuple[list, list]:
    """The sim's current scene objects and tiles (privileged state for the questions)."""
    objects = getattr(sim, "objects", None)
    tiles = getattr(sim, "tiles", None)
    if objects is None and hasattr(sim, "scene"):
        objects, tiles = getattr(sim.scene, "objects", []), getattr(sim.scene, "tiles", [])
    return list(objects or []), list(tiles or [])


def _perturbed(command, rng: np.random.Generator, std_m: float):
    """The command with its translation jittered (gripper and terminate untouched), within the step limit."""
    from dataclasses import replace

    from robot_io.sim.oracle import MAX_STEP_M

    delta = np.asarray(command.delta_xyz_m, float) + rng.normal(0.0, std_m, 3)
    delta = np.clip(delta, -MAX_STEP_M, MAX_STEP_M)
    return replace(command, delta_xyz_m=tuple(float(v) for v in delta))


# Where decoy goals and random starts go over the table (metres in the base frame).
OVER_TABLE_X_M = (0.26, 0.66)
OVER_TABLE_Y_M = (-0.26, 0.26)


def _decoy_goal(sim, task, rng: np.random.Generator) -> np.ndarray:
    """Where a decoy start heads: above another object (most often) or a random spot over the table."""
    others = [o.name for o in sim.objects if o.name != task.target]
    z = float(rng.uniform(0.10, 0.20))  # above every object, so the decoy moves touch nothing
    if others and rng.random() < 0.7:
        xy = sim.object_position(others[int(rng.integers(len(others)))])[:2]
    else:
        xy = np.array([rng.uniform(*OVER_TABLE_X_M), rng.uniform(*OVER_TABLE_Y_M)])
    return np.array([float(xy[0]), float(xy[1]), z])


def decoy_command(sim, goal: np.ndarray):
    """One full-size step toward the decoy goal with the gripper open (the oracle's own stepping)."""
    from robot_io.sim.oracle import _cmd, _toward

    return _cmd(_toward(sim.ee_state().ee_xyz_m, goal), gripper=1.0)


def random_start_xyz(rng: np.random.Generator) -> tuple[float, float, float]:
    """A gripper position over the table, above every object (as the decoy goals)."""
    return (
        float(rng.uniform(*OVER_TABLE_X_M)),
        float(rng.uniform(*OVER_TABLE_Y_M)),
        float(rng.uniform(0.10, 0.22)),
    )


def maybe_random_start(sim, seed: int, cfg: DatagenConfig) -> None:
    """In a `cfg.random_start` share of scenes, move the (open) gripper to a random place over the
    table. Its own stream of `seed`, as the decoy's, so an episode and a question scene of one seed
    start the arm at the same place, and episodes without it stay as they were."""
    start_rng = np.random.default_rng([seed, 17])
    if cfg.random_start > 0 and start_rng.random() < cfg.random_start:
        sim.home(random_start_xyz(start_rng))


def run_episode(
    sim, task, seed: int, cfg: DatagenConfig, codec: ActionCodec, render: bool = True, driver=None
) -> dict:
    """One oracle episode. `render=False` replays it without images (same commands, same noise,
    same states: everything is seeded by `seed`), for adding per-frame state to older shards.
    `driver`: a Policy (`rt2_cot.vla_policy.VLAPolicy`) that acts in a `cfg.driver_episodes` share
    of episodes (DAgger; see DatagenConfig); driven episodes cannot be replayed without it."""
    sim.reset(task, seed=seed)
    maybe_random_start(sim, seed, cfg)
    max_steps = 1 if cfg.start_frames_only else cfg.max_steps
    noise_rng = np.random.default_rng([seed, 7])
    noisy = noise_rng.random() < cfg.noisy_episodes
    decoy_rng = np.random.default_rng([seed, 13])  # its own stream: non-decoy episodes stay as before
    n_decoy = 0
    if cfg.decoy_episodes > 0 and decoy_rng.random() < cfg.decoy_episodes:
        n_decoy = int(decoy_rng.integers(1, cfg.decoy_max_steps + 1))
        decoy_goal = _decoy_goal(sim, task, decoy_rng)
    driver_rng = np.random.default_rng([seed, 19])  # its own stream, as the decoy's
    driven = driver is not None and render and driver_rng.random() < cfg.driver_episodes
    if driven:
        driver.reset(task.instruction)
        n_decoy, noisy = 0, False  # the model's own mistakes replace the scripted ones
    objects, tiles = scene_state(sim)  # as placed by reset, before anything moves
    images, actions, plans, points, grippers, positions = [], [], [], [], [], []
    driver_plans: list[str | None] = []  # the model's plan at each frame (driven episodes)
    driver_steps: list[bool] = []  # whether the model's command was the one executed
    executed_gripper: list[float | None] = []  # the gripper opening each step asked for, as executed
    for step in range(max_steps):
        if render:
            frame = sim.render(cfg.render_width, cfg.render_height)
            images.append(resize_image(frame.color, fmt.IMAGE_SIZE))
        command, plan = sim.oracle()
        actions.append(codec.encode(command))
        plans.append(plan or task.plan)
        points.append(scene_points(sim, cfg.render_width, cfg.render_height))
        # What the arm reports before this step: the gripper's opening and where the fingertips are.
        state = sim.ee_state()
        grippers.append(round(float(state.gripper), 4))
        positions.append([round(float(v), 5) for v in state.ee_xyz_m])
        if command.terminate:
            break
        if driven:
            own_command, own_plan = _driver_command(driver, sim, frame, task.instruction, step)
            driver_plans.append(own_plan)
            use_model = own_command is not None and driver_rng.random() < cfg.driver_step_prob
            driver_steps.append(use_model)
            if use_model:
                command = own_command  # executed; the label above stays the oracle's
        elif len(actions) <= n_decoy:
            command = decoy_command(sim, decoy_goal)  # executed; the label above stays the oracle's
        elif noisy and noise_rng.random() < cfg.noise_step_prob:
            command = _perturbed(command, noise_rng, cfg.noise_std_m)
        executed_gripper.append(float(command.gripper))
        execute(sim, command, cfg.shielded)
    return {
        "images": images,
        "actions": actions,
        "plans": plans,
        "points": points,
        "grippers": grippers,
        "positions": positions,
        "success": bool(sim.success()),
        "noisy": bool(noisy),
        "decoy_steps": n_decoy,
        "driven": bool(driven),
        # Per frame, like the lists above (the last frame, where the oracle terminates, has no step).
        "driver_plans": driver_plans + [None] * (len(actions) - len(driver_plans)) if driven else [],
        "driver_steps": driver_steps + [False] * (len(actions) - len(driver_steps)) if driven else [],
        # What the step before each frame asked the gripper for (None at the start): with a driver
        # this is not always the previous label, and the prompt's "closing"/"opening" must say what
        # the gripper is really doing.
        "gripper_commands": [None, *executed_gripper][: len(actions)],
        "objects": objects,
        "tiles": tiles,
    }


def _driver_command(driver, sim, frame, instruction: str, step: int):
    """The driver's (command, plan) for this frame, its terminate dropped (the oracle decides when
    the episode ends); (None, plan) when its output did not parse, as the control loop would."""
    from dataclasses import replace

    from rt2_cot.policy import Observation

    out = driver.step(Observation(frame=frame, arm=sim.ee_state(), instruction=instruction, step=step))
    command = None if out.command is None else replace(out.command, terminate=False)
    return command, out.plan or None


def generate(out: Path, cfg: DatagenConfig) -> dict:
    """Write `cfg.episodes` oracle episodes (+ questions) to `out`; skips shards already written."""
    from robot_io.sim.env import SimConfig, TabletopSim
    from robot_io.sim.tasks import sample_task

    out.mkdir(parents=True, exist_ok=True)
    codec = ActionCodec()
    sim = TabletopSim(SimConfig())
    driver = load_driver(cfg.driver) if cfg.driver and cfg.driver_episodes > 0 else None
    n_shards = (cfg.episodes + cfg.episodes_per_shard - 1) // cfg.episodes_per_shard
    totals = {"episodes": 0, "frames": 0, "failed": 0, "vl": 0}
    t0 = time.time()
    for k in range(n_shards):
        stem = out / f"shard-{cfg.seed:04d}-{k:04d}"
        if stem.with_suffix(".npz").exists():
            logger.info(f"{stem.name} exists, skipping")
            continue
        rng = np.random.default_rng([cfg.seed, k])
        images, actions, episode_ids, frames, episodes, vl = [], [], [], [], [], []
        n_ep = min(cfg.episodes_per_shard, cfg.episodes - k * cfg.episodes_per_shard)
        for _ in range(n_ep):
            family = cfg.families[int(rng.integers(len(cfg.families)))] if cfg.families else None
            task = sample_task(rng, family, split=cfg.question_split or "train")
            ep_seed = int(rng.integers(2**31))
            if cfg.question_split:
                try:
                    scene = question_scene(sim, task, ep_seed, cfg)
                except RobotIOError as exc:
                    logger.warning(f"scene skipped ({task.family}, seed {ep_seed}): {exc}")
                    totals["failed"] += 1
                    continue
                ep_id, frame = len(episodes), len(images)
                episodes.append(
                    {
                        "id": ep_id,
                        "family": task.family,
                        "instruction": "",
                        "seed": ep_seed,
                        "steps": 1,
                        "split": fmt.QUESTION_SCENES,
                    }
                )
                images.append(scene["image"])
                actions.append([0] * 8)  # never trained on: the frame is not a robot example
                episode_ids.append(ep_id)
                frames.append(
                    {"episode": ep_id, "step": 0, "instruction": "", "plan": "", "points": scene["points"]}
                )
                vl.extend({"frame": frame, **q} for q in scene["questions"])
                continue
            try:
                result = run_episode(sim, task, ep_seed, cfg, codec, driver=driver)
            except RobotIOError as exc:  # a layout that cannot be built: count it and move on
                logger.warning(f"episode skipped ({task.family}, seed {ep_seed}): {exc}")
                totals["failed"] += 1
                continue
            if not result["success"] and not (cfg.keep_failed or cfg.start_frames_only or result["driven"]):
                totals["failed"] += 1
                continue
            ep_id = len(episodes)
            base = len(images)
            episodes.append(
                {
                    "id": ep_id,
                    "family": task.family,
                    "category": task.category,
                    "instruction": task.instruction,
                    "task": task.to_dict(),
                    "seed": ep_seed,
                    "steps": len(result["images"]),
                    "success": result["success"],
                    "noisy": result["noisy"],
                    "decoy_steps": result["decoy_steps"],
                    "driven": result["driven"],
                    "split": "train",
                }
            )
            for s, (img, act, plan, pts, grip, pos) in enumerate(
                zip(
                    result["images"],
                    result["actions"],
                    result["plans"],
                    result["points"],
                    result["grippers"],
                    result["positions"],
                    strict=True,
                )
            ):
                images.append(img)
                actions.append(act)
                episode_ids.append(ep_id)
                grounded = ground_plan(plan, task.target, task.reference, pts, task.tiles)
                frames.append(
                    {
                        "episode": ep_id,
                        "step": s,
                        "instruction": task.instruction,
                        "plan": plan,
                        "grounded_plan": grounded,
                        "points": pts,
                        "gripper": grip,
                        "ee_xyz": pos,
                    }
                )
                if result["driven"]:
                    frames[-1]["gripper_command"] = result["gripper_commands"][s]
                    frames[-1]["driver_plan"] = result["driver_plans"][s]
                    frames[-1]["driver_step"] = result["driver_steps"][s]
            questions = _episode_questions(
                result["objects"], result["tiles"], base, len(result["images"]), cfg, rng
            )
            vl.extend(questions)
            # Their own generator: the shard's stream (tasks, scenes, other questions) stays exactly
            # what datagen produced before pointing questions existed.
            point_rng = np.random.default_rng([ep_seed, 11])
            for f in sorted({q["frame"] for q in questions}):
                vl.extend(pointing_questions(result["points"][f - base], f, point_rng))
                if cfg.point_at_every_tile:
                    vl.extend(tile_pointing_questions(result["points"][f - base], result["tiles"], f))
        vl.extend(
            {"frame": int(rng.integers(len(images))), "question": q, "answer": a, "kind": kd}
            for q, a, kd in text_questions(rng, max(1, len(episodes) * 2))
            if images and not cfg.question_split
        )
        if not images:
            continue
        fmt.write_shard(
            stem,
            np.stack(images),
            np.array(actions),
            np.array(episode_ids),
            {"episodes": episodes, "frames": frames, "vl": vl, "datagen": cfg.__dict__},
        )
        totals["episodes"] += len(episodes)
        totals["frames"] += len(images)
        totals["vl"] += len(vl)
        rate = totals["episodes"] / (time.time() - t0)
        logger.info(
            f"{stem.name}: {len(episodes)} episodes, {len(images)} frames, {len(vl)} questions "
            f"({totals['episodes']} episodes so far, {rate:.2f} episodes/s, {totals['failed']} oracle failures dropped)"
        )
    (out / f"meta-{cfg.seed:04d}.json").write_text(
        json.dumps({"config": cfg.__dict__, "totals": totals}, indent=2)
    )
    return totals


def question_scene(sim, task, seed: int, cfg: DatagenConfig) -> dict:
    """One question scene (see `DatagenConfig.question_split`): the task's layout, the gripper home
    or (a `cfg.random_start` share) over the table, its first frame, the items' points, and every
    question about it: the scene questions and "where is the X" for each object and tile."""
    sim.reset(task, seed=seed)
    maybe_random_start(sim, seed, cfg)
    frame = sim.render(cfg.render_width, cfg.render_height)
    points = scene_points(sim, cfg.render_width, cfg.render_height)
    objects, tiles = scene_state(sim)
    rng = np.random.default_rng([seed, 23])
    questions = [
        {"question": q, "answer": a, "kind": k} for q, a, k in scene_questions(objects, tiles, rng, True)
    ]
    for name in points:
        if name != GRIPPER:
            q = pointing_question(points, name, 0)
            questions.append({k: v for k, v in q.items() if k != "frame"})
    return {"image": resize_image(frame.color, fmt.IMAGE_SIZE), "points": points, "questions": questions}


def load_driver(model: str):
    """The DAgger driver: the model as the console runs it (`rt2-cot eval`'s defaults: a plan every
    step, greedy). Loaded once per datagen process."""
    from rt2_cot.backends import load_backend
    from rt2_cot.vla_policy import VLAPolicy

    return VLAPolicy(load_backend(model), replan_every=1)


def _episode_questions(
    objects: list, tiles: list, base: int, n_frames: int, cfg: DatagenConfig, rng
) -> list[dict]:
    """Questions for the first frame (positions valid) and a few later ones (no position questions)."""
    if not objects:
        return []
    later = rng.choice(
        np.arange(1, n_frames), size=min(cfg.vl_frames_per_episode - 1, n_frames - 1), replace=False
    )
    out = []
    for f in [0, *later.tolist()]:
        qs = scene_questions(objects, tiles, rng, initial=f == 0)
        for i in rng.choice(len(qs), size=min(4, len(qs)), replace=False):
            q, a, kind = qs[int(i)]
            out.append({"frame": base + int(f), "question": q, "answer": a, "kind": kind})
    return out


def add_state(folder: Path) -> dict:
    """Add the arm's state before each step (`gripper` opening, fingertip position `ee_xyz`) to every
    frame of shards written before datagen recorded it (idempotent). Each episode is replayed
    without rendering from its seed and the shard's datagen settings (same noise, same shield),
    and checked against its recorded actions; an episode that diverges keeps no state, and
    training on state leaves its frames out."""
    from robot_io.sim.env import SimConfig, TabletopSim
    from rt2_cot.data.grounding import _task

    sim, codec = TabletopSim(SimConfig()), ActionCodec()
    totals = {"shards": 0, "frames": 0, "skipped_shards": 0, "diverged_episodes": 0}
    for path in fmt.shard_paths(Path(folder)):
        side = path.with_suffix(".json")
        meta = json.loads(side.read_text())
        if all("gripper" in fr and "ee_xyz" in fr for fr in meta["frames"]):
            totals["skipped_shards"] += 1
            continue
        known = DatagenConfig.__dataclass_fields__
        cfg = DatagenConfig(**{k: v for k, v in meta.get("datagen", {"episodes": 0}).items() if k in known})
        if "shielded" not in meta.get("datagen", {}):
            cfg.shielded = False  # written before session 3: executed unshielded
        with np.load(path) as z:
            actions, episode_ids = z["actions"], z["episode"]
        for ep in meta["episodes"]:
            idx = np.flatnonzero(episode_ids == ep["id"])
            result = run_episode(sim, _task(ep["task"]), int(ep["seed"]), cfg, codec, render=False)
            if [list(a) for a in result["actions"]] != actions[idx].tolist():
                logger.warning(f"{path.name}: episode {ep['id']} diverges from its recording; no state")
                totals["diverged_episodes"] += 1
                continue
            for i, grip, pos in zip(idx, result["grippers"], result["positions"], strict=True):
                meta["frames"][i]["gripper"], meta["frames"][i]["ee_xyz"] = grip, pos
            totals["frames"] += len(idx)
        tmp = side.with_name(side.name + ".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.rename(side)
        totals["shards"] += 1
        logger.info(f"{path.name}: state added ({totals['frames']} frames so far)")
    return totals
