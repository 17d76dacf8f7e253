"""Sessions tab (placeholder until the session reader lands)."""

from __future__ import annotations

from typing import Any

import gradio as gr


def build(runtime: Any) -> None:
    gr.Markdown("Sessions: coming up.")
