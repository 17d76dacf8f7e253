"""The console's HTTP API through gradio_client, against a real `python -m app` subprocess
(simulated camera + arm, scripted oracle policy): run, stream, stop, e-stop, control lease,
recording + replay, password and file access."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from console_server import ConsoleServer, wait_state

AUTH = ("operator", "s3cret-pw")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("robot_io.safety", reason="needs the safety shield (robot_io/safety.py)")
    sessions = tmp_path_factory.mktemp("console") / "sessions"
    srv = ConsoleServer(sessions, "--rate-hz", "10", auth=AUTH).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def _idle(client):
    wait_state(client, lambda s: s["status"] == "idle", timeout=30)
    if client.predict(api_name="/state")["estopped"]:
        client.predict(api_name="/reset_estop")


def _instruction(client) -> str:
    """A fresh simulator scene (the previous run may have solved the last one) and its command."""
    instruction = client.predict("", api_name="/new_scene")
    assert instruction, "New scene should fill the command box with the scene's instruction"
    return instruction


def test_run_streams_a_plan_and_a_valid_action(client):
    _idle(client)
    instruction = _instruction(client)
    client.predict(instruction, 40, api_name="/run")
    s = wait_state(client, lambda s: s["plan"] and all(t is not None for t in s["action_tokens"]))
    assert all(0 <= t <= 255 for t in s["action_tokens"])
    assert (
        s["action"] is not None
        and -0.05 <= min(s["action"]["delta_xyz_m"]) <= max(s["action"]["delta_xyz_m"]) <= 0.05
    )
    end = wait_state(client, lambda s: s["status"] == "idle", timeout=60)
    assert end["steps"] >= 1 and end["history"][0]["plan"]
    assert end["end_reason"] in ("success", "terminate", "step_limit")
    assert end["ttft_ms"] is None or end["ttft_ms"] >= 0
    assert end["loop_hz"] > 0


def test_stop_ends_the_run_within_one_step(client):
    _idle(client)
    client.predict(_instruction(client), 500, api_name="/run")
    s = wait_state(client, lambda s: s["steps"] >= 2)
    client.predict(api_name="/stop")
    end = wait_state(client, lambda s: s["status"] == "idle", timeout=10)
    if end["end_reason"] == "success":  # the oracle may finish on its own right then
        pytest.skip("episode succeeded before Stop arrived")
    assert end["end_reason"] == "stop"
    # Counted from when Stop reached the console: only the step in flight may still complete.
    assert end["stop_at_steps"] >= s["steps"]
    assert end["steps"] <= end["stop_at_steps"] + 1


def test_estop_latches_until_reset_and_blocks_runs(client):
    _idle(client)
    client.predict(_instruction(client), 500, api_name="/run")
    wait_state(client, lambda s: s["steps"] >= 1)
    html = client.predict(api_name="/estop")
    assert "E-STOP LATCHED" in html
    s = client.predict(api_name="/state")
    assert s["estopped"]
    # estop_ms is set only once the arm itself reported holding: click received -> arm holding.
    assert s["estop_ms"] is not None and s["estop_ms"] < 100  # one control step is 100 ms
    wait_state(client, lambda s: s["arm"]["holding"], timeout=2)  # the status strip's arm snapshot
    end = wait_state(client, lambda s: s["status"] == "idle", timeout=10)
    assert end["end_reason"] == "estop"
    steps = end["steps"]
    client.predict(_instruction(client), 5, api_name="/run")  # refused while latched
    time.sleep(0.5)
    s = client.predict(api_name="/state")
    assert s["estopped"] and s["status"] == "idle" and s["steps"] == steps
    assert "armed" in client.predict(api_name="/reset_estop")
    assert not client.predict(api_name="/state")["estopped"]


def test_a_second_browser_is_read_only_while_the_first_holds_control(server, client):
    _idle(client)
    client.predict(api_name="/take_control")
    instruction = _instruction(client)
    other = server.client()
    assert other.predict("", api_name="/new_scene") == ""  # refused: the scene is not theirs to change
    status = other.predict(api_name="/take_control")
    assert "read-only" in status and "has control" in status
    other.predict(instruction, 5, api_name="/run")
    time.sleep(0.5)
    assert other.predict(api_name="/state")["status"] == "idle"
    # The e-stop is never leased: a watcher can always stop the robot.
    assert "E-STOP LATCHED" in other.predict(api_name="/estop")
    client.predict(api_name="/reset_estop")
    client.predict(api_name="/release_control")
    assert "you have control" in other.predict(api_name="/take_control")
    other.predict(api_name="/release_control")


def test_recorded_episode_appears_and_replays(server, client):
    sessions_pkg = pytest.importorskip(
        "rt2_cot.sessions", reason="needs the session recorder (rt2_cot/sessions)"
    )
    if not hasattr(sessions_pkg, "SessionRecorder"):
        pytest.skip("rt2_cot.sessions has no SessionRecorder yet")
    _idle(client)
    assert client.predict(True, api_name="/set_record") is True
    client.predict(_instruction(client), 6, api_name="/run")
    wait_state(client, lambda s: s["status"] == "idle" and s["steps"] >= 1, timeout=60)
    client.predict(False, api_name="/set_record")
    sessions = client.predict(None, api_name="/list_sessions")
    name = sessions["value"] if isinstance(sessions, dict) else sessions
    assert name and name.startswith("session-")
    deadline = time.monotonic() + 20  # the recorder's writer thread finishes the episode
    while True:
        table, episode = client.predict(name, api_name="/session_episodes")
        rows = table["data"] if isinstance(table, dict) else table
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rows, "the recorded episode should be listed"
    ep = episode["value"] if isinstance(episode, dict) else episode
    view, details = client.predict(name, ep, 1, api_name="/replay_frame")
    assert 'id="replay-img"' in view and "data:image/jpeg;base64," in view
    assert "Plan:" in details and "Action tokens" in details


def test_password_is_required_and_files_outside_sessions_are_unreachable(server):
    r = httpx.get(server.url + "gradio_api/info", timeout=5)
    assert r.status_code == 401
    with httpx.Client(base_url=server.url, timeout=5) as http:
        login = http.post("login", data={"username": AUTH[0], "password": AUTH[1]})
        assert login.status_code == 200
        assert http.get("gradio_api/info").status_code == 200
        for target in ("/etc/passwd", str(server.sessions.parent / server.log.name), "pyproject.toml"):
            resp = http.get(f"gradio_api/file={target}")
            assert resp.status_code in (403, 404), (target, resp.status_code)
    with httpx.Client(base_url=server.url, timeout=5) as http:
        assert http.post("login", data={"username": AUTH[0], "password": "wrong"}).status_code in (400, 401)


def _suite_done(client, timeout=120.0) -> tuple:
    """Poll the tab's refresh like the browser does; returns (status, categories, results, pick)
    from the refresh that first showed the finished run (later refreshes send only changes)."""
    t0 = time.monotonic()
    status = ""
    while time.monotonic() - t0 < timeout:
        out = client.predict(api_name="/suite_tick")
        status = out[0] if isinstance(out[0], str) else status
        if status and ("finished" in status or "stopped" in status):
            return out
        time.sleep(0.5)
    raise AssertionError(f"suite did not finish: {status}")


def test_reasoning_suite_runs_grades_exports_and_compares(server, client):
    _idle(client)
    client.predict(api_name="/take_control")
    client.predict("prompts/suites/smoke.yaml", 1, 0, 80, api_name="/run_suite")
    status, cats, results, _ = _suite_done(client)
    assert "smoke finished: 5 episodes" in status and "success 100%" in status, status
    cat_rows = cats["data"] if isinstance(cats, dict) else cats
    assert {row[0] for row in cat_rows} >= {"seen_tasks", "symbol_understanding", "chain_of_thought"}
    rows = results["data"] if isinstance(results, dict) else results
    assert len(rows) == 5 and all(r[7] == "pass" for r in rows)
    # The operator can overrule the simulator with a note.
    assert "smoke" in client.predict(f"{rows[0][0]}#0", "fail", "gripper slipped", api_name="/grade")
    md = client.predict(api_name="/export_markdown")
    text = Path(md if isinstance(md, str) else md["path"]).read_text(encoding="utf-8")
    assert "smoke" in text and "gripper slipped" in text
    csv_path = client.predict(api_name="/export_csv")
    assert rows[0][0] in Path(csv_path if isinstance(csv_path, str) else csv_path["path"]).read_text()
    # A second run, then the two side by side.
    client.predict("prompts/suites/smoke.yaml", 1, 1, 80, api_name="/run_suite")
    _suite_done(client)
    a, _b = client.predict(api_name="/list_reports")
    names = [c[0] if isinstance(c, list | tuple) else c for c in a["choices"]] if isinstance(a, dict) else a
    assert len(names) >= 2, a
    comparison = client.predict(names[0], names[1], api_name="/compare_reports")
    assert "smoke" in comparison and "|" in comparison
    client.predict(api_name="/release_control")
