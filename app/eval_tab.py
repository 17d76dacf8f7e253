"""Reasoning tests tab: pick a suite, run it through the console's own rig, grade, export, compare.

In the simulator each episode is graded by the task's predicate and the live view shows the run;
on a real robot the run pauses before each case so the operator can set the scene up, and every
result is graded by the operator (pass/fail + note). Reports are saved as JSON under
`<sessions>/_reports/`, the only folder besides the sessions that the browser can download from.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from loguru import logger

from app.handlers import client_of
from app.runtime import ConsoleError, ConsoleRuntime

RESULT_COLUMNS = [
    "case",
    "episode",
    "category",
    "split",
    "instruction",
    "plan",
    "plan ok",
    "verdict",
    "steps",
    "end",
    "note",
]
CATEGORY_COLUMNS = [
    "category",
    "episodes",
    "graded",
    "success",
    "plan accuracy",
    "valid actions",
    "mean steps",
]


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


class EvalController:
    """One suite run at a time, on the runtime's loop thread (so Run/Step/E-stop rules apply)."""

    def __init__(self, runtime: ConsoleRuntime, suites_dir: str | None) -> None:
        self.rt = runtime
        self.suites_dir = suites_dir
        self.reports_dir = runtime.sessions_root / "_reports"
        self._lock = threading.Lock()
        self.report: Any = None
        self.report_path: Path | None = None
        self.status = "No suite run yet."
        self.version = 0
        self._scene_ready = threading.Event()
        self._cancel = threading.Event()
        self._run: Any = None

    # -- suites and reports on disk ------------------------------------------------------------
    def suites(self) -> list[str]:
        from rt2_cot.evaluation import list_suites

        try:
            return [str(p) for p in list_suites(self.suites_dir)]
        except Exception as exc:
            logger.warning("cannot list suites: {}", exc)
            return []

    def saved_reports(self) -> list[str]:
        if not self.reports_dir.is_dir():
            return []
        return [p.name for p in sorted(self.reports_dir.glob("*.json"), reverse=True)]

    def _report_file(self, name: str) -> Path:
        # Names come from a dropdown but still from the browser: only plain file names here.
        if not name or Path(name).name != name or not name.endswith(".json"):
            raise ConsoleError(f"not a saved report: {name!r}")
        path = self.reports_dir / name
        if not path.is_file():
            raise ConsoleError(f"report {name} no longer exists (refresh the list)")
        return path

    # -- running --------------------------------------------------------------------------------
    def _set(self, status: str) -> None:
        with self._lock:
            self.status = status
            self.version += 1

    def start(
        self, suite_path: str, episodes: int, seed: int, max_steps: int, client_id: str, name: str
    ) -> None:
        from rt2_cot.evaluation import SuiteRun, load_suite

        if suite_path not in self.suites():
            raise ConsoleError("choose a suite from the list")
        suite = load_suite(suite_path)
        rt = self.rt
        manual = rt.sim is None
        total = len(suite.cases) * max(1, episodes)

        def on_result(result: Any) -> None:
            with self._lock:
                self.report.results.append(result)
                done = len(self.report.results)
                self.status = f"running {suite.name}: {done}/{total} episodes done"
                self.version += 1

        def on_case_start(case: Any, episode: int) -> None:
            self._set(f"running {suite.name}: case {case.id} (episode {episode + 1})  {case.instruction}")
            if manual:  # a real robot: wait until the operator has set the scene up
                self._scene_ready.clear()
                self._set(
                    f"SET UP THE SCENE for case {case.id}: '{case.instruction}' "
                    f"(success: {case.success.describe()}), then press Scene ready."
                )
                while not self._scene_ready.wait(0.2):
                    if self._cancel.is_set():  # Stop pressed while waiting for the operator
                        return

        def policy_factory(_sim: Any) -> Any:
            return rt.policy

        run = SuiteRun(
            suite,
            policy_factory,
            episodes_per_case=max(1, int(episodes)),
            seed=int(seed),
            on_result=None,
            max_steps=max(1, int(max_steps)),
            rig=(rt.sim, rt.arm, rt.camera),
            shield=rt.shield,
            manual=manual,
            subscribers=[rt._on_loop_event],
            on_case_start=on_case_start,
            rate_hz=rt.rate_hz if manual else None,
            model=rt.model_name,
        )
        # Results stream into a live report so the tables fill while the suite runs.
        from rt2_cot.evaluation import EvalReport

        self.report = EvalReport(
            suite=suite.name,
            policy=getattr(rt.policy, "name", "policy"),
            model=rt.model_name,
            mode="manual" if manual else "sim",
            seed=int(seed),
            episodes_per_case=max(1, int(episodes)),
            suite_path=suite.path,
        )
        run.on_result = on_result
        self._run = run

        self._cancel.clear()
        controller = self

        class _Stopper:
            """What the console's Stop/E-stop stop: the suite run, and any wait for the operator."""

            def stop(self) -> None:
                controller._cancel.set()
                run.stop()

        def job() -> None:
            rt.attach_stoppable(_Stopper())
            t0 = time.monotonic()
            final = run.run()
            final.results = list(self.report.results)
            final.duration_s = time.monotonic() - t0
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.report_path = final.save(self.reports_dir / f"{stamp}-{suite.name}.json")
            with self._lock:
                self.report = final
                s = final.summary()
                verdict = "stopped" if final.stopped else "finished"
                self.status = (
                    f"{suite.name} {verdict}: {s['episodes']} episodes, success {_pct(s['success_rate'])}, "
                    f"plan accuracy {_pct(s['plan_accuracy'])}; saved {self.report_path.name}"
                )
                self.version += 1

        self._set(f"starting {suite.name} ({total} episodes, {'operator-graded' if manual else 'simulator'})")
        rt.start_job(job, client_id, name)

    def scene_ready(self) -> None:
        self._scene_ready.set()

    # -- grading and exports -------------------------------------------------------------------
    def grade(self, key: str, verdict: str, note: str) -> None:
        if self.report is None:
            raise ConsoleError("run a suite first")
        case_id, _, episode = key.rpartition("#")
        if not case_id or verdict not in ("pass", "fail"):
            raise ConsoleError("choose a result and pass or fail")
        with self._lock:
            self.report.set_grade(case_id, int(episode), verdict == "pass", note or "")
            self.version += 1
        if self.report_path is not None:
            self.report.save(self.report_path)

    def export(self, kind: str) -> str:
        if self.report is None:
            raise ConsoleError("run a suite first")
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        base = self.report_path.stem if self.report_path else time.strftime("%Y%m%d-%H%M%S")
        path = self.reports_dir / f"{base}.{'md' if kind == 'markdown' else 'csv'}"
        path.write_text(
            self.report.to_markdown() if kind == "markdown" else self.report.to_csv(), encoding="utf-8"
        )
        return str(path)

    def compare(self, a: str, b: str) -> str:
        from rt2_cot.evaluation import compare, load_report

        return compare(load_report(self._report_file(a)), load_report(self._report_file(b)))

    # -- tables ---------------------------------------------------------------------------------
    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
        with self._lock:
            report = self.report
            results = list(report.results) if report is not None else []
            by_cat = report.by_category() if report is not None else {}
        rows = [
            [
                r.case_id,
                r.episode,
                r.category,
                r.split,
                r.instruction,
                r.plan,
                "yes" if r.plan_correct else "no",
                "ungraded" if r.passed is None else ("pass" if r.passed else "fail"),
                r.steps,
                r.end_reason,
                r.note,
            ]
            for r in results
        ]
        cats = [
            [
                c,
                v["episodes"],
                v["graded"],
                _pct(v["success_rate"]),
                _pct(v["plan_accuracy"]),
                _pct(v["valid_action_rate"]),
                v["mean_steps"],
            ]
            for c, v in by_cat.items()
        ]
        keys = [f"{r.case_id}#{r.episode}" for r in results]
        return pd.DataFrame(cats, columns=CATEGORY_COLUMNS), pd.DataFrame(rows, columns=RESULT_COLUMNS), keys


