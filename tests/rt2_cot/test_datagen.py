"""`rt2-cot datagen`: real simulator episodes written as shards, and the scene questions' answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

from rt2_cot.action_codec import ActionCodec
from rt2_cot.data import format as fmt
from rt2_cot.data.datagen import DatagenConfig, generate, scene_questions, text_questions


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("datagen")
    totals = generate(out, DatagenConfig(episodes=4, seed=3, episodes_per_shard=2))
    return out, totals


def test_episodes_are_written_as_readable_shards(generated):
    out, totals = generated
    assert totals["episodes"] + totals["failed"] == 4 and totals["episodes"] >= 3
    paths = fmt.shard_paths(out)
    assert len(paths) == 2
    shard = fmt.read_shard(paths[0])
    assert shard.images.shape[1:] == (128, 128, 3) and shard.images.dtype == np.uint8
    assert shard.actions.shape == (shard.num_frames, 8)
    assert len(shard.meta["frames"]) == shard.num_frames
    # Frames differ within an episode (the gripper moves), i.e. rendering really ran.
    assert np.abs(shard.images[0].astype(int) - shard.images[-1].astype(int)).mean() > 0.5


def test_actions_decode_and_episodes_end_with_terminate(generated):
    out, _ = generated
    codec = ActionCodec()
    for path in fmt.shard_paths(out):
        shard = fmt.read_shard(path)
        for a in shard.actions:
            codec.decode(a.tolist())  # raises if not eight ints 0..255
        for ep in shard.meta["episodes"]:
            steps = [i for i, f in enumerate(shard.meta["frames"]) if f["episode"] == ep["id"]]
            assert shard.actions[steps[-1], 0] == 1, "the oracle's last step terminates"
            assert shard.actions[steps[0], 0] == 0
            assert ep["task"]["target"] in shard.meta["frames"][steps[0]]["plan"]
            assert ep["split"] == "train" and ep["success"]


def test_vision_language_questions_reference_frames_of_the_shard(generated):
    out, _ = generated
    shard = fmt.read_shard(fmt.shard_paths(out)[0])
    vl = shard.meta["vl"]
    assert len(vl) >= 4
    assert all(0 <= q["frame"] < shard.num_frames and q["answer"] for q in vl)
    assert {q["kind"] for q in vl} & {"colour", "class", "size", "position", "semantic", "count"}
    meta = json.loads((out / "meta-0003.json").read_text())
    assert meta["totals"]["frames"] > 0


def test_scene_questions_answer_from_state():
    from robot_io.sim.scene import Tile, make_object

    objs = [
        make_object("red block", 1.0, (0.35, 0.10, 0.0), 0.0),
        make_object("rock", 1.3, (0.55, -0.15, 0.0), 0.0),
        make_object("blue can", 1.0, (0.45, 0.0, 0.0), 0.0),
    ]
    tiles = [Tile("star", "symbol", (0.36, 0.12, 0.0))]
    qa = {q: a for q, a, _ in scene_questions(objs, tiles, np.random.default_rng(0), initial=True)}
    assert qa["which object is red"] == "red block"
    assert qa["what colour is the rock"] == "grey"
    assert qa["which object is the largest"] == "rock"
    assert qa["which object is closest to the robot"] == "red block"
    assert qa["which object is furthest to the left"] == "red block"
    assert qa["which object is furthest to the right"] == "rock"
    assert qa["which object is closest to the star"] == "red block"
    assert "rock" in (
        qa.get("what could you hammer a nail with"),
        qa.get("which object is hard like a hammer"),
    )
    assert qa["how many objects are on the table"] == "three"


def test_text_questions_do_arithmetic():
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    for q, a, kind in text_questions(np.random.default_rng(1), 50):
        if kind == "arithmetic" and (" plus " in q or " minus " in q):
            left, op, right = q.split()[-3:]
            x = words.index(left) if left in words else int(left)
            y = words.index(right) if right in words else int(right)
            assert int(a) == (x + y if op == "plus" else x - y)


@pytest.mark.parametrize("shielded", [True, False])
def test_episodes_execute_through_the_shield_so_a_close_takes_two_steps(shielded):
    """Eval and the console clip every command with the safety shield (gripper rate 0.5 a step);
    data made the same way shows the half-closed gripper the model will meet in closed loop."""
    from robot_io.sim.env import TabletopSim
    from robot_io.sim.tasks import sample_task
    from rt2_cot.data.datagen import run_episode

    sim, rng = TabletopSim(), np.random.default_rng(0)
    task = sample_task(rng, family="pick")
    cfg = DatagenConfig(episodes=1, noisy_episodes=0.0, shielded=shielded)
    actions = np.array(run_episode(sim, task, 11, cfg, ActionCodec())["actions"])
    assert sim.success()
    closing = [i for i in range(1, len(actions)) if actions[i - 1, 7] == 255 and actions[i, 7] == 0]
    assert closing  # the oracle closed the gripper
    i = closing[0]
    # With the shield the gripper is at 0.5 after the first close: the oracle closes again in place.
    assert (actions[i + 1, 7] == 0 and (actions[i + 1, 1:4] == 128).all()) == shielded


def test_the_arm_state_is_recorded_and_older_shards_replay_it_exactly(generated, tmp_path):
    import shutil

    from rt2_cot.data.datagen import add_state

    out, _ = generated
    for path in fmt.shard_paths(out):
        shard = fmt.read_shard(path)
        recorded = [fr["gripper"] for fr in shard.meta["frames"]]
        # Shielded execution closes in two steps: the half-closed gripper is in the data.
        assert {1.0, 0.5, 0.0} <= set(recorded)
        assert all(len(fr["ee_xyz"]) == 3 for fr in shard.meta["frames"])

    # `rt2-cot datagen --add-state`: the same states from a replay (noise and shield included).
    old = tmp_path / "old"
    shutil.copytree(out, old)
    want = {}
    for path in fmt.shard_paths(old):
        side = path.with_suffix(".json")
        meta = json.loads(side.read_text())
        want[path.name] = [(fr.pop("gripper"), fr.pop("ee_xyz")) for fr in meta["frames"]]
        side.write_text(json.dumps(meta))
    from rt2_cot.data.dataset import RobotData
    from rt2_cot.errors import ConfigError
    from rt2_cot.model import load_tokenizer

    tok = load_tokenizer()
    with pytest.raises(ConfigError, match="--add-state"):
        RobotData([old], tok, gripper_state=True)  # training on state the shards do not have
    totals = add_state(old)
    assert totals["shards"] == 2 and totals["diverged_episodes"] == 0
    data = RobotData([old], tok, gripper_state=True, position_state=True)
    prompt = tok.decode(data.robot_example(int(data.robot_frames[0]), plain=False).prompt)
    assert "gripper : 100 position :" in prompt, prompt
    # Which way the gripper is going, from the previous step's commanded opening (its label): the
    # half-closed gripper after a close reads "closing"; an episode's first frame states nothing.
    moving = RobotData([old], tok, gripper_state=True, gripper_motion=True)
    half = [
        i
        for i in moving.robot_frames
        if moving.frames[i]["gripper"] == 0.5 and moving.frames[i]["gripper_command"] == 0.0
    ]
    assert half, "no half-closed frame after a close in the generated episodes"
    text = tok.decode(moving.robot_example(int(half[0]), plain=False).prompt)
    assert "gripper : 50 closing" in text, text
    first = tok.decode(moving.robot_example(int(moving.robot_frames[0]), plain=False).prompt)
    assert first.endswith("gripper : 100"), first
    for path in fmt.shard_paths(old):
        meta = json.loads(path.with_suffix(".json").read_text())
        assert [(fr["gripper"], fr["ee_xyz"]) for fr in meta["frames"]] == want[path.name]
    assert add_state(old)["skipped_shards"] == 2  # idempotent


def test_decoy_starts_head_elsewhere_while_the_labels_head_for_the_target():
    """--decoy-episodes: the arm's first moves go somewhere else, so its heading does not give the
    target away; every label is still the oracle's from the state the arm is in, and it succeeds."""
    from robot_io.sim.env import TabletopSim
    from robot_io.sim.tasks import sample_task
    from rt2_cot.data.datagen import run_episode

    sim, codec = TabletopSim(), ActionCodec()
    cfg = DatagenConfig(episodes=1, noisy_episodes=0.0, decoy_episodes=1.0)
    task = sample_task(np.random.default_rng(4), family="pick")
    result = run_episode(sim, task, 21, cfg, codec, render=False)
    n = result["decoy_steps"]
    assert 1 <= n <= cfg.decoy_max_steps and result["success"]
    positions = np.array(result["positions"])
    executed = positions[1 : n + 1] - positions[:n]
    labelled = np.array([codec.decode(a).delta_xyz_m for a in result["actions"][:n]])
    # What the arm did is not what the labels say (and far from it): it went elsewhere.
    assert np.linalg.norm(executed - labelled, axis=1).min() > 0.01
    assert all(g == 1.0 for g in result["grippers"][: n + 1])  # open all the while
    # The labels are the oracle's from each state: replaying the recorded states gives the same.
    plain = run_episode(sim, task, 21, DatagenConfig(episodes=1, noisy_episodes=0.0), codec, render=False)
    assert plain["decoy_steps"] == 0 and plain["actions"][0] == result["actions"][0]
    assert plain["positions"][1] != result["positions"][1]


