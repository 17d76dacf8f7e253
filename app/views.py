"""Turn runtime snapshots into what the browser shows (HTML fragments and tables).

Pure functions of `LiveState` / `PreviewState`, so every browser renders the same thing and the
tests can check the text an operator reads without a browser.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from app.runtime import LiveState, PreviewState, StepRow
from rt2_cot.action_codec import ZERO_BIN, ActionCodec

TOKEN_NAMES = ("terminate", "dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
HISTORY_COLUMNS = [
    "step",
    "plan",
    "action tokens",
    "decoded (sent)",
    "latency ms",
    "TTFT ms",
    "re-planned",
    "shield",
]


def decode_token(index: int, value: int | None, codec: ActionCodec = ActionCodec()) -> str:
    """One token in operator units: cm for translation, degrees for rotation, % open for the gripper."""
    if value is None:
        return ""
    if index == 0:
        return "STOP" if value else "go"
    if index == 7:
        return f"{value / 255 * 100:.0f}% open"
    tokens = [0] + [ZERO_BIN] * 6 + [255]
    tokens[index] = value
    cmd = codec.decode(tokens)
    if index <= 3:
        return f"{cmd.delta_xyz_m[index - 1] * 100:+.1f} cm"
    return f"{np.degrees(cmd.delta_rpy_rad[index - 4]):+.1f}°"


def preview_html(p: PreviewState) -> str:
    if not p.data_uri:
        body = f'<div class="no-frame">{html.escape(p.camera_message)}</div>'
    else:
        body = (
            f'<img id="live-img" src="{p.data_uri}" alt="colour and depth" '
            f'width="{p.width}" height="{p.height}" />'
        )
    return (
        f'<div id="live-view" data-frame="{p.frame_index}" data-fps="{p.fps:.1f}">{body}'
        f'<div class="live-caption"><span>colour + action</span><span>depth (near = warm)</span>'
        f'<span class="fps">{p.fps:.1f} fps</span></div></div>'
    )


def _metric(label: str, value: str, elem_id: str) -> str:
    return f'<div class="metric"><div class="m-label">{label}</div><div class="m-value" id="{elem_id}">{value}</div></div>'


def reasoning_html(s: LiveState) -> str:
    """Plan as it streams, the eight action tokens raw + decoded, and the live numbers."""
    plan = html.escape(s.plan)
    streaming = s.status == "running" and any(t is None for t in s.tokens)
    caret = '<span class="caret"></span>' if streaming else ""
    reused = '<span class="tag">reused plan</span>' if s.plan_reused else ""
    cells = "".join(
        f'<div class="tok {"tok-empty" if v is None else ""}"><div class="tok-name">{name}</div>'
        f'<div class="tok-raw">{"·" if v is None else v}</div><div class="tok-dec">{decode_token(i, v)}</div></div>'
        for i, (name, v) in enumerate(zip(TOKEN_NAMES, s.tokens, strict=True))
    )
    error = f'<div class="parse-error" id="parse-error">{html.escape(s.error)}</div>' if s.error else ""
    status = "E-STOP" if s.estopped else s.status
    end = f"{s.end_reason} {s.end_message}".strip() if s.status == "idle" and s.end_reason else ""
    if len(end) > 48:  # the full message is in the status strip / logs; keep the grid readable
        end = end[:45] + "..."
    fmt = lambda v, unit: "–" if v is None else f"{v:.0f} {unit}"  # noqa: E731
    metrics = "".join(
        [
            _metric("status", html.escape(status), "m-status"),
            _metric("step", "–" if s.step < 0 else str(s.step), "m-step"),
            _metric("loop rate", f"{s.loop_hz:.1f} Hz" if s.loop_hz else "–", "m-hz"),
            _metric("TTFT", fmt(s.ttft_ms, "ms"), "m-ttft"),
            _metric("step latency", fmt(s.latency_ms, "ms"), "m-latency"),
            _metric("last end", html.escape(end) or "–", "m-end"),
        ]
    )
    raw = html.escape(s.raw_text[-400:])
    return (
        f'<div id="reasoning" data-version="{s.version}" data-status="{status}" '
        f'data-episode="{html.escape(s.episode_id)}" data-step="{s.step}">'
        f'<div class="plan-line"><span class="plan-label">Plan:</span> <span id="plan-text">{plan}</span>{caret}{reused}</div>'
        f'<div class="tokens" id="action-tokens">{cells}</div>{error}'
        f'<div class="raw"><span class="raw-label">raw</span> <code id="raw-text">{raw}</code></div>'
        f'<div class="metrics">{metrics}</div></div>'
    )


def status_html(
    s: LiveState, p: PreviewState, holder: str | None, you_hold: bool, model: str, camera: str, arm: str
) -> str:
    """The always-visible status strip: devices, control lease, e-stop latch."""
    cam_cls = "ok" if p.camera_ok else "bad"
    arm_ok = p.arm is not None and p.arm.connected
    arm_cls = "ok" if arm_ok else "bad"
    arm_txt = p.arm_message or "no state"
    if p.arm is not None:
        x, y, z = (float(v) for v in p.arm.ee_xyz_m)
        arm_txt += f" · ee {x:+.3f} {y:+.3f} {z:+.3f} m · grip {p.arm.gripper * 100:.0f}%"
        if p.arm.holding:
            arm_txt += " · holding"
    if you_hold:
        control = '<span class="pill ok" id="control-state">you have control</span>'
    elif holder:
        control = (
            f'<span class="pill warn" id="control-state">read-only · {html.escape(holder)} has control</span>'
        )
    else:
        control = (
            '<span class="pill" id="control-state">nobody has control · press Take control or Run</span>'
        )
    rec = '<span class="pill rec">● REC ' + html.escape(s.session_name) + "</span>" if s.recording else ""
    return (
        f'<div id="status-strip">'
        f'<span class="pill {cam_cls}" id="camera-state">camera {html.escape(camera)}: {html.escape(p.camera_message)} · {p.fps:.0f} fps</span>'
        f'<span class="pill {arm_cls}" id="arm-state">arm {html.escape(arm)}: {html.escape(arm_txt)}</span>'
        f'<span class="pill" title="{html.escape(model)}">model {html.escape(_short(model))}</span>{control}{rec}</div>'
    )


def _short(spec: str) -> str:
    """A model folder shown by its last path component; URLs and names as they are."""
    if "://" in spec or "/" not in spec:
        return spec
    return spec.rstrip("/").rsplit("/", 1)[-1]


def estop_html(s: LiveState) -> str:
    if s.estopped:
        extra = f" ({s.estop_ms:.0f} ms to hold)" if s.estop_ms is not None else ""
        return (
            '<div id="estop-state" class="latched" data-latched="1">E-STOP LATCHED · arm holding'
            f"{extra}. Check the robot, then Reset E-stop.</div>"
        )
    return '<div id="estop-state" class="armed" data-latched="0">E-stop armed · Esc</div>'


def history_frame(rows: list[StepRow], limit: int = 200) -> pd.DataFrame:
    """Newest first: the operator looks at the last steps, not the first."""
    data = [
        [
            r.step,
            r.plan,
            r.tokens,
            r.decoded,
            r.latency_ms,
            r.ttft_ms,
            "yes" if r.replanned else "reused",
            r.notes,
        ]
        for r in reversed(rows[-limit:])
    ]
    return pd.DataFrame(data, columns=HISTORY_COLUMNS)


def state_dict(s: LiveState, p: PreviewState, holder: str | None) -> dict:
    """The live state as JSON (the console's `/state` API: scripts, tests, the browser benchmark)."""
    action = None
    if s.action is not None:
        a = s.action
        action = {
            "terminate": bool(a.terminate),
            "delta_xyz_m": [float(v) for v in a.delta_xyz_m],
            "delta_rpy_rad": [float(v) for v in a.delta_rpy_rad],
            "gripper": float(a.gripper),
        }
    arm = None
    if p.arm is not None:
        arm = {
            "ee_xyz_m": [float(v) for v in p.arm.ee_xyz_m],
            "gripper": float(p.arm.gripper),
            "holding": bool(p.arm.holding),
            "connected": bool(p.arm.connected),
        }
    return {
        "status": s.status,
        "estopped": s.estopped,
        "episode_id": s.episode_id,
        "instruction": s.instruction,
        "step": s.step,
        "plan": s.plan,
        "plan_reused": s.plan_reused,
        "action_tokens": list(s.tokens),
        "action": action,
        "error": s.error,
        "end_reason": s.end_reason,
        "loop_hz": s.loop_hz,
        "ttft_ms": s.ttft_ms,
        "latency_ms": s.latency_ms,
        "run_to_first_plan_ms": s.run_to_first_plan_ms,
        "first_step_ttft_ms": s.first_step_ttft_ms,
        "estop_ms": s.estop_ms,
        "estop_at": s.estop_at,
        "stop_at_steps": s.stop_at_steps,
        "recording": s.recording,
        "session": s.session_name,
        "steps": len(s.history),
        "history": [
            {
                "step": r.step,
                "plan": r.plan,
                "tokens": r.tokens,
                "decoded": r.decoded,
                "latency_ms": r.latency_ms,
            }
            for r in s.history[-20:]
        ],
        "control_holder": holder,
        "preview": {"frame_index": p.frame_index, "fps": round(p.fps, 2), "camera_ok": p.camera_ok},
        "arm": arm,
    }