def build(runtime: ConsoleRuntime, suites_dir: str | None = None) -> EvalController:
    ctl = EvalController(runtime, suites_dir)
    suites = ctl.suites()
    mode = (
        "Simulator: every case is graded by its success predicate; the Live tab shows the run."
        if runtime.sim is not None
        else "Real robot: the run pauses before each case so you can set the scene up; grade every result."
    )
    gr.Markdown(mode)
    with gr.Row():
        suite = gr.Dropdown(
            [(Path(p).stem, p) for p in suites],
            value=next((p for p in suites if Path(p).stem == "smoke"), suites[0] if suites else None),
            label="Suite",
            elem_id="suite-pick",
            scale=3,
        )
        episodes = gr.Number(1, precision=0, minimum=1, label="Episodes per case", elem_id="suite-episodes")
        seed = gr.Number(0, precision=0, label="Seed", elem_id="suite-seed")
        max_steps = gr.Number(80, precision=0, minimum=1, label="Step limit", elem_id="suite-max-steps")
    with gr.Row():
        run_btn = gr.Button("Run suite", variant="primary", elem_id="suite-run")
        stop_btn = gr.Button("Stop suite", variant="stop", elem_id="suite-stop")
        ready_btn = gr.Button("Scene ready", elem_id="suite-ready", visible=runtime.sim is None)
    status = gr.Markdown(ctl.status, elem_id="suite-status")
    cats = gr.Dataframe(
        pd.DataFrame(columns=CATEGORY_COLUMNS),
        label="Per category",
        interactive=False,
        elem_id="suite-categories",
    )
    results = gr.Dataframe(
        pd.DataFrame(columns=RESULT_COLUMNS),
        label="Results",
        interactive=False,
        wrap=True,
        max_height=360,
        elem_id="suite-results",
    )
    with gr.Accordion("Operator grade", open=runtime.sim is None), gr.Row():
        pick = gr.Dropdown([], label="Result (case#episode)", elem_id="grade-pick")
        verdict = gr.Radio(["pass", "fail"], label="Verdict", elem_id="grade-verdict")
        note = gr.Textbox(label="Note", elem_id="grade-note", scale=2)
        grade_btn = gr.Button("Save grade", elem_id="grade-save")
    with gr.Row():
        md_btn = gr.Button("Export Markdown", elem_id="export-md")
        csv_btn = gr.Button("Export CSV", elem_id="export-csv")
        export_file = gr.File(label="Report file", interactive=False, elem_id="export-file", height=90)
    with gr.Accordion("Compare two runs", open=False):
        with gr.Row():
            a = gr.Dropdown(ctl.saved_reports(), label="Run A", elem_id="cmp-a")
            b = gr.Dropdown(ctl.saved_reports(), label="Run B", elem_id="cmp-b")
            refresh = gr.Button("Refresh list", elem_id="cmp-refresh")
            cmp_btn = gr.Button("Compare", elem_id="cmp-run")
        comparison = gr.Markdown(elem_id="cmp-out")

    def refresh_tables(seen: int | None) -> tuple[Any, ...]:
        if seen == ctl.version:
            return seen, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        c, r, keys = ctl.tables()
        return ctl.version, ctl.status, c, r, gr.update(choices=keys)

    def start(path: str, n: float, s: float, m: float, request: gr.Request) -> str:
        cid, name = client_of(request)
        try:
            ctl.start(path, int(n or 1), int(s or 0), int(m or 80), cid, name)
        except Exception as exc:  # a malformed suite is a ConfigError: show it as one line
            gr.Warning(str(exc))
        return ctl.status

    def stop(request: gr.Request) -> str:
        cid, name = client_of(request)
        try:
            runtime.stop(cid, name)
        except ConsoleError as exc:
            gr.Warning(str(exc))
        return ctl.status

    def save_grade(key: str, v: str, n: str) -> str:
        try:
            ctl.grade(key or "", v or "", n or "")
        except Exception as exc:
            gr.Warning(str(exc))
        return ctl.status

    def export(kind: str) -> Any:
        try:
            return ctl.export(kind)
        except ConsoleError as exc:
            gr.Warning(str(exc))
            return None

    def do_compare(x: str, y: str) -> str:
        try:
            return ctl.compare(x, y)
        except Exception as exc:
            gr.Warning(str(exc))
            return ""

    def refresh_reports() -> tuple[Any, Any]:
        names = ctl.saved_reports()
        return gr.update(choices=names), gr.update(choices=names)

    seen = gr.State(None)
    timer = gr.Timer(1.0)
    timer.tick(
        refresh_tables,
        [seen],
        [seen, status, cats, results, pick],
        show_progress="hidden",
        concurrency_limit=None,
        queue=False,
        api_name="suite_tick",
    )
    run_btn.click(start, [suite, episodes, seed, max_steps], [status], api_name="run_suite")
    stop_btn.click(stop, None, [status], queue=False, api_name="stop_suite")
    ready_btn.click(ctl.scene_ready, None, None, api_name="scene_ready")
    grade_btn.click(save_grade, [pick, verdict, note], [status], api_name="grade")
    md_btn.click(lambda: export("markdown"), None, [export_file], api_name="export_markdown")
    csv_btn.click(lambda: export("csv"), None, [export_file], api_name="export_csv")
    refresh.click(refresh_reports, None, [a, b], api_name="list_reports")
    cmp_btn.click(do_compare, [a, b], [comparison], api_name="compare_reports")
    return ctl