def test_random_starts_put_the_gripper_elsewhere_and_the_oracle_still_succeeds():
    """--random-start: the gripper starts open at a random place over the table, not home; the labels
    are the oracle's from there and the episode still ends in success."""
    from robot_io.sim.env import TabletopSim
    from robot_io.sim.scene import HOME_XYZ
    from robot_io.sim.tasks import sample_task
    from rt2_cot.data.datagen import run_episode

    sim, codec = TabletopSim(), ActionCodec()
    cfg = DatagenConfig(episodes=1, noisy_episodes=0.0, random_start=1.0)
    starts = []
    for seed in (5, 6, 7):
        task = sample_task(np.random.default_rng(seed), family="pick")
        result = run_episode(sim, task, seed, cfg, codec, render=False)
        assert result["success"] and result["grippers"][0] == 1.0
        starts.append(result["positions"][0])
    starts = np.array(starts)
    # The fingertips sit a fixed offset from the gripper's body: compare starts with each other and
    # with an episode that starts home.
    home = run_episode(sim, task, 7, DatagenConfig(episodes=1, noisy_episodes=0.0), codec, render=False)
    assert np.linalg.norm(starts - np.array(home["positions"][0]), axis=1).min() > 0.005
    assert np.ptp(starts[:, :2], axis=0).max() > 0.02  # different places, not one fixed pose
    assert HOME_XYZ[2] > 0  # (sanity: the sim's home the comparison is against)


