"""The console's page: a sticky header with the status strip and the E-stop, then three tabs
(Live, Sessions, Reasoning tests). Layout and wiring only; behaviour lives in the handlers."""

from __future__ import annotations

import gradio as gr

from app import eval_tab, sessions_tab, views
from app.handlers import LiveHandlers
from app.runtime import ConsoleRuntime

CSS = """
#console-header { border-bottom: 1px solid var(--border-color-primary); padding: 6px 4px; align-items: center; }
/* The E-stop and its latch state are pinned to the viewport: visible on every tab, at any scroll. */
#estop-btn { position: fixed !important; top: 10px; right: 16px; width: 240px !important; z-index: 2000; }
#estop-state-box { position: fixed !important; top: 82px; right: 16px; width: 240px !important; z-index: 2000; }
#estop-spacer { min-height: 120px; }
#estop-btn { background: #c8102e !important; color: #fff !important; font-size: 1.5rem !important;
  font-weight: 800 !important; min-height: 64px; border-radius: 10px !important; letter-spacing: .05em;
  box-shadow: 0 0 0 3px #fff inset, 0 2px 6px rgba(0,0,0,.3); }
#estop-btn:focus-visible { outline: 4px solid #ffbf00; }
#estop-state { font-weight: 700; padding: 6px 10px; border-radius: 6px; text-align: center; }
#estop-state.latched { background: #c8102e; color: #fff; animation: blink 1s step-start infinite; }
#estop-state.armed { background: #e7f5e9; color: #1b5e20; }
@keyframes blink { 50% { background: #7a0a1c; } }
#status-strip { display: flex; flex-wrap: wrap; gap: 6px; font-size: .85rem; }
.pill { padding: 2px 8px; border-radius: 999px; background: var(--neutral-200); color: #111; }
.pill.ok { background: #d7f2dc; } .pill.bad { background: #ffd6d6; } .pill.warn { background: #fff0c2; }
.pill.rec { background: #c8102e; color: #fff; }
#live-view img { width: 100%; height: auto; image-rendering: auto; border-radius: 6px; background: #000; }
#live-view .live-caption { display: flex; justify-content: space-between; font-size: .75rem; opacity: .75; }
#live-view .no-frame { padding: 80px 10px; text-align: center; background: #222; color: #ddd; border-radius: 6px; }
#reasoning .plan-line { font-size: 1.25rem; min-height: 2.2em; padding: 6px 8px; border-radius: 6px;
  background: var(--background-fill-secondary); }
#reasoning .plan-label { font-weight: 700; color: #2563eb; }
#reasoning .caret { display: inline-block; width: .55em; height: 1.1em; background: #2563eb; vertical-align: text-bottom;
  animation: blink 1s step-start infinite; margin-left: 2px; }
#reasoning .tag { margin-left: 8px; font-size: .75rem; padding: 1px 6px; border-radius: 4px; background: #e0e7ff; }
#reasoning .tokens { display: grid; grid-template-columns: repeat(8, 1fr); gap: 4px; margin: 6px 0; }
#reasoning .tok { text-align: center; border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 2px; }
#reasoning .tok-empty { opacity: .45; }
#reasoning .tok-name { font-size: .7rem; opacity: .7; } #reasoning .tok-raw { font: 700 1.1rem ui-monospace, monospace; }
#reasoning .tok-dec { font-size: .75rem; min-height: 1em; }
#reasoning .parse-error { background: #ffd6d6; color: #7a0a1c; padding: 4px 8px; border-radius: 6px; }
#reasoning .raw { font-size: .75rem; opacity: .8; overflow-x: auto; white-space: nowrap; }
#reasoning .metrics { display: grid; grid-template-columns: repeat(6, 1fr); gap: 4px; margin-top: 6px; }
#reasoning .metric { background: var(--background-fill-secondary); border-radius: 6px; padding: 2px 6px; }
#reasoning .m-label { font-size: .7rem; opacity: .7; } #reasoning .m-value { font-weight: 700; }
#run-btn { min-height: 48px; } .kbd-hint { font-size: .75rem; opacity: .7; }
"""

# Keyboard-first operation. Esc is the e-stop from anywhere on the page (it is also what people
# reach for when something goes wrong); Alt+S / Alt+X are Step / Stop; Enter in the command box runs.
KEYBOARD_JS = """
() => {
  if (window.__rt2Keys) return;
  window.__rt2Keys = true;
  const click = (id) => { const b = document.getElementById(id); if (b) b.click(); };
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') { e.preventDefault(); click('estop-btn'); }
    else if (e.altKey && (e.key === 's' || e.key === 'S')) { e.preventDefault(); click('step-btn'); }
    else if (e.altKey && (e.key === 'x' || e.key === 'X')) { e.preventDefault(); click('stop-btn'); }
  }, true);
}
"""


def theme() -> gr.Theme:
    # System fonts only: the console must load with no internet (no Google Fonts request).
    return gr.themes.Base(
        primary_hue="blue",
        font=[gr.themes.Font(f) for f in ("system-ui", "-apple-system", "Segoe UI", "sans-serif")],
        font_mono=[gr.themes.Font(f) for f in ("ui-monospace", "SFMono-Regular", "monospace")],
    )


