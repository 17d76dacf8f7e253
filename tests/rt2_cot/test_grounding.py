"""Grounded plans: object locations written into the plan, pointing questions, and the backfill."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rt2_cot.data.grounding import GRIPPER, ground_plan, pointing_questions, strip_grounding

POINTS = {
    GRIPPER: [128, 78],
    "apple": [30, 41],
    "red ball": [200, 97],
    "grey rock": [90, 120],
    "7": [64, 150],
}


def test_ground_plan_places_each_location_after_its_object():
    assert (
        ground_plan("move the apple near the red ball", "apple", "red ball", POINTS)
        == "move the apple at 30 41 near the red ball at 200 97"
    )
    # Natural kinds are named without their colour; number tiles as "number 7".
    assert ground_plan("pick up the rock.", "grey rock", "", POINTS) == "pick up the rock at 90 120"
    assert (
        ground_plan("place the apple on the number 7", "apple", "7", POINTS, tiles=["7"])
        == "place the apple at 30 41 on the number 7 at 64 150"
    )


def test_ground_plan_leaves_out_what_the_plan_does_not_mention():
    # "closest to" tasks have a reference the plan never names.
    assert ground_plan("pick up the apple", "apple", "red ball", POINTS) == "pick up the apple at 30 41"
    assert ground_plan("pick up the pear", "pear", "", POINTS) == "pick up the pear"


def test_strip_grounding_inverts_ground_plan():
    from rt2_cot.data.grounding import with_gripper

    plan = "move the apple near the red ball"
    grounded = ground_plan(plan, "apple", "red ball", POINTS)
    assert strip_grounding(grounded) == plan
    both = with_gripper(grounded, POINTS)
    assert both == "move the apple at 30 41 near the red ball at 200 97 with the gripper at 128 78"
    assert strip_grounding(both) == plan
    assert strip_grounding("place it at the number 7") == "place it at the number 7"


def test_plan_points_reads_every_located_thing_back():
    from rt2_cot.data.grounding import plan_points, with_gripper

    plan = "place the blue block at 150 83 on the number 3 at 123 111"
    assert plan_points(plan) == [("blue block", 150, 83), ("number 3", 123, 111)]
    assert plan_points("pick up the red block") == []
    grounded = with_gripper(
        ground_plan("move the apple near the red ball", "apple", "red ball", POINTS), POINTS
    )
    assert plan_points(grounded) == [("apple", 30, 41), ("red ball", 200, 97), ("gripper", 128, 78)]


def test_with_point_moves_one_located_thing_and_skips_the_gripper():
    from rt2_cot.data.grounding import plan_points, with_point

    plan = "move the apple at 30 41 near the red ball at 200 97 with the gripper at 128 71"
    moved = with_point(plan, 1, 190, 9)
    assert moved == "move the apple at 30 41 near the red ball at 190 9 with the gripper at 128 71"
    assert plan_points(with_point(plan, 0, 5, 6))[0] == ("apple", 5, 6)
    assert with_point(plan, 2, 5, 6) == plan  # the gripper's point is not a located thing
    assert with_point("pick up the rock", 0, 5, 6) == "pick up the rock"
    number = "place the green ball at 76 124 on the number 7 at 112 101"
    assert plan_points(with_point(number, 1, 60, 61))[1] == ("number 7", 60, 61)


def test_pointing_questions_always_ask_for_the_gripper():
    qs = pointing_questions(POINTS, frame=3, rng=np.random.default_rng(0), k=3)
    assert qs[0] == {"frame": 3, "question": "where is the gripper", "answer": "128 78", "kind": "pointing"}
    assert len(qs) == 3 and len({q["question"] for q in qs}) == 3
    for q in qs:
        x, y = (int(v) for v in q["answer"].split())
        assert 0 <= x < 256 and 0 <= y < 256
    assert any(
        q["question"] == "where is the number 7"
        for q in pointing_questions(POINTS, 0, np.random.default_rng(1), k=5)
    )


mujoco = pytest.importorskip("mujoco")


def test_scene_points_follow_the_gripper_and_the_projection():
    from robot_io.sim.env import TabletopSim
    from robot_io.sim.tasks import sample_task
    from rt2_cot.data.grounding import scene_points

    sim = TabletopSim()
    sim.reset(sample_task(np.random.default_rng(2), family="pick"), seed=5)
    before = scene_points(sim, 320, 240)
    u, v = sim.pixel_of(sim.task.target, 320, 240)
    assert before[sim.task.target] == [int(u / 320 * 256), int(v / 240 * 256)]
    for _ in range(4):  # the oracle moves the gripper toward the target
        command, _ = sim.oracle()
        sim.apply(command)
    after = scene_points(sim, 320, 240)
    assert after[GRIPPER] != before[GRIPPER]
    assert after[sim.task.target] == before[sim.task.target]  # objects stay put until grasped
    gap = lambda p: abs(p[GRIPPER][0] - p[sim.task.target][0])  # noqa: E731
    assert gap(after) < gap(before) or gap(before) < 4


def test_datagen_records_grounded_plans_and_backfill_reproduces_them(tmp_path):
    """Points written by datagen equal those a replay of the recorded episode computes."""
    from rt2_cot.data import format as fmt
    from rt2_cot.data.datagen import DatagenConfig, generate
    from rt2_cot.data.grounding import add_grounding

    generate(tmp_path / "new", DatagenConfig(episodes=3, seed=11, episodes_per_shard=3, noisy_episodes=0.0))
    path = fmt.shard_paths(tmp_path / "new")[0]
    meta = json.loads(path.with_suffix(".json").read_text())
    for fr, ep_task in ((f, meta["episodes"][f["episode"]]["task"]) for f in meta["frames"]):
        assert f" at {fr['points'][ep_task['target']][0]} " in fr["grounded_plan"]
        assert strip_grounding(fr["grounded_plan"]) == fr["plan"].rstrip(".")
    assert any(q["kind"] == "pointing" for q in meta["vl"])

    # An old shard: same episodes without the grounding fields; the backfill restores them exactly.
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(path, old / path.name)
    stripped = dict(meta)
    stripped["frames"] = [
        {k: v for k, v in f.items() if k not in ("points", "grounded_plan")} for f in meta["frames"]
    ]
    stripped["vl"] = [q for q in meta["vl"] if q["kind"] != "pointing"]
    (old / path.with_suffix(".json").name).write_text(json.dumps(stripped))
    totals = add_grounding(old)
    assert totals["diverged_episodes"] == 0 and totals["frames"] == len(meta["frames"])
    redone = json.loads((old / path.with_suffix(".json").name).read_text())
    assert [f["grounded_plan"] for f in redone["frames"]] == [f["grounded_plan"] for f in meta["frames"]]
    assert [f["points"] for f in redone["frames"]] == [f["points"] for f in meta["frames"]]
    assert add_grounding(old)["skipped_shards"] == 1  # idempotent


def test_noisy_episodes_keep_clean_oracle_labels(tmp_path):
    """DART: executed steps are jittered, recorded actions are the oracle's for the state reached."""
    from robot_io.sim.env import TabletopSim
    from robot_io.sim.tasks import sample_task
    from rt2_cot.action_codec import ActionCodec
    from rt2_cot.data.datagen import DatagenConfig, run_episode

    sim, codec = TabletopSim(), ActionCodec()
    task = sample_task(np.random.default_rng(4), family="pick")
    clean = run_episode(sim, task, 17, DatagenConfig(episodes=1, noisy_episodes=0.0), codec)
    noisy = run_episode(
        sim, task, 17, DatagenConfig(episodes=1, noisy_episodes=1.0, noise_step_prob=1.0), codec
    )
    assert noisy["noisy"] and not clean["noisy"] and clean["success"]
    # The first frame is the same state; afterwards the noisy rollout visits other states.
    assert clean["actions"][0] == noisy["actions"][0]
    assert clean["points"][3][GRIPPER] != noisy["points"][3][GRIPPER]