def test_start_frames_only_writes_one_first_frame_per_scene(tmp_path):
    """--start-frames-only: one frame per scene, with its plan, the oracle's first action and pointing
    questions about it; nothing is dropped for not finishing."""
    cfg = DatagenConfig(episodes=6, seed=9, episodes_per_shard=6, start_frames_only=True, random_start=0.5)
    totals = generate(tmp_path, cfg)
    assert totals["episodes"] == 6 and totals["frames"] == 6 and totals["failed"] == 0
    shard = fmt.read_shard(fmt.shard_paths(tmp_path)[0])
    assert shard.num_frames == 6 and len(shard.meta["episodes"]) == 6
    assert all(fr["step"] == 0 for fr in shard.meta["frames"])
    assert all(fr["grounded_plan"] and fr["grounded_plan"] != fr["plan"] for fr in shard.meta["frames"])
    # Six different scenes, not six frames of one.
    assert len({bytes(img) for img in shard.images}) == 6
    kinds = {q["kind"] for q in shard.meta["vl"]}
    assert "pointing" in kinds and all(0 <= q["frame"] < 6 for q in shard.meta["vl"])
    # Some start home and some elsewhere: the recorded positions differ.
    assert len({tuple(fr["ee_xyz"]) for fr in shard.meta["frames"]}) >= 2


