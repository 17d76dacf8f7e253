"""Sessions tab: list recorded sessions, replay an episode frame by frame with each step's plan and
action, grade it, export it, delete it.

Everything goes through `rt2_cot.sessions` (the LeRobot v3.0 reader/writer). Names arriving from
the browser are checked here too (plain folder names inside the sessions root, nothing else), so
a crafted request cannot reach another folder even if the reader's own checks were missing.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from app import rendering
from app.handlers import client_of
from app.runtime import ConsoleError, ConsoleRuntime

EPISODE_COLUMNS = ["episode", "instruction", "frames", "end", "success", "grade", "note"]


class SessionsBrowser:
    def __init__(self, runtime: ConsoleRuntime) -> None:
        self.rt = runtime
        self.root = Path(runtime.sessions_root).resolve()

    def session_path(self, name: str) -> Path:
        if not name or Path(name).name != name or name.startswith((".", "_")):
            raise ConsoleError(f"not a session name: {name!r}")
        path = (self.root / name).resolve()
        if path.parent != self.root or not path.is_dir():
            raise ConsoleError(f"session {name!r} not found under {self.root.name}/ (refresh the list)")
        return path

    def sessions(self) -> list[str]:
        from rt2_cot.sessions import list_sessions

        if not self.root.is_dir():
            return []
        names = []
        for item in list_sessions(self.root):
            if isinstance(item, dict):
                item = item.get("name") or item.get("path") or item.get("root")
            names.append(Path(str(item)).name)
        return sorted(names, reverse=True)

    def dataset(self, name: str) -> Any:
        from rt2_cot.sessions import SessionDataset

        self.session_path(name)
        return SessionDataset.open(self.root, name)  # the reader re-checks the name against the root

    def episodes(self, name: str) -> list[dict]:
        return list(self.dataset(name).episodes())

    def episode_table(self, name: str) -> pd.DataFrame:
        rows = []
        for ep in self.episodes(name):
            rows.append(
                [
                    ep.get("episode_index"),
                    ep.get("instruction", ""),
                    ep.get("length", ep.get("frames", "")),
                    ep.get("end_reason", ""),
                    ep.get("success", ""),
                    ep.get("operator_grade") or "",
                    ep.get("operator_note") or "",
                ]
            )
        return pd.DataFrame(rows, columns=EPISODE_COLUMNS)

    def frame_view(self, name: str, episode: int, index: int) -> tuple[str, str]:
        """The frame (colour | depth, as in the live view) plus that step's plan, tokens and action."""
        frame = self.dataset(name).frame(int(episode), int(index))
        image = _first(frame, "image", "color", "observation.images.color")
        img_html = '<div class="no-frame">no image</div>'
        if image is not None:
            arr = _rgb(image)
            depth_m = _first(frame, "depth_m")
            if depth_m is not None:
                d = np.asarray(depth_m, np.float32)
                near, far = rendering.depth_range(d)
                arr = rendering.side_by_side(arr, rendering.colorize_depth(d, near, far, arr.shape[:2]))
            uri = rendering.jpeg_data_uri(rendering.encode_jpeg(arr, 85))
            img_html = f'<img id="replay-img" src="{uri}" style="width:100%;height:auto;border-radius:6px" />'
        plan = _first(frame, "plan") or ""
        tokens = _first(frame, "action_tokens")
        action = _first(frame, "action")
        text = _first(frame, "generated_text") or ""
        details = [
            f"**Step {int(index)}** of episode {int(episode)}",
            f"**Plan:** {html.escape(str(plan))}",
            f"**Action tokens:** `{' '.join(str(int(t)) for t in tokens) if tokens is not None else '–'}`",
        ]
        if action is not None:
            a = [float(v) for v in np.asarray(action).ravel()]
            if len(a) >= 7:
                details.append(
                    f"**Decoded:** dxyz {a[0] * 100:+.1f} {a[1] * 100:+.1f} {a[2] * 100:+.1f} cm · "
                    f"drpy {np.degrees(a[3]):+.0f} {np.degrees(a[4]):+.0f} {np.degrees(a[5]):+.0f}° · "
                    f"grip {a[6] * 100:.0f}%"
                )
        for key, label in (("latency_ms", "latency"), ("ttft_ms", "TTFT")):
            v = _first(frame, key)
            if v is not None and not (isinstance(v, float) and np.isnan(v)):
                details.append(f"**{label}:** {float(v):.0f} ms")
        if text:
            details.append(f"**Raw:** `{html.escape(str(text))}`")
        return f'<div id="replay-view" data-step="{int(index)}">{img_html}</div>', "  \n".join(details)

    def frame_count(self, name: str, episode: int) -> int:
        for ep in self.episodes(name):
            if int(ep.get("episode_index", -1)) == int(episode):
                return int(ep.get("length", ep.get("frames", 0)) or 0)
        raise ConsoleError(f"episode {episode} is not in session {name}")

    def export(self, name: str, episode: int | None) -> str:
        """A zip of the session or one episode (a standalone LeRobot v3.0 dataset) under
        `<sessions>/_exports/`, the only place the browser downloads from."""
        out_dir = self.root / "_exports"
        out_dir.mkdir(parents=True, exist_ok=True)
        suffix = "all" if episode is None else f"episode-{int(episode)}"
        out = out_dir / f"{name}-{suffix}.zip"
        result = self.dataset(name).export(
            None if episode is None else int(episode), out, allowed_root=self.root
        )
        return str(result)

    def _recording_into(self, name: str) -> Any:
        rec = getattr(self.rt, "_recorder", None)
        if rec is not None and Path(getattr(rec, "root", "")).name == name:
            return rec
        return None

    def delete(self, name: str, episode: int) -> None:
        if self._recording_into(name) is not None and self.rt.busy:
            raise ConsoleError("this session is being recorded: stop the run before deleting its episodes")
        self.dataset(name).delete_episode(int(episode))

    def grade(self, name: str, episode: int, verdict: str, note: str) -> None:
        if verdict not in ("pass", "fail"):
            raise ConsoleError("choose pass or fail")
        recorder = self._recording_into(name)
        if recorder is not None:  # the recorder also grades the episode it is still writing
            recorder.set_grade(int(episode), verdict, note)
        else:
            self.dataset(name).set_grade(int(episode), verdict, note)