def fresh_plan_points(plan: str) -> int:
    from rt2_cot.data.grounding import plan_points

    return len(plan_points(plan))


def test_stale_plan_examples_give_the_old_plan_as_prompt_text(tmp_path):
    """Plan-reuse training examples: an earlier frame's plan is prompt text, only the action is learned."""
    from rt2_cot.data.datagen import DatagenConfig, generate
    from rt2_cot.data.dataset import RobotData
    from rt2_cot.model import load_tokenizer
    from rt2_cot.prompts import build_prompt

    generate(tmp_path, DatagenConfig(episodes=1, seed=5, noisy_episodes=0.0))
    tok = load_tokenizer()
    data = RobotData([tmp_path], tok, grounded=True)
    fresh, stale = data.robot_example(4, plain=False), data.robot_example(4, plain=False, plan_age=3)
    old_plan = data.frames[1]["plan"]
    assert tok.decode(stale.prompt[1:]) == tok.decode(
        tok(build_prompt("cot", data.frames[4]["instruction"], old_plan))["input_ids"][1:-1]
    )
    assert stale.target == fresh.target[-9:]  # the same eight action tokens and end, nothing else
    assert stale.roles == [*range(8), -1]
    # At the start of an episode there is no older plan: the example is an ordinary one.
    assert data.robot_example(0, plain=False, plan_age=3) == data.robot_example(0, plain=False)

    # `point_roles`: the plan's two coordinates are POINTs, the actions keep their dimensions.
    from rt2_cot.data.dataset import POINT

    scored = RobotData([tmp_path], tok, grounded=True, point_roles=True).robot_example(4, plain=False)
    assert scored.roles.count(POINT) == 2 * fresh_plan_points(data.frames[4]["plan"])
    assert scored.roles[-9:] == [*range(8), -1]
    assert POINT not in fresh.roles


