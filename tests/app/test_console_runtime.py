"""ConsoleRuntime with fake devices: the loop runs on its own thread, stops within one step, the
e-stop latches, one browser holds control, recording follows the toggle."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from console_fakes import FakeArm, FakeCamera, FakeLoop, FakePolicy, FakeShield

from app import views
from app.runtime import ConsoleError, ConsoleRuntime, ControlLease
from rt2_cot.loop_events import EpisodeEnded, EpisodeStarted, StepRecord


def wait_for(pred, timeout=10.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def rt(tmp_path):
    arm = FakeArm()
    cam = FakeCamera()
    cam.connect()
    recorded: list = []

    class Recorder:
        def __init__(self, root, fps):
            self.root, self.fps = root, fps

        def __call__(self, ev):
            recorded.append(ev)

        def close(self):
            pass

    runtime = ConsoleRuntime(
        cam,
        arm,
        FakeShield(arm),
        FakePolicy(token_delay_s=0.01),
        sessions_root=tmp_path,
        rate_hz=20.0,
        max_steps=50,
        preview_hz=20.0,
        loop_factory=FakeLoop,
        recorder_factory=Recorder,
    )
    runtime.recorded = recorded
    runtime.start()
    yield runtime
    runtime.shutdown()


def test_run_streams_plan_and_actions_into_the_snapshot(rt):
    rt.run("pick up the rock", "a", "alice", max_steps=3)
    assert wait_for(lambda: rt.live().status == "idle" and rt.live().end_reason == "step_limit")
    s = rt.live()
    assert s.plan == "pick up the rock"
    assert s.tokens == [0, 131, 125, 128, 128, 128, 128, 200]
    assert [r.step for r in s.history] == [0, 1, 2]
    assert s.run_to_first_plan_ms is not None and s.run_to_first_plan_ms < 2000
    html = views.reasoning_html(s)
    assert "pick up the rock" in html and "+0.1 cm" in html and "-0.1 cm" in html and "78% open" in html


def test_stop_ends_the_episode_within_one_step(rt):
    rt.run("pick up the rock", "a", "alice")
    assert wait_for(lambda: len(rt.live().history) >= 2)
    steps_at_stop = len(rt.live().history)
    rt.stop("a", "alice")
    assert wait_for(lambda: not rt.busy, timeout=5)
    s = rt.live()
    assert s.end_reason == "stop"
    assert len(s.history) <= steps_at_stop + 1


def test_estop_latches_holds_the_arm_and_blocks_runs_until_reset(rt):
    rt.run("pick up the rock", "a", "alice")
    assert wait_for(lambda: len(rt.live().history) >= 1)
    s = rt.estop()  # anyone may press it, no lease needed
    assert s.estopped and rt.arm.state().holding
    assert s.estop_ms is not None and s.estop_ms < 100
    assert wait_for(lambda: not rt.busy, timeout=5)
    assert rt.live().end_reason == "estop"
    with pytest.raises(ConsoleError, match="E-stop is latched"):
        rt.run("pick up the rock", "a", "alice")
    with pytest.raises(ConsoleError, match="read-only"):
        rt.reset_estop("b", "bob")  # only the holder resets
    rt.reset_estop("a", "alice")
    assert not rt.live().estopped
    assert "armed" in views.estop_html(rt.live())


def test_only_one_browser_holds_control(rt):
    rt.lease.acquire("a", "alice")
    with pytest.raises(ConsoleError, match="alice holds control"):
        rt.run("pick up the rock", "b", "bob")
    with pytest.raises(ConsoleError, match="read-only"):
        rt.stop("b", "bob")
    assert rt.lease.release("a")
    rt.run("pick up the rock", "b", "bob", max_steps=1)
    assert rt.lease.holds("b") and not rt.lease.holds("a")


def test_stale_lease_is_taken_over():
    now = [0.0]
    lease = ControlLease(stale_after_s=10, clock=lambda: now[0])
    assert lease.acquire("a", "alice")
    now[0] = 5
    assert not lease.acquire("b", "bob")
    lease.touch("a")
    now[0] = 14
    assert not lease.acquire("b", "bob")  # heartbeat at t=5 keeps it until 15
    now[0] = 16
    assert lease.holder_name() is None
    assert lease.acquire("b", "bob") and lease.holder_name() == "bob"


def test_step_continues_one_episode_and_plan_reuse_reaches_the_policy(rt):
    assert rt.set_replan_every(3) == 3 and rt.policy.replan_every == 3
    for i in range(4):
        rt.step("pick up the rock", "a", "alice")
        assert wait_for(lambda i=i: not rt.busy and len(rt.live().history) == i + 1)
    rows = rt.live().history
    assert [r.replanned for r in rows] == [True, False, False, True]
    assert len({rt.live().episode_id}) == 1


def test_recording_toggle_adds_the_recorder_to_the_next_episode(rt, tmp_path):
    rt.run("pick up the rock", "a", "alice", max_steps=1)
    assert wait_for(lambda: not rt.busy)
    assert rt.recorded == []
    name = rt.set_recording(True, "a", "alice")
    assert name.startswith("session-") and rt.live().recording
    rt.run("pick up the rock", "a", "alice", max_steps=2)
    assert wait_for(lambda: not rt.busy)
    kinds = [type(e) for e in rt.recorded]
    assert kinds[0] is EpisodeStarted and kinds[-1] is EpisodeEnded and kinds.count(StepRecord) == 2


def test_preview_runs_while_the_loop_runs(rt):
    assert wait_for(lambda: rt.preview().data_uri.startswith("data:image/jpeg"))
    rt.run("pick up the rock", "a", "alice", max_steps=20)
    first = rt.preview().frame_index
    time.sleep(1.0)
    p = rt.preview()
    assert p.frame_index - first >= 8  # >= ~10 fps of fresh frames
    assert p.camera_ok and p.arm is not None
    html = views.preview_html(p)
    assert f'data-frame="{p.frame_index}"' in html


def test_empty_command_is_refused_with_a_hint(rt):
    with pytest.raises(ConsoleError, match="type a command"):
        rt.run("   ", "a", "alice")


def test_record_toggle_and_run_racing_create_one_recorder(tmp_path):
    import threading

    made = []

    class SlowRecorder:
        def __init__(self, root, fps):
            time.sleep(0.2)  # a real recorder recovers journals and writes meta first
            made.append(root)

        def __call__(self, ev):
            pass

        def close(self):
            pass

    arm = FakeArm()
    rt = ConsoleRuntime(
        FakeCamera(),
        arm,
        FakeShield(arm),
        FakePolicy(token_delay_s=0.0),
        sessions_root=tmp_path,
        loop_factory=FakeLoop,
        recorder_factory=SlowRecorder,
        max_steps=1,
    )
    t = threading.Thread(target=rt.set_recording, args=(True, "a", "alice"))
    t.start()
    time.sleep(0.05)
    rt.run("pick up the rock", "a", "alice")
    t.join()
    assert wait_for(lambda: not rt.busy)
    assert len(made) == 1 and rt.live().error == ""
    rt.shutdown()


def test_manual_suite_waits_for_the_operator_and_takes_grades(tmp_path, repo_root):
    """On a real robot (no simulator) each case waits for 'Scene ready' and the operator grades."""
    from app.eval_tab import EvalController

    arm = FakeArm()
    policy = FakePolicy(token_delay_s=0.0, terminate_after=2)
    rt = ConsoleRuntime(
        FakeCamera(),
        arm,
        FakeShield(arm),
        policy,
        sessions_root=tmp_path,
        rate_hz=50.0,
        loop_factory=FakeLoop,
    )
    ctl = EvalController(rt, str(repo_root / "prompts" / "suites"))
    smoke = next(p for p in ctl.suites() if p.endswith("smoke.yaml"))
    ctl.start(smoke, 1, 0, 10, "a", "alice")
    for case in range(5):
        assert wait_for(lambda: "SET UP THE SCENE" in ctl.status, timeout=10), ctl.status
        assert len(ctl.report.results) == case  # nothing runs before the operator says so
        ctl.scene_ready()
        assert wait_for(lambda case=case: len(ctl.report.results) == case + 1 or "finished" in ctl.status)
    assert wait_for(lambda: "finished" in ctl.status and not rt.busy, timeout=10), ctl.status
    cats, results, keys = ctl.tables()
    assert set(cats["category"]) == {"seen_tasks", "symbol_understanding", "reasoning", "chain_of_thought"}
    assert set(cats["success"]) == {"–"}  # nothing graded yet: no success rate to show
    assert len(results) == 5 and set(results["verdict"]) == {"ungraded"}
    ctl.grade(keys[0], "pass", "clean grasp")
    ctl.grade(keys[1], "fail", "knocked the can over")
    _, results, _ = ctl.tables()
    assert list(results["verdict"][:2]) == ["pass", "fail"] and results["note"][1] == "knocked the can over"
    assert ctl.report_path is not None and "knocked the can over" in ctl.report_path.read_text()
    md = ctl.export("markdown")
    assert md.endswith(".md") and "clean grasp" in Path(md).read_text()
    with pytest.raises(ConsoleError):
        ctl.compare("../../etc/passwd.json", ctl.report_path.name)
    rt.shutdown()


def test_stop_while_a_manual_suite_waits_for_the_operator(tmp_path, repo_root):
    from app.eval_tab import EvalController

    arm = FakeArm()
    rt = ConsoleRuntime(
        FakeCamera(),
        arm,
        FakeShield(arm),
        FakePolicy(token_delay_s=0.0, terminate_after=2),
        sessions_root=tmp_path,
        loop_factory=FakeLoop,
    )
    ctl = EvalController(rt, str(repo_root / "prompts" / "suites"))
    ctl.start(next(p for p in ctl.suites() if p.endswith("smoke.yaml")), 1, 0, 10, "a", "alice")
    assert wait_for(lambda: "SET UP THE SCENE" in ctl.status, timeout=10)
    rt.stop("a", "alice")
    assert wait_for(lambda: not rt.busy, timeout=5)
    assert "stopped" in ctl.status and ctl.report.results == []
    rt.shutdown()