def test_families_limits_the_tasks_sampled(tmp_path):
    cfg = DatagenConfig(
        episodes=6, seed=3, episodes_per_shard=6, start_frames_only=True, families=("smallest", "closest_to")
    )
    generate(tmp_path, cfg)
    shard = fmt.read_shard(fmt.shard_paths(tmp_path)[0])
    families = [ep["family"] for ep in shard.meta["episodes"]]
    assert len(families) == 6 and set(families) == {"smallest", "closest_to"}


def test_point_at_every_tile_asks_where_each_tile_is(tmp_path):
    """--point-at-every-tile: every tile of a questioned frame gets 'where is the number 7' with its
    true point; without it, at most one non-gripper item per frame is asked about."""

    def tile_questions(every: bool) -> tuple[list, list]:
        cfg = DatagenConfig(
            episodes=4,
            seed=5,
            episodes_per_shard=4,
            start_frames_only=True,
            families=("place_on_number", "place_on_symbol"),
            point_at_every_tile=every,
        )
        out = tmp_path / str(every)
        generate(out, cfg)
        shard = fmt.read_shard(fmt.shard_paths(out)[0])
        return shard.meta, [q for q in shard.meta["vl"] if q["kind"] == "pointing"]

    meta, asked = tile_questions(True)
    for ep, frame in zip(meta["episodes"], meta["frames"], strict=True):
        tiles = ep["task"]["tiles"]
        assert len(tiles) >= 2
        for name in tiles:
            label = f"number {name}" if name.isdigit() else name
            x, y = frame["points"][name]
            assert {
                "frame": ep["id"],
                "question": f"where is the {label}",
                "answer": f"{x} {y}",
                "kind": "pointing",
            } in asked
    _meta, plain = tile_questions(False)
    assert len(plain) <= 2 * 4 < len(asked)  # the gripper and one random item per frame