def test_point_roles_mark_the_coordinates_after_at_not_a_number_tiles_digit(tmp_path):
    """In "place the rock at 162 148 on the number 6 at 123 136" the POINTs are the two pairs after
    "at"; the 6 is a word the plan must get exactly (until session 16 it was a POINT too: the pointer
    wrote the digit as a coordinate and the tile's x and y lost their pairing)."""
    from rt2_cot.data.datagen import DatagenConfig, generate
    from rt2_cot.data.dataset import POINT, TEXT, RobotData
    from rt2_cot.model import load_tokenizer

    generate(tmp_path, DatagenConfig(episodes=2, seed=3, families=("place_on_number", "arithmetic")))
    tok = load_tokenizer()
    data = RobotData([tmp_path], tok, grounded=True, point_roles=True)
    for frame in range(len(data.frames)):
        example = data.robot_example(frame, plain=False)
        words = tok.convert_ids_to_tokens(example.target)
        tile = data.frames[frame]["plan"].split("number ")[1].split()[0]
        assert f"number {tile} at" in tok.decode(example.target)
        digit = words.index(tile, words.index("number"))
        assert example.roles[digit] == TEXT
        points = [i for i, r in enumerate(example.roles) if r == POINT]
        assert points and all(words[i - 1] == "at" or words[i - 2] == "at" for i in points)
        assert len(points) == 2 * fresh_plan_points(data.frames[frame]["plan"])
    # A pointing answer ("where is the number 6" -> "123 136") is all coordinates.
    pointing = [i for i, v in enumerate(data.vl) if v[3] == "pointing"]
    answer = data.vl_example(pointing[0])
    assert answer.roles.count(POINT) == 2


def test_locate_questions_write_the_name_with_its_point_as_a_plan_does(tmp_path):
    """`locate`: each pointing question is also asked in the plan's words, "locate the number 6" ->
    "the number 6 at 123 136": the name copied from the prompt, then its point, the two integers
    after "at" scored as POINTs and the digit as a word."""
    from rt2_cot.data.datagen import DatagenConfig, generate
    from rt2_cot.data.dataset import POINT, TEXT, RobotData
    from rt2_cot.model import load_tokenizer

    generate(tmp_path, DatagenConfig(episodes=2, seed=3, families=("place_on_number",)))
    tok = load_tokenizer()
    plain = RobotData([tmp_path], tok, grounded=True, point_roles=True)
    data = RobotData([tmp_path], tok, grounded=True, point_roles=True, locate=True)
    # Every pointing question but the gripper's (plans never locate the gripper).
    pointing = [v for v in data.vl if v[3] == "pointing" and v[1] != "where is the gripper"]
    located = [v for v in data.vl if v[3] == "locate"]
    assert any(v[1] == "where is the gripper" for v in data.vl)
    assert pointing and len(located) == len(pointing) == len(data.vl) - len(plain.vl)
    for (frame, question, answer, _), (lframe, lquestion, lanswer, _) in zip(pointing, located, strict=True):
        label = question.removeprefix("where is the ")
        assert (lframe, lquestion, lanswer) == (frame, f"locate the {label}", f"the {label} at {answer}")
    tile = next(i for i, v in enumerate(data.vl) if v[3] == "locate" and "number" in v[1])
    example = data.vl_example(tile)
    words = tok.convert_ids_to_tokens(example.target)
    points = [i for i, r in enumerate(example.roles) if r == POINT]
    assert len(points) == 2 and words[points[0] - 1] == "at"
    assert example.roles[words.index("number") + 1] == TEXT
    # Plain (ungrounded) training has no pointing questions, so nothing to locate.
    assert not [v for v in RobotData([tmp_path], tok, locate=True).vl if v[3] == "locate"]


def test_locate_questions_need_grounded_plans(tmp_path):
    from rt2_cot.errors import ConfigError
    from rt2_cot.training import TrainConfig, train

    with pytest.raises(ConfigError, match="grounded_plan"):
        train(TrainConfig(data=[str(tmp_path)], locate_questions=True), tmp_path / "run")
