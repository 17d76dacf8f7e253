"""OraclePolicy through the real loop, rollout MP4s, and `rt2-cot sim` end to end."""

from __future__ import annotations

import importlib
import json
import sys
import types

import av
import numpy as np
import pytest

from robot_io.sim import make_sim_rig
from robot_io.sim.tasks import FAMILIES, task_from_instruction
from rt2_cot.action_codec import ActionCodec
from rt2_cot.cli import main
from rt2_cot.control_loop import ControlLoop
from rt2_cot.events import ActionComplete, ActionTokenEvent, PlanDelta
from rt2_cot.loop_events import StepRecord, StreamEvent
from rt2_cot.oracle_policy import OraclePolicy
from rt2_cot.video import VideoSubscriber, VideoWriter


class _PassThroughShield:
    """Stand-in with SafetyShield's interface, used only while robot_io.safety is not importable."""

    def __init__(self, arm, limits=None) -> None:
        self.arm, self.estopped, self.last_notes = arm, False, ()

    def send(self, command):
        return None if self.estopped or command is None else self.arm.apply(command)

    def estop(self) -> None:
        self.estopped = True

    def reset_estop(self) -> None:
        self.estopped = False

    def hold_if_stale(self) -> None:
        pass


@pytest.fixture
def shield_module(monkeypatch):
    try:
        return importlib.import_module("robot_io.safety")
    except ImportError:
        fake = types.SimpleNamespace(SafetyShield=_PassThroughShield, SafetyLimits=lambda: None)
        monkeypatch.setitem(sys.modules, "robot_io.safety", fake)
        return fake


@pytest.fixture(scope="module")
def rig():
    sim, arm, camera = make_sim_rig()
    yield sim, arm, camera
    sim.close()


def test_oracle_policy_streams_a_plan_and_valid_tokens_through_the_loop(rig, shield_module):
    sim, arm, camera = rig
    sim.reset(task_from_instruction("place the banana on the star"), seed=3)
    events = []
    loop = ControlLoop(
        camera,
        shield_module.SafetyShield(arm, shield_module.SafetyLimits()),
        OraclePolicy(sim),
        [events.append],
        rate_hz=1e6,
        max_steps=60,
        success_fn=sim.success,
    )
    ended = loop.run_episode(sim.task.instruction)
    assert ended.reason == "success" and ended.success
    records = [e for e in events if isinstance(e, StepRecord)]
    codec = ActionCodec()
    for r in records:
        assert r.output.plan == "place the banana on the star"
        assert r.output.text.startswith("Plan: place the banana on the star. Action: ")
        assert codec.decode(ActionCodec.from_text(r.output.text.split("Action: ")[1])) == r.output.command
    first = [e.event for e in events if isinstance(e, StreamEvent) and e.step == 0]
    assert isinstance(first[1], PlanDelta)
    assert [e.index for e in first if isinstance(e, ActionTokenEvent)] == list(range(8))
    assert isinstance(first[-1], ActionComplete)
    # The gripper closes once (grasp) and opens again (release) over the episode.
    grips = [r.output.tokens[7] for r in records]
    assert 0 in grips and grips[0] == 255


def test_oracle_policy_poses_a_typed_instruction_in_the_current_scene(rig, shield_module):
    sim, arm, camera = rig
    sim.reset(task_from_instruction("pick up the rock"), seed=2)
    other = next(o.name for o in sim.objects if o.name != "rock")
    policy = OraclePolicy(sim)
    shield = shield_module.SafetyShield(arm, shield_module.SafetyLimits())
    ended = ControlLoop(
        camera, shield, policy, rate_hz=1e6, max_steps=60, success_fn=sim.success
    ).run_episode(f"pick up the {other}")
    assert ended.success and sim.task.target == other and sim.held == other


def test_video_writer_makes_a_watchable_h264_mp4(tmp_path):
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=10) as writer:
        for i in range(12):
            img = np.zeros((121, 161, 3), np.uint8)  # odd sizes are padded for yuv420p
            img[:, : 10 * i] = 200
            writer.add(img)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 12 and frames[0].shape == (122, 162, 3)
    assert frames[-1][:, :100].mean() > 150 > frames[0][:, :100].mean(), "content survives encoding"


def test_video_subscriber_records_each_step_and_the_end(rig, shield_module, tmp_path):
    sim, arm, camera = rig
    sim.reset(task_from_instruction("pick up the apple"), seed=1)
    path = tmp_path / "episode.mp4"
    writer = VideoWriter(path, fps=10)
    sub = VideoSubscriber(writer, scale=1, hold_last_s=0.3, final_frame=lambda: sim.render().color)
    shield = shield_module.SafetyShield(arm, shield_module.SafetyLimits())
    ended = ControlLoop(
        camera, shield, OraclePolicy(sim), [sub], rate_hz=1e6, success_fn=sim.success
    ).run_episode(sim.task.instruction)
    writer.close()
    assert writer.frames == ended.steps + 3
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == writer.frames


def test_video_rejects_bad_paths(tmp_path):
    from rt2_cot.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\.mp4"):
        VideoWriter(tmp_path / "x.avi")
    with pytest.raises(ConfigError, match="does not exist"):
        VideoWriter(tmp_path / "missing" / "x.mp4")


def _sim_json(capsys, *argv) -> dict:
    code = main(["sim", *argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def test_cli_sim_five_oracle_episodes(capsys, shield_module, tmp_path):
    video = tmp_path / "run.mp4"
    report = _sim_json(capsys, "--policy", "oracle", "--episodes", "5", "--seed", "1", "--video", str(video))
    assert report["episodes"] == 5 and report["success_rate"] >= 0.8
    assert sum(v["episodes"] for v in report["by_category"].values()) == 5
    assert len(report["by_category"]) == 5, "a mixed run cycles through the families"
    assert 3 <= report["mean_steps"] <= 60
    assert report["plan_accuracy"] == 1.0 and all(r["plan_correct"] for r in report["results"])
    assert video.stat().st_size > 10_000


def test_cli_sim_instruction_and_family(capsys, shield_module):
    report = _sim_json(capsys, "--instruction", "I am thirsty", "--episodes", "2")
    assert report["by_category"] == {"semantic_drink": {"episodes": 2, "success_rate": 1.0}}
    report = _sim_json(capsys, "--family", "arithmetic", "--split", "heldout")
    assert report["results"][0]["family"] == "arithmetic" and report["success_rate"] == 1.0


def test_cli_sim_bad_input_is_one_line(capsys, shield_module):
    assert main(["sim", "--instruction", "dance the tango"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot pose 'dance the tango'")
    assert main(["sim", "--family", "juggle"]) == 2
    assert "unknown family" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_sim_fifty_oracle_episodes_meet_the_target(capsys, shield_module):
    report = _sim_json(capsys, "--policy", "oracle", "--episodes", "50", "--seed", "0")
    assert report["episodes"] == 50 and set(report["by_category"]) == set(FAMILIES)
    assert report["success_rate"] >= 0.95
