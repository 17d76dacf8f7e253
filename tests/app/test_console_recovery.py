"""Crash safety of recording through the console: SIGKILL the console mid-episode, start it again,
and the session is readable with at most the last second of steps missing."""

from __future__ import annotations

import time

import pytest
from console_server import ConsoleServer, wait_state

RATE_HZ = 10.0


@pytest.mark.slow  # two console launches and a recording: ~30 s
def test_sigkill_while_recording_loses_at_most_one_second(tmp_path):
    sessions_pkg = pytest.importorskip("rt2_cot.sessions")
    pytest.importorskip("robot_io.safety")
    sessions = tmp_path / "sessions"
    srv = ConsoleServer(sessions, "--rate-hz", str(RATE_HZ)).wait_ready()
    try:
        c = srv.client()
        assert c.predict(True, api_name="/set_record") is True
        instruction = c.predict("", api_name="/new_scene")
        # Single-stepping keeps one episode open however the policy behaves (the oracle would
        # finish a Run within ~1 s); each Step returns once its action is decided.
        for _ in range(40):
            c.predict(instruction, api_name="/step")
        s = wait_state(c, lambda s: s["status"] == "idle" and s["steps"] >= 40, timeout=30)
        session_name = s["session"]
        srv.proc.kill()  # SIGKILL: no chance to flush or close anything
        srv.proc.wait(timeout=10)
        steps_seen = s["steps"]
    finally:
        srv.stop()
    assert session_name

    # The next start recovers the partial episode before anyone can browse it.
    again = ConsoleServer(sessions).wait_ready()
    try:
        ds = sessions_pkg.SessionDataset.open(sessions, session_name)
        episodes = ds.episodes()
        assert len(episodes) == 1
        ep = episodes[0]
        assert ep["end_reason"] == "crash"
        # Steps the console reported before the kill; at most one second of them may be lost
        # (at the recorded rate of RATE_HZ steps per second).
        assert steps_seen - RATE_HZ * 1.0 <= ep["length"] <= steps_seen, (ep["length"], steps_seen)
        last = ds.frame(ep["episode_index"], ep["length"] - 1)
        assert last["image"] is not None and last["image"].shape[2] == 3
        report = sessions_pkg.check_session(sessions / session_name)
        assert report.ok, report
        # And the console lists and replays it.
        c = again.client()
        c.predict(None, api_name="/list_sessions")
        table, _ = c.predict(session_name, api_name="/session_episodes")
        assert len(table["data"] if isinstance(table, dict) else table) == 1
        c.predict(session_name, ep["episode_index"], api_name="/open_episode")  # sets the scrubber's range
        view, details = c.predict(
            session_name, ep["episode_index"], ep["length"] - 1, api_name="/replay_frame"
        )
        assert 'id="replay-img"' in view and "Plan:" in details
    finally:
        again.stop()
    time.sleep(0.1)