def build_ui(runtime: ConsoleRuntime, suites_dir: str | None = None) -> gr.Blocks:
    live = LiveHandlers(runtime)
    s0 = runtime.live()
    with gr.Blocks(title="RT-2 CoT console", fill_width=True) as demo:
        seen_fast = gr.State({})
        seen_slow = gr.State({})
        with gr.Row(elem_id="console-header", equal_height=True):
            with gr.Column(scale=5, min_width=400):
                gr.Markdown("### RT-2 CoT operator console", elem_id="title")
                status = gr.HTML(
                    views.status_html(
                        s0,
                        runtime.preview(),
                        None,
                        False,
                        runtime.model_name,
                        runtime.camera_name,
                        runtime.arm_name,
                    ),
                    elem_id="status",
                )
            with gr.Column(scale=2, min_width=220), gr.Row():
                take_btn = gr.Button("Take control", size="sm", elem_id="take-btn")
                release_btn = gr.Button("Release", size="sm", elem_id="release-btn")
                reset_btn = gr.Button("Reset E-stop", size="sm", elem_id="reset-estop-btn")
            with gr.Column(scale=2, min_width=260, elem_id="estop-spacer"):
                estop_btn = gr.Button("E-STOP", elem_id="estop-btn")
                estop_state = gr.HTML(views.estop_html(s0), elem_id="estop-state-box")

        with gr.Tabs():
            with gr.Tab("Live", id="live"):
                with gr.Row():
                    with gr.Column(scale=3, min_width=480):
                        preview = gr.HTML(views.preview_html(runtime.preview()), elem_id="live-box")
                    with gr.Column(scale=2, min_width=380):
                        command = gr.Textbox(
                            label="Command",
                            placeholder="e.g. pick up the object you could hammer a nail with",
                            value=s0.instruction,
                            elem_id="command-box",
                            autofocus=True,
                        )
                        with gr.Row():
                            run_btn = gr.Button("Run ▶", variant="primary", elem_id="run-btn", scale=2)
                            step_btn = gr.Button("Step", elem_id="step-btn")
                            stop_btn = gr.Button("Stop ■", variant="stop", elem_id="stop-btn")
                            scene_btn = gr.Button(
                                "New scene", elem_id="scene-btn", visible=runtime.sim is not None
                            )
                        gr.Markdown(
                            "Enter runs · Alt+S step · Alt+X stop · **Esc E-STOP**", elem_classes=["kbd-hint"]
                        )
                        reasoning = gr.HTML(views.reasoning_html(s0), elem_id="reasoning-box")
                        with gr.Row():
                            replan = gr.Slider(
                                0,
                                20,
                                value=runtime.replan_every,
                                step=1,
                                label="Re-plan every N steps (0 = once per command)",
                                elem_id="replan",
                                scale=3,
                            )
                            max_steps = gr.Number(
                                value=runtime.max_steps,
                                precision=0,
                                minimum=1,
                                label="Step limit",
                                elem_id="max-steps",
                                scale=1,
                                min_width=90,
                            )
                            record = gr.Checkbox(
                                value=False,
                                label="Record session",
                                elem_id="record-box",
                                scale=1,
                                min_width=90,
                            )
                history = gr.Dataframe(
                    value=views.history_frame([]),
                    label="Step history (newest first)",
                    interactive=False,
                    wrap=True,
                    max_height=320,
                    column_widths=["4%", "30%", "17%", "27%", "6%", "6%", "5%", "5%"],
                    max_chars=160,
                    elem_id="history",
                )
            with gr.Tab("Sessions", id="sessions") as sessions_page:
                sessions_tab.build(runtime, sessions_page)
            with gr.Tab("Reasoning tests", id="tests"):
                eval_tab.build(runtime, suites_dir)

        fast = gr.Timer(1.0 / runtime.preview_hz)
        slow = gr.Timer(0.5)
        # Polls are cheap reads of the runtime's snapshot: no queue limit, no spinner.
        fast.tick(
            live.tick_fast,
            [seen_fast],
            [seen_fast, preview, reasoning],
            show_progress="hidden",
            concurrency_limit=None,
            api_name="tick_fast",
            queue=False,
        )
        slow.tick(
            live.tick_slow,
            [seen_slow],
            # The E-stop is deliberately not in this list: every watcher can always press it.
            [
                seen_slow,
                status,
                estop_state,
                history,
                run_btn,
                step_btn,
                stop_btn,
                scene_btn,
                reset_btn,
                record,
                replan,
                max_steps,
            ],
            show_progress="hidden",
            concurrency_limit=None,
            api_name="tick_slow",
            queue=False,
        )

        # E-stop first and outside the queue: it must never wait behind anything.
        estop_btn.click(
            live.estop, None, [estop_state], queue=False, show_progress="hidden", api_name="estop"
        )
        reset_btn.click(live.reset_estop, None, [estop_state], show_progress="hidden", api_name="reset_estop")
        run_btn.click(live.run, [command, max_steps], [reasoning], show_progress="hidden", api_name="run")
        command.submit(live.run, [command, max_steps], [reasoning], show_progress="hidden", api_name=False)
        step_btn.click(live.step, [command], [reasoning], show_progress="hidden", api_name="step")
        stop_btn.click(live.stop, None, [reasoning], queue=False, show_progress="hidden", api_name="stop")
        scene_btn.click(live.new_scene, [command], [command], show_progress="hidden", api_name="new_scene")
        take_btn.click(live.take_control, None, [status], show_progress="hidden", api_name="take_control")
        release_btn.click(
            live.release_control, None, [status], show_progress="hidden", api_name="release_control"
        )
        replan.release(live.set_replan, [replan], [replan], show_progress="hidden", api_name="set_replan")
        record.input(live.set_record, [record], [record], show_progress="hidden", api_name="set_record")

        def state() -> dict:
            """The live state as JSON: status, plan, action tokens, decoded action, history, e-stop."""
            return views.state_dict(runtime.live(), runtime.preview(), runtime.lease.holder_name())

        gr.api(state, api_name="state", queue=False)
    return demo
