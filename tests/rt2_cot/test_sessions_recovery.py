"""Crash safety of session recording: a recorder killed with SIGKILL mid-episode, and a commit that
dies half-way, both leave a session that recovers into a valid LeRobot dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from robot_io.types import ArmState, CameraIntrinsics, EndEffectorCommand, Frame
from rt2_cot.loop_events import EpisodeEnded, EpisodeStarted, StepRecord
from rt2_cot.policy import PolicyOutput
from rt2_cot.sessions import SessionDataset, SessionRecorder, check_session, list_sessions, recover
from rt2_cot.sessions import recorder as recorder_mod

REPO = Path(__file__).resolve().parents[2]

# The child records one clean 8-step episode, then steps a second one at 10 Hz until killed. It prints
# each step number after handing the step to the recorder, i.e. what the loop believes it recorded.
CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from robot_io.types import ArmState, CameraIntrinsics, EndEffectorCommand, Frame
    from rt2_cot.loop_events import EpisodeEnded, EpisodeStarted, StepRecord
    from rt2_cot.policy import PolicyOutput
    from rt2_cot.sessions import SessionRecorder

    H, W = 240, 320
    K = CameraIntrinsics(W, H, 200.0, 200.0, W / 2, H / 2)

    def image(step):
        img = np.zeros((H, W, 3), np.uint8)
        img[:, :, 0] = (np.arange(W) * 255 // W)[None, :]
        img[:, :, 1] = (step * 9) % 256
        return img

    def record(eid, step, t):
        cmd = EndEffectorCommand((0.01, 0.0, 0.0), (0.0, 0.0, 0.0), 1.0)
        out = PolicyOutput(cmd, (0, 153, 128, 128, 128, 128, 128, 255), plan="move right",
                           text="Plan: move right. Action: 0 153 128 128 128 128 128 255", latency_ms=20.0)
        frame = Frame(image(step), np.full((H, W), 700, np.uint16), 0.001, K, t, step)
        return StepRecord(eid, step, t, "move right", frame, ArmState(np.zeros(3), np.zeros(3), 1.0), out, cmd)

    rec = SessionRecorder(sys.argv[1], fps=10)
    rec(EpisodeStarted("clean", "move right", "fake", time.time()))
    for s in range(8):
        rec(record("clean", s, s / 10))
    rec(EpisodeEnded("clean", "terminate", 8, True))
    rec.flush()
    print("clean", flush=True)
    rec(EpisodeStarted("doomed", "move right", "fake", time.time()))
    t0 = time.monotonic()
    step = 0
    while True:
        rec(record("doomed", step, step / 10))
        print(step, flush=True)
        step += 1
        time.sleep(max(0.0, t0 + step / 10 - time.monotonic()))
    """
)


def test_sigkill_while_recording_loses_at_most_about_a_second(tmp_path, capsys):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = tmp_path / "sessions" / "crashed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    published = -1
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if line.strip().isdigit():
                published = int(line)
                if published >= 34:  # 3.5 s into the doomed episode
                    break
            assert time.monotonic() < deadline, "child too slow to start"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
    assert published >= 34, proc.stderr.read()[-2000:]
    steps_published = published + 1

    # Before recovery the session lists as needing it; check warns about the journal.
    assert next(s for s in list_sessions(root.parent) if s["name"] == "crashed")["in_progress"] is True
    from rt2_cot.cli import main

    assert main(["session", "recover", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recovered_episodes"] == [1]
    assert recover(root) == []  # nothing left to do

    report = check_session(root, decode=True)
    assert report.ok, report.problems
    ds = SessionDataset(root)
    eps = ds.episodes()
    assert [e["end_reason"] for e in eps] == ["terminate", "crash"]
    assert eps[0]["length"] == 8
    kept = eps[1]["length"]
    assert steps_published - 15 <= kept <= steps_published, f"kept {kept} of {steps_published} steps"
    frames = list(ds.frames(1))
    assert len(frames) == kept
    # The frames kept are the first ones, in order, with their own images.
    for i in (0, kept // 2, kept - 1):
        assert abs(float(frames[i]["image"][:, :, 1].mean()) - (i * 9) % 256) < 4
        assert frames[i]["plan"] == "move right"

    # The recovered session takes new episodes after the crashed one.
    rec = SessionRecorder(root, fps=10)
    rec.close()
    assert len(SessionDataset(root).episodes()) == 2


def _record(eid: str, step: int) -> StepRecord:
    k = CameraIntrinsics(64, 48, 50.0, 50.0, 32, 24)
    cmd = EndEffectorCommand((0.0, 0.01, 0.0), (0.0, 0.0, 0.0), 0.5)
    out = PolicyOutput(
        cmd, (0, 128, 153, 128, 128, 128, 128, 128), plan="go", text="Plan: go.", latency_ms=5.0
    )
    img = np.full((48, 64, 3), step * 20 % 256, np.uint8)
    frame = Frame(img, None, 0.001, k, step / 10, step)
    return StepRecord(eid, step, step / 10, "go", frame, ArmState(np.zeros(3), np.zeros(3), 0.5), out, cmd)


def test_a_commit_that_dies_half_way_is_redone_cleanly(tmp_path, monkeypatch):
    root = tmp_path / "s"
    rec = SessionRecorder(root, fps=10, camera_keys=("observation.images.color",))
    for eid, n in (("a", 6), ("b", 9)):
        rec(EpisodeStarted(eid, "go", "fake", time.time()))
        for s in range(n):
            rec(_record(eid, s))
        if eid == "b":
            # Data and video of "b" are written, then the commit fails before meta is updated.
            def boom(*args, **kwargs):
                raise OSError("disk full")

            rec.flush()
            monkeypatch.setattr(recorder_mod, "write_stats", boom)
        rec(EpisodeEnded(eid, "terminate", n, None))
    rec.close()
    assert any("disk full" in e for e in rec.errors)
    monkeypatch.undo()
    # Half-committed: the reader still sees only "a" (info.json is the commit point), and check
    # points at the journal and the extra rows until recovery redoes the commit.
    assert [e["length"] for e in SessionDataset(root).episodes()] == [6]
    half = check_session(root)
    assert not half.ok and any("journal" in w or "crash" in w for w in half.warnings)

    assert recover(root) == [1]
    report = check_session(root, decode=True)
    assert report.ok, report.problems
    ds = SessionDataset(root)
    assert [e["length"] for e in ds.episodes()] == [6, 9]
    assert [e["end_reason"] for e in ds.episodes()] == ["terminate", "terminate"]
    assert report.video_frames == {"observation.images.color": 15}
    assert abs(float(ds.frame(1, 8)["image"].mean()) - 160) < 4


@pytest.mark.parametrize("steps", [0])
def test_an_episode_without_steps_leaves_no_trace(tmp_path, steps):
    root = tmp_path / "s"
    rec = SessionRecorder(root, fps=10)
    rec(EpisodeStarted("e", "go", "fake", time.time()))
    rec(EpisodeEnded("e", "stop", steps, None))
    rec.close()
    assert SessionDataset(root).episodes() == []
    assert check_session(root).ok
    assert not any(p.is_dir() for p in (root / ".journal").iterdir())
