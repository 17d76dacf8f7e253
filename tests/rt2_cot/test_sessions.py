"""Session recording and reading: LeRobot v3.0 layout, read-back fidelity, check, grading, deletion,
export, a loop that never waits for the disk, and paths from browsers that must stay inside the root."""

from __future__ import annotations

import json
import os
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from robot_io.types import ArmState, CameraIntrinsics, EndEffectorCommand, Frame
from rt2_cot.loop_events import EpisodeEnded, EpisodeStarted, StepRecord, StreamEvent
from rt2_cot.policy import PolicyOutput
from rt2_cot.sessions import (
    SessionDataset,
    SessionError,
    SessionRecorder,
    check_session,
    delete_session,
    list_sessions,
    recover,
    resolve_session,
)
from rt2_cot.sessions import recorder as recorder_mod
from rt2_cot.sessions.layout import inside

H, W = 96, 128
FPS = 10.0
K = CameraIntrinsics(W, H, 100.0, 100.0, W / 2, H / 2)


def color_image(episode: int, step: int) -> np.ndarray:
    """A smooth gradient with a bright square that moves each step (so frames differ visibly)."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 60 + 40 * episode)], axis=2).astype(
        np.uint8
    )
    x0 = (8 * step) % (W - 24)
    img[30:54, x0 : x0 + 24] = (250, 250, 30)
    return img


def depth_image(step: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    d = (400 + 4 * xx + 2 * yy + 10 * step).astype(np.uint16)  # 0.4..1.1 m in millimetres
    d[:6, :6] = 0  # no reading in a corner
    return d


def step_output(episode: int, step: int, parse_fail: bool = False) -> PolicyOutput:
    if parse_fail:
        return PolicyOutput(
            command=None, tokens=None, plan="", text="Plan: ???", error="no action", latency_ms=33.0
        )
    tokens = (0, 128 + step % 5, 120, 96 + episode, 128, 128, 130, 255 - step)
    cmd = EndEffectorCommand(
        (0.002 * step, 0.0, -0.01), (0.0, 0.0, 0.01 * episode), (255 - step) / 255.0, False
    )
    return PolicyOutput(
        command=cmd,
        tokens=tokens,
        plan=f"pick up object {episode}",
        text=f"Plan: pick up object {episode}. Action: {' '.join(map(str, tokens))}",
        latency_ms=40.0 + step,
        ttft_ms=12.5,
        replanned=step == 0,
    )


def step_record(eid: str, episode: int, step: int, parse_fail: bool = False) -> StepRecord:
    out = step_output(episode, step, parse_fail)
    sent = None
    if out.command is not None:
        # The shield clipped z: what was sent differs from what was requested.
        sent = EndEffectorCommand(
            (*out.command.delta_xyz_m[:2], -0.005), out.command.delta_rpy_rad, out.command.gripper
        )
    frame = Frame(color_image(episode, step), depth_image(step), 0.001, K, step / FPS, step)
    arm = ArmState(np.array([0.4, 0.0, 0.2 - 0.005 * step]), np.array([np.pi, 0.0, 0.1]), 0.8)
    return StepRecord(
        episode_id=eid,
        step=step,
        timestamp_s=step / FPS + 0.003,
        instruction=f"task {episode}",
        frame=frame,
        arm_state=arm,
        output=out,
        command_sent=sent,
        shield_notes=("clipped z to table floor",) if sent is not None else (),
        loop_hz=9.8,
    )


def record_episode(
    rec: SessionRecorder, episode: int, steps: int, *, reason: str = "terminate", fail_at: int = -1
) -> None:
    eid = f"ep-{episode}-{time.time_ns()}"
    rec(EpisodeStarted(episode_id=eid, instruction=f"task {episode}", policy="fake", started_at=time.time()))
    for s in range(steps):
        rec(StreamEvent(eid, s, None))  # ignored by the recorder
        rec(step_record(eid, episode, s, parse_fail=s == fail_at))
    rec(EpisodeEnded(episode_id=eid, reason=reason, steps=steps, success=reason == "success"))


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    """Two recorded episodes (12 and 7 steps; step 3 of episode 1 unparseable)."""
    root = tmp_path_factory.mktemp("sessions") / "session-a"
    rec = SessionRecorder(root, fps=FPS)
    record_episode(rec, 0, 12, reason="success")
    record_episode(rec, 1, 7, reason="terminate", fail_at=3)
    rec.close()
    assert rec.errors == []
    assert rec.committed == [0, 1]
    return root


def test_layout_is_lerobot_v3(session):
    info = json.loads((session / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (
        info["fps"] == 10
        and info["total_episodes"] == 2
        and info["total_frames"] == 19
        and info["total_tasks"] == 2
    )
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    feats = info["features"]
    assert feats["observation.state"]["shape"] == [7] and feats["observation.state"]["dtype"] == "float32"
    assert feats["action_tokens"] == {
        "dtype": "int64",
        "shape": [8],
        "names": feats["action_tokens"]["names"],
    }
    for key in ("observation.images.color", "observation.images.depth"):
        assert feats[key]["dtype"] == "video" and feats[key]["shape"] == [H, W, 3]
        assert (
            feats[key]["info"]["video.codec"] == "h264" and feats[key]["info"]["video.pix_fmt"] == "yuv420p"
        )
        assert (session / f"videos/{key}/chunk-000/file-000.mp4").is_file()
    assert feats["observation.images.depth"]["info"]["depth.encoding"] == "grey8-linear"

    tasks = pd.read_parquet(session / "meta/tasks.parquet")
    assert tasks.index.name == "task" and dict(zip(tasks.index, tasks["task_index"], strict=True)) == {
        "task 0": 0,
        "task 1": 1,
    }

    eps = pd.read_parquet(session / "meta/episodes/chunk-000/file-000.parquet")
    assert eps["episode_index"].tolist() == [0, 1]
    assert eps["length"].tolist() == [12, 7]
    assert eps["dataset_from_index"].tolist() == [0, 12] and eps["dataset_to_index"].tolist() == [12, 19]
    for key in ("observation.images.color", "observation.images.depth"):
        # Episodes are concatenated in one file; frame i of episode e is at from_timestamp + i/fps.
        assert eps[f"videos/{key}/from_timestamp"].tolist() == pytest.approx([0.0, 1.2])
        assert eps[f"videos/{key}/to_timestamp"].tolist() == pytest.approx([1.2, 1.9])
        assert eps[f"videos/{key}/file_index"].tolist() == [0, 0]
    assert eps["end_reason"].tolist() == ["success", "terminate"]
    assert eps["instruction"].tolist() == ["task 0", "task 1"]
    assert list(eps["stats/action/mean"].iloc[0]) == pytest.approx(
        [0.011, 0.0, -0.005, 0.0, 0.0, 0.0, (255 - 5.5) / 255], abs=1e-6
    )

    stats = json.loads((session / "meta/stats.json").read_text())
    assert stats["observation.state"]["max"][2] == pytest.approx(0.2, abs=1e-6)
    assert len(stats["observation.images.color"]["mean"]) == 3


def test_data_columns_and_values(session):
    table = pq.read_table(session / "data/chunk-000/file-000.parquet")
    expected = {
        "index", "episode_index", "frame_index", "timestamp", "task_index", "observation.state", "action",
        "generated_text", "plan", "action_tokens", "action_requested", "latency_ms", "ttft_ms", "shield_notes",
    }  # fmt: skip
    assert expected <= set(table.column_names)
    df = table.to_pandas()
    assert df["index"].tolist() == list(range(19))
    assert df["frame_index"].tolist() == list(range(12)) + list(range(7))
    assert df["timestamp"].to_numpy() == pytest.approx(np.r_[np.arange(12), np.arange(7)] / FPS)
    assert df["wall_time_s"].iloc[5] == pytest.approx(0.503)
    row = df.iloc[12 + 2]  # episode 1, step 2
    assert list(row["action_tokens"]) == [0, 130, 120, 97, 128, 128, 130, 253]
    assert row["plan"] == "pick up object 1" and row["generated_text"].startswith(
        "Plan: pick up object 1. Action: 0 130"
    )
    assert list(row["action"])[2] == pytest.approx(-0.005) and list(row["action_requested"])[
        2
    ] == pytest.approx(-0.01)
    assert row["shield_notes"] == "clipped z to table floor"
    assert row["latency_ms"] == pytest.approx(42.0) and row["ttft_ms"] == pytest.approx(12.5)


def test_read_back_frames_match_what_was_recorded(session):
    ds = SessionDataset(session)
    episodes = ds.episodes()
    assert [e["length"] for e in episodes] == [12, 7]
    assert episodes[0]["success"] is True and episodes[1]["success"] is False
    assert episodes[0]["operator_grade"] is None
    for ep, n in ((0, 12), (1, 7)):
        frames = list(ds.frames(ep))
        assert len(frames) == n
        for i, f in enumerate(frames):
            err = np.abs(f["image"].astype(int) - color_image(ep, i).astype(int)).mean()
            assert err < 6, f"episode {ep} frame {i} differs by {err:.1f} grey levels on average"
            assert f["frame_index"] == i
        truth = depth_image(3).astype(np.float32) / 1000
        got = frames[3]["depth_m"]
        assert np.isnan(got[:4, :4]).all(), "no-reading pixels must come back as NaN"
        assert np.nanmedian(np.abs(got[10:, 10:] - truth[10:, 10:])) < 0.015
    bad = list(ds.frames(1))[3]
    assert bad["action_tokens"] is None and bad["parse_error"] == "no action"
    assert bad["action_sent"] is False and bad["action"] == [0, 0, 0, 0, 0, 0, pytest.approx(0.8)]
    assert all(np.isnan(v) if v is not None else True for v in bad["action_requested"])


def test_scrubber_frame_seeks_to_any_step(session):
    ds = SessionDataset(session)
    for ep, i in ((0, 11), (1, 0), (1, 6), (0, 5)):
        f = ds.frame(ep, i)
        assert np.abs(f["image"].astype(int) - color_image(ep, i).astype(int)).mean() < 6
        assert f["plan"] == f"pick up object {ep}" and f["frame_index"] == i
    with pytest.raises(SessionError, match=r"frames 0\.\.6"):
        ds.frame(1, 7)
    with pytest.raises(SessionError, match="episode 5 is not"):
        ds.frame(5, 0)


def test_check_passes_on_a_good_session_and_cli_says_ok(session, capsys):
    from rt2_cot.cli import main

    report = check_session(session, decode=True)
    assert report.ok, report.problems
    assert report.frames == 19 and report.video_frames == {
        "observation.images.color": 19,
        "observation.images.depth": 19,
    }
    assert main(["session", "check", str(session), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["episodes"] == 2


def _copy(session: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(session, dst)
    return dst


def _drop_last_row(root: Path) -> None:
    path = root / "data/chunk-000/file-000.parquet"
    t = pq.read_table(path)
    pq.write_table(t.slice(0, t.num_rows - 1), path)


def _truncate_video(root: Path) -> None:
    path = root / "videos/observation.images.color/chunk-000/file-000.mp4"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_total(root: Path) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    info["total_frames"] = 20
    (root / "meta/info.json").write_text(json.dumps(info))


def _skewed_timestamps(root: Path) -> None:
    path = root / "data/chunk-000/file-000.parquet"
    df = pd.read_parquet(path)
    df.loc[3, "timestamp"] = 0.5
    df.to_parquet(path)


def _missing_column(root: Path) -> None:
    path = root / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop(["action_tokens"]), path)


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (_drop_last_row, "data rows"),
        (_truncate_video, "observation.images.color"),
        (_bad_total, "info.json says 20 frames"),
        (_skewed_timestamps, "timestamps drift"),
        (_missing_column, "lacks columns ['action_tokens']"),
    ],
)
def test_check_fails_on_a_corrupted_session(session, tmp_path, capsys, corrupt, expected):
    from rt2_cot.cli import main

    broken = _copy(session, tmp_path)
    corrupt(broken)
    report = check_session(broken)
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems
    assert main(["session", "check", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_unparseable_everything_is_one_line(tmp_path, capsys):
    from rt2_cot.cli import main

    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text("{not json")
    assert main(["session", "check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "info.json is unreadable" in err and "Traceback" not in err


def test_grade_delete_and_export(session, tmp_path):
    root = _copy(session, tmp_path)
    ds = SessionDataset(root)
    ds.set_grade(1, "fail", "grabbed the wrong object")
    assert ds.episodes()[1]["operator_grade"] == "fail"
    assert ds.episodes()[1]["operator_note"] == "grabbed the wrong object"
    with pytest.raises(SessionError, match="grade must be"):
        ds.set_grade(0, "maybe", "")
    with pytest.raises(SessionError, match="episode 9"):
        ds.set_grade(9, "pass", "")

    # Export one episode as a zip holding a standalone dataset that passes the check.
    out = tmp_path / "ep1.zip"
    assert ds.export(1, out) == out
    with zipfile.ZipFile(out) as zf:
        zf.extractall(tmp_path / "unzipped")
    exported = next((tmp_path / "unzipped").iterdir())
    assert check_session(exported, decode=True).ok
    ex = SessionDataset(exported)
    assert [e["length"] for e in ex.episodes()] == [7] and ex.episodes()[0]["operator_grade"] == "fail"
    assert np.abs(ex.frame(0, 6)["image"].astype(int) - color_image(1, 6).astype(int)).mean() < 6

    # Delete episode 0: episode 1 becomes episode 0, still valid, images unchanged.
    ds.delete_episode(0)
    assert check_session(root, decode=True).ok
    eps = ds.episodes()
    assert (
        [e["episode_index"] for e in eps] == [0]
        and eps[0]["instruction"] == "task 1"
        and eps[0]["length"] == 7
    )
    assert np.abs(ds.frame(0, 4)["image"].astype(int) - color_image(1, 4).astype(int)).mean() < 6

    # A recorder can keep appending to the edited session.
    rec = SessionRecorder(root, fps=FPS)
    record_episode(rec, 2, 5)
    rec.close()
    assert [e["length"] for e in SessionDataset(root).episodes()] == [7, 5]
    assert check_session(root, decode=True).ok

    # The whole session exported as a folder; then deleted.
    folder = tmp_path / "whole"
    SessionDataset(root).export(None, folder)
    assert check_session(folder).ok
    delete_session(tmp_path, "copy")
    assert not root.exists()


def test_recorder_refuses_other_fps_and_a_second_live_recorder(tmp_path):
    root = tmp_path / "s"
    rec = SessionRecorder(root, fps=FPS)
    with pytest.raises(SessionError, match="another recorder"):
        SessionRecorder(root, fps=FPS)
    assert recover(root) == []  # a live session is left alone
    rec.close()
    with pytest.raises(SessionError, match="recorded at 10 fps"):
        SessionRecorder(root, fps=15.0)


def test_subscriber_never_waits_for_the_writer(tmp_path, monkeypatch):
    """With the writer stuck on disk, every call still returns at once; overflow drops, not blocks."""
    gate = threading.Event()
    real_add = recorder_mod._JournalEpisode.add

    def stuck_add(self, *args, **kwargs):
        gate.wait(30)
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(recorder_mod._JournalEpisode, "add", stuck_add)
    rec = SessionRecorder(tmp_path / "s", fps=FPS, max_pending_steps=40)
    eid = "slow-disk"
    records = [step_record(eid, 0, s) for s in range(60)]
    rec(EpisodeStarted(eid, "task 0", "fake", time.time()))
    durations = []
    for r in records:
        t0 = time.perf_counter()
        rec(r)
        durations.append(time.perf_counter() - t0)
    rec(EpisodeEnded(eid, "stop", 60, None))
    durations_ms = np.array(durations) * 1000
    assert np.median(durations_ms) < 2.0, f"median call {np.median(durations_ms):.2f} ms"
    assert durations_ms.max() < 100.0, f"slowest call {durations_ms.max():.1f} ms"
    assert rec.pending >= 39  # the writer has not taken anything but (at most) the first step
    assert rec.dropped_steps == 20
    gate.set()
    rec.close()
    eps = SessionDataset(tmp_path / "s").episodes()
    assert eps[0]["length"] == 40 and eps[0]["dropped_steps"] == 20 and eps[0]["end_reason"] == "stop"


def test_paths_from_a_browser_cannot_leave_the_sessions_root(session, tmp_path):
    base = session.parent
    for bad in (
        "..",
        "../x",
        "/etc",
        "/etc/passwd",
        "a/b",
        ".journal",
        "_exports",
        "",
        "session-a/../session-a",
    ):
        with pytest.raises(SessionError):
            resolve_session(base, bad)
        with pytest.raises(SessionError):
            SessionDataset.open(base, bad)
    assert resolve_session(base, "session-a") == session.resolve()

    # A symlink that points out of the sessions root is neither listed nor opened.
    outside = tmp_path / "outside"
    import shutil

    shutil.copytree(session, outside)
    os.symlink(outside, base / "escape")
    try:
        assert "escape" not in [s["name"] for s in list_sessions(base)]
        with pytest.raises(SessionError):
            SessionDataset.open(base, "escape")
        with pytest.raises(SessionError):
            delete_session(base, "escape")
        assert outside.exists()
    finally:
        (base / "escape").unlink()

    # A file inside a session replaced by a symlink to elsewhere is refused, not read.
    root = tmp_path / "planted"
    shutil.copytree(session, root)
    secret = tmp_path / "secret.parquet"
    shutil.copy(root / "data/chunk-000/file-000.parquet", secret)
    (root / "data/chunk-000/file-000.parquet").unlink()
    os.symlink(secret, root / "data/chunk-000/file-000.parquet")
    with pytest.raises(SessionError, match="outside"):
        SessionDataset(root).frame(0, 0)
    with pytest.raises(SessionError):
        inside(root, "../secret.parquet")

    # Exports can be confined to a folder.
    with pytest.raises(SessionError, match="exports must stay inside"):
        SessionDataset(session).export(0, tmp_path / "elsewhere.zip", allowed_root=base / "_exports")


def test_cli_list_and_export(session, tmp_path, capsys):
    from rt2_cot.cli import main

    assert main(["session", "list", str(session.parent), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["sessions"]
    item = next(s for s in listed if s["name"] == "session-a")
    assert item["episodes"] == 2 and item["frames"] == 19 and item["in_progress"] is False
    out = tmp_path / "e0.zip"
    assert main(["session", "export", str(session), "--episode", "0", "--out", str(out)]) == 0
    assert zipfile.is_zipfile(out)
    assert main(["session", "export", str(tmp_path / "nope"), "--out", str(tmp_path / "x.zip")]) == 2
    assert "not a session folder" in capsys.readouterr().err
