"""Reasoning tests tab (placeholder until the evaluation module lands)."""

from __future__ import annotations

from typing import Any

import gradio as gr


def build(runtime: Any, suites_dir: str | None = None) -> None:
    gr.Markdown("Reasoning tests: coming up.")