def test_datagen_cli_rejects_an_unknown_family(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rt2_cot",
            "datagen",
            "--out",
            str(tmp_path),
            "--episodes",
            "1",
            "--families",
            "juggle",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "unknown task families juggle" in result.stderr and "closest_to" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written


class _WanderingDriver:
    """A stand-in for a trained model: always moves +y with the gripper shut, names the wrong thing
    and asks to terminate (which datagen must not obey: the oracle decides when an episode ends)."""

    name = "wanderer"

    def __init__(self) -> None:
        self.resets, self.steps = 0, 0

    def reset(self, instruction: str) -> None:
        self.resets += 1

    def step(self, observation, on_event=None):
        from robot_io.types import EndEffectorCommand
        from rt2_cot.policy import PolicyOutput

        assert observation.frame.color.ndim == 3 and observation.arm.ee_xyz_m is not None
        self.steps += 1
        command = EndEffectorCommand(delta_xyz_m=(0.0, 0.03, 0.0), gripper=0.0, terminate=True)
        return PolicyOutput(command=command, tokens=None, plan="pick up the moon at 0 0")


def test_a_driver_acts_while_every_label_stays_the_oracles():
    """DAgger: in a driven episode the model's commands are executed (its terminate ignored) and its
    plan recorded, while every frame's label is still what the oracle does from that state."""
    from robot_io.sim.env import TabletopSim
    from robot_io.sim.tasks import sample_task
    from rt2_cot.data.datagen import run_episode

    sim, codec, driver = TabletopSim(), ActionCodec(), _WanderingDriver()
    cfg = DatagenConfig(episodes=1, noisy_episodes=0.0, max_steps=5, driver_episodes=1.0)
    task = sample_task(np.random.default_rng(4), family="pick")
    result = run_episode(sim, task, 21, cfg, codec, driver=driver)
    assert result["driven"] and driver.resets == 1 and driver.steps == 5
    assert len(result["images"]) == 5 and not result["success"]  # it never terminated early
    assert result["driver_plans"] == ["pick up the moon at 0 0"] * 5 and all(result["driver_steps"])
    assert result["gripper_commands"] == [None, 0.0, 0.0, 0.0, 0.0]
    positions = np.array(result["positions"])
    assert np.all(np.diff(positions[:, 1]) > 0.01)  # the arm went where the driver sent it
    # Each label is the oracle's from the state the driver left: replay the oracle on those states.
    labelled = [codec.decode(a) for a in result["actions"]]
    assert all(not c.terminate for c in labelled)
    assert any(c.gripper > 0.5 for c in labelled)  # the oracle keeps the gripper open to approach
    assert result["plans"] == [task.plan] * 5


def test_a_driver_share_of_zero_leaves_the_oracle_in_charge():
    from robot_io.sim.env import TabletopSim
    from robot_io.sim.tasks import sample_task
    from rt2_cot.data.datagen import run_episode

    sim, codec, driver = TabletopSim(), ActionCodec(), _WanderingDriver()
    task = sample_task(np.random.default_rng(4), family="pick")
    cfg = DatagenConfig(episodes=1, noisy_episodes=0.0, driver_episodes=0.0)
    result = run_episode(sim, task, 21, cfg, codec, driver=driver)
    assert not result["driven"] and driver.steps == 0 and result["success"]


def test_driven_frames_keep_their_executed_gripper_command_for_the_prompt(tmp_path, monkeypatch):
    """A driven shard is kept though the driver fails, records the model's plan per frame, and the
    training data reads the previous step's *executed* gripper command (the driver's "closed"),
    not the previous label's (the oracle's "open"), for the prompt's opening/closing."""
    from rt2_cot.data import datagen
    from rt2_cot.data.dataset import RobotData
    from rt2_cot.model import load_tokenizer

    monkeypatch.setattr(datagen, "load_driver", lambda model: _WanderingDriver())
    cfg = DatagenConfig(
        episodes=2,
        seed=5,
        episodes_per_shard=2,
        max_steps=4,
        driver="fake",
        driver_episodes=1.0,
        families=("pick",),
    )
    totals = generate(tmp_path, cfg)
    assert totals["episodes"] == 2 and totals["failed"] == 0  # kept although neither succeeded
    shard = fmt.read_shard(fmt.shard_paths(tmp_path)[0])
    assert all(ep["driven"] and not ep["success"] for ep in shard.meta["episodes"])
    assert {fr["driver_plan"] for fr in shard.meta["frames"]} == {"pick up the moon at 0 0"}
    data = RobotData([tmp_path], load_tokenizer(), grounded=True, gripper_state=True, gripper_motion=True)
    commands = [f["gripper_command"] for f in data.frames]
    labels = [f["action"][7] / 255.0 for f in data.frames]
    assert commands == [None, 0.0, 0.0, 0.0] * 2
    assert labels[0] == 1.0  # the oracle's label said open: the old rule would have said so too
    # After the driver's close the oracle's label opens again (it is nowhere near the object):
    # training can leave those frames out (TrainConfig.drop_driven_reopens).
    kept = RobotData([tmp_path], load_tokenizer(), grounded=True, drop_driven_reopens=True)
    reopens = [i for i, (c, a) in enumerate(zip(commands, labels, strict=True)) if c == 0.0 and a > 0.5]
    assert reopens and set(kept.robot_frames.tolist()) == set(range(8)) - set(reopens)
    assert {kept.frames[i]["split"] for i in reopens} == {"driven-reopen"}

    # The shards measure the driver on the states it visited.
    from rt2_cot.data.dagger_report import dagger_report

    report = dagger_report(tmp_path)
    assert set(report) == {"pick", "all"}
    row = report["all"]
    assert row["driven_episodes"] == 2 and row["success"] == 0.0 and row["frames"] == 8
    assert row["plan_names_target"] == 0.0  # the moon is never the target
    oracle_points = [
        fr["points"][ep["task"]["target"]]
        for fr in shard.meta["frames"]
        for ep in shard.meta["episodes"]
        if ep["id"] == fr["episode"]
    ]
    expected = float(np.median([np.hypot(*p) for p in oracle_points]))
    assert row["target_point"] == pytest.approx(expected, abs=1.5) and row["reference_point"] is None


def test_datagen_cli_rejects_a_driver_that_is_not_a_local_checkpoint(tmp_path):
    def run(*extra):
        return subprocess.run(
            [sys.executable, "-m", "rt2_cot", "datagen", "--out", str(tmp_path), "--episodes", "1", *extra],
            capture_output=True,
            text=True,
        )

    missing = run("--driver", str(tmp_path / "no-such-model"))
    assert missing.returncode != 0 and "--driver must be a local rt2-cot-mini checkpoint" in missing.stderr
    starts = run("--driver", "builtin", "--start-frames-only")
    assert starts.returncode != 0 and "cannot be combined with --start-frames-only" in starts.stderr
    unshielded = run("--driver", "builtin", "--no-shield")
    assert unshielded.returncode != 0 and "cannot be combined with --no-shield" in unshielded.stderr
    share = run("--driver", "builtin", "--driver-step-prob", "1.5")
    assert share.returncode != 0 and "--driver-step-prob is a fraction" in share.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_question_scenes_hold_heldout_kinds_and_ask_only_questions(tmp_path):
    """--question-split heldout_objects: one first frame per scene laid out with the held-out kinds,
    no instruction, plan or action, and 'where is the X' with its true point for every item."""
    from robot_io.sim.scene import KINDS

    heldout = {name for name, kind in KINDS.items() if kind.heldout}
    cfg = DatagenConfig(episodes=6, seed=8, episodes_per_shard=6, question_split="heldout_objects")
    totals = generate(tmp_path, cfg)
    assert totals["episodes"] == 6 and totals["frames"] == 6
    shard = fmt.read_shard(fmt.shard_paths(tmp_path)[0])
    assert {ep["split"] for ep in shard.meta["episodes"]} == {fmt.QUESTION_SCENES}
    assert all("task" not in ep and ep["instruction"] == "" for ep in shard.meta["episodes"])
    assert all(fr["plan"] == fr["instruction"] == "" and fr["step"] == 0 for fr in shard.meta["frames"])
    assert len({bytes(img) for img in shard.images}) == 6  # six scenes
    seen = {word for fr in shard.meta["frames"] for name in fr["points"] for word in name.split()}
    assert seen & heldout, "held-out scenes hold held-out kinds"
    for f, fr in enumerate(shard.meta["frames"]):
        asked = [q for q in shard.meta["vl"] if q["frame"] == f]
        for name, (x, y) in fr["points"].items():
            if name == "gripper":
                continue
            label = f"number {name}" if name.isdigit() else name
            assert {
                "frame": f,
                "question": f"where is the {label}",
                "answer": f"{x} {y}",
                "kind": "pointing",
            } in asked
        assert {q["kind"] for q in asked} >= {"pointing", "count"}
    assert not [q for q in shard.meta["vl"] if q["kind"] == "arithmetic"]  # no text-only questions


def test_question_scenes_are_asked_about_and_never_acted_in(tmp_path):
    """Training data: question-scene frames give vision-language examples, never robot examples."""
    from rt2_cot.data.dataset import RobotData
    from rt2_cot.model import load_tokenizer

    episodes, scenes = tmp_path / "episodes", tmp_path / "scenes"
    generate(episodes, DatagenConfig(episodes=2, seed=3, episodes_per_shard=2, start_frames_only=True))
    generate(
        scenes, DatagenConfig(episodes=3, seed=8, episodes_per_shard=3, question_split="heldout_objects")
    )
    # As the built-in model trains: the prompt states the arm's state, which scenes do not record.
    data = RobotData(
        [episodes, scenes],
        load_tokenizer(),
        grounded=True,
        cell_names=True,
        point_roles=True,
        gripper_state=True,
        gripper_motion=True,
        position_state=True,
    )
    asked = {f for f, *_ in data.vl}
    question_frames = {i for i, f in enumerate(data.frames) if f["split"] == fmt.QUESTION_SCENES}
    assert len(question_frames) == 3 and question_frames <= asked
    assert not question_frames & set(data.robot_frames.tolist()) and len(data.robot_frames) == 2
    assert {"bottle", "lemon", "pear"} & {word for name in data.cell_vocab for word in name.split()}
    acted, make = [], data.robot_example
    data.robot_example = lambda frame, **kw: acted.append(frame) or make(frame, **kw)
    data.load_features = None  # not needed: only which frames are drawn is checked
    data.collate = lambda examples: examples
    rng = np.random.default_rng(0)
    for _ in range(10):  # the scenes' folder has no robot frames, whatever share the mix gives it
        data.sample(rng, 8, vl_fraction=0.0, plain_fraction=0.0, mix=[0.5, 0.5])
    assert len(acted) == 80 and not set(acted) & question_frames


def test_datagen_cli_rejects_a_question_split_that_is_not_held_out(tmp_path):
    command = ["datagen", "--out", str(tmp_path), "--episodes", "1", "--question-split", "train"]
    result = subprocess.run(
        [sys.executable, "-m", "rt2_cot", *command],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "--question-split must be one of" in result.stderr
    assert "heldout_objects" in result.stderr and not list(tmp_path.iterdir())


def test_rename_object_renames_the_plans_object_wherever_the_instruction_names_it():
    from rt2_cot.data.dataset import rename_object

    assert rename_object(
        "move the red can onto the number four",
        "place the red can at 94 104 on the number 4 at 103 157",
        "cup",
    ) == ("move the red cup onto the number four", "place the red cup at 94 104 on the number 4 at 103 157")
    # "orange" the fruit is renamed, the colour of "the orange block" is not.
    assert rename_object(
        "bring the orange close to the orange block",
        "move the orange at 90 80 near the orange block at 9 8",
        "box",
    ) == ("bring the box close to the orange block", "move the box at 90 80 near the orange block at 9 8")
    # An instruction that does not name the object keeps its words; the plan still renames it.
    assert rename_object("I am thirsty", "pick up the blue can at 1 2", "mug") == (
        "I am thirsty",
        "pick up the blue mug at 1 2",
    )
    assert rename_object("grab the white can", "pick up the white can at 1 2", "can") is None  # same class
    assert rename_object("go", "move to the gripper at 1 2", "cup") is None  # not an object


def test_renamed_examples_give_the_plan_and_learn_only_the_action(generated):
    """`rename`: the object's new name in the instruction and the given plan (prompt), the action alone
    as target; with no renaming asked, sampling draws exactly the examples it drew before."""
    from rt2_cot.data.dataset import RobotData
    from rt2_cot.model import load_tokenizer

    out, _ = generated
    tok = load_tokenizer()
    data = RobotData([out], tok, grounded=True, point_roles=True)
    frame = next(
        int(i) for i in data.robot_frames if rename_target(data.frames[int(i)]["plan"]) not in (None, "cup")
    )
    plan = data.frames[frame]["plan"]
    example = data.robot_example(frame, plain=False, rename="cup")
    prompt, target = tok.decode(example.prompt), tok.decode(example.target)
    renamed = plan.replace(rename_target(plan), " ".join([*rename_target(plan).split()[:-1], "cup"]), 1)
    assert f"plan : {renamed.lower()}" in prompt and prompt.endswith("action :"), (prompt, plan)
    assert len(example.target) == 9 and target.split()[:8] == [str(a) for a in data.frames[frame]["action"]]
    assert (
        data.robot_example(frame, plain=True, rename="cup").target
        == data.robot_example(frame, plain=True).target
    )

    data.collate = lambda examples: examples  # which examples are drawn, not their features
    drawn = [
        data.sample(np.random.default_rng(7), 16, vl_fraction=0.25, plain_fraction=0.1) for _ in range(2)
    ]
    same = data.sample(np.random.default_rng(7), 16, vl_fraction=0.25, plain_fraction=0.1, rename=0.0)
    assert [e.prompt for e in same] == [e.prompt for e in drawn[0]] == [e.prompt for e in drawn[1]]
    renamed_all = data.sample(
        np.random.default_rng(7), 16, vl_fraction=0.0, plain_fraction=0.0, rename=1.0, rename_words=("cup",)
    )
    # Every plan here locates an object first, none a cup: all renamed, all given.
    assert all(len(e.target) == 9 and " cup at " in tok.decode(e.prompt) for e in renamed_all)


def rename_target(plan: str) -> str | None:
    import re

    match = re.search(r"\bthe ([a-z ]+?) at \d+ \d+", plan)
    return match.group(1) if match else None