def _safe(fn: Any) -> list[str]:
    try:
        return fn()
    except Exception:  # no sessions folder yet, or an unreadable one: start with an empty list
        return []


def _rgb(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.transpose(arr, (1, 2, 0))
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def _first(d: Any, *keys: str) -> Any:
    for k in keys:
        if isinstance(d, dict) and k in d and d[k] is not None:
            return d[k]
        if not isinstance(d, dict) and hasattr(d, k):
            return getattr(d, k)
    return None


def build(runtime: ConsoleRuntime, tab: Any = None) -> SessionsBrowser:
    """The tab's components and events; `tab` (the gr.Tab) refreshes the list when selected."""
    sb = SessionsBrowser(runtime)
    gr.Markdown(
        f"Recorded sessions in `{sb.root.name}/` (LeRobot v3.0 datasets). Tick **Record session** on the Live tab to add episodes."
    )
    with gr.Row():
        # Custom values are allowed because every name is validated against the sessions root anyway.
        initial = _safe(sb.sessions)
        session = gr.Dropdown(
            initial,
            value=initial[0] if initial else None,
            label="Session",
            elem_id="session-pick",
            scale=3,
            allow_custom_value=True,
        )
        refresh = gr.Button("Refresh", elem_id="session-refresh")
    episodes = gr.Dataframe(
        pd.DataFrame(columns=EPISODE_COLUMNS),
        label="Episodes",
        interactive=False,
        elem_id="session-episodes",
        max_height=240,
    )
    with gr.Row():
        episode = gr.Dropdown([], label="Episode", elem_id="episode-pick", allow_custom_value=True)
        scrub = gr.Slider(0, 1, value=0, step=1, label="Frame", elem_id="frame-scrub", scale=3)
    with gr.Row():
        with gr.Column(scale=3):
            view = gr.HTML(
                '<div class="no-frame">choose a session and an episode</div>', elem_id="replay-box"
            )
        with gr.Column(scale=2):
            details = gr.Markdown(elem_id="replay-details")
            with gr.Row():
                verdict = gr.Radio(["pass", "fail"], label="Operator grade", elem_id="session-grade")
                note = gr.Textbox(label="Note", elem_id="session-note")
            grade_btn = gr.Button("Save grade", elem_id="session-grade-save")
            with gr.Row():
                export_btn = gr.Button("Export episode", elem_id="session-export")
                export_all = gr.Button("Export session", elem_id="session-export-all")
            export_file = gr.File(label="Export", interactive=False, elem_id="session-export-file", height=90)
            with gr.Row():
                confirm = gr.Checkbox(label="I am sure", elem_id="delete-confirm")
                delete_btn = gr.Button("Delete episode", variant="stop", elem_id="session-delete")

    def warn(exc: Exception) -> None:
        gr.Warning(str(exc))

    def do_refresh(current: str | None) -> Any:
        try:
            names = sb.sessions()
        except Exception as exc:
            warn(exc)
            names = []
        value = current if current in names else (names[0] if names else None)
        return gr.update(choices=names, value=value)

    def pick_session(name: str | None) -> tuple[Any, Any]:
        if not name:
            return pd.DataFrame(columns=EPISODE_COLUMNS), gr.update(choices=[], value=None)
        try:
            table = sb.episode_table(name)
        except Exception as exc:
            warn(exc)
            return pd.DataFrame(columns=EPISODE_COLUMNS), gr.update(choices=[], value=None)
        eps = [int(e) for e in table["episode"].tolist()]
        return table, gr.update(choices=eps, value=eps[-1] if eps else None)

    def pick_episode(name: str | None, ep: Any) -> tuple[Any, Any, Any]:
        if not name or ep in (None, ""):
            return gr.update(maximum=1, value=0), gr.skip(), gr.skip()
        try:
            n = sb.frame_count(name, int(ep))
            img, text = (
                sb.frame_view(name, int(ep), 0) if n else ('<div class="no-frame">empty episode</div>', "")
            )
        except Exception as exc:
            warn(exc)
            return gr.update(maximum=1, value=0), gr.skip(), gr.skip()
        return gr.update(maximum=max(n - 1, 1), value=0), img, text

    def show_frame(name: str | None, ep: Any, i: float) -> tuple[Any, Any]:
        if not name or ep in (None, ""):
            return gr.skip(), gr.skip()
        try:
            return sb.frame_view(name, int(ep), int(i))
        except Exception as exc:
            warn(exc)
            return gr.skip(), gr.skip()

    def do_export(name: str | None, ep: Any, whole: bool) -> Any:
        try:
            if not name:
                raise ConsoleError("choose a session")
            if not whole and ep in (None, ""):
                raise ConsoleError("choose an episode (or Export session)")
            return sb.export(name, None if whole else int(ep))
        except Exception as exc:
            warn(exc)
            return None

    def do_delete(name: str | None, ep: Any, sure: bool, request: gr.Request) -> tuple[Any, Any, Any]:
        try:
            if not sure:
                raise ConsoleError("tick 'I am sure' to delete")
            if not name or ep in (None, ""):
                raise ConsoleError("choose a session and an episode")
            cid, who = client_of(request)
            runtime.require_control(cid, who)
            sb.delete(name, int(ep))
            gr.Info(f"deleted episode {ep} of {name}")
        except Exception as exc:
            warn(exc)
        table, eps = pick_session(name)
        return table, eps, False

    def do_grade(name: str | None, ep: Any, v: str, n: str) -> Any:
        try:
            if not name or ep in (None, ""):
                raise ConsoleError("choose a session and an episode")
            sb.grade(name, int(ep), v or "", n or "")
        except Exception as exc:
            warn(exc)
            return gr.skip()
        return sb.episode_table(name)

    refresh.click(do_refresh, [session], [session], api_name="list_sessions")
    if tab is not None:
        tab.select(do_refresh, [session], [session], api_name=False, show_progress="hidden")
    session.change(pick_session, [session], [episodes, episode], api_name="session_episodes")
    episode.change(pick_episode, [session, episode], [scrub, view, details], api_name="open_episode")
    scrub.change(
        show_frame,
        [session, episode, scrub],
        [view, details],
        show_progress="hidden",
        trigger_mode="always_last",
        api_name="replay_frame",
    )
    export_btn.click(
        lambda s, e: do_export(s, e, False), [session, episode], [export_file], api_name="export_episode"
    )
    export_all.click(
        lambda s, e: do_export(s, e, True), [session, episode], [export_file], api_name="export_session"
    )
    delete_btn.click(
        do_delete, [session, episode, confirm], [episodes, episode, confirm], api_name="delete_episode"
    )
    grade_btn.click(do_grade, [session, episode, verdict, note], [episodes], api_name="grade_episode")
    return sb
