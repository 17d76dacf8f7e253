"""Test helpers around the console subprocess (`app.launch`): the same launcher the browser
benchmark uses, plus polling of the console's /state API."""

from __future__ import annotations

import time

from app.launch import CHROMIUM, CHROMIUM_ARGS, REPO, ConsoleProcess, free_port

ConsoleServer = ConsoleProcess  # the name the tests use
__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "REPO", "ConsoleServer", "free_port", "wait_state"]


def wait_state(client, pred, timeout: float = 30.0, interval: float = 0.05) -> dict:
    t0 = time.monotonic()
    state: dict = {}
    while time.monotonic() - t0 < timeout:
        state = client.predict(api_name="/state")
        if pred(state):
            return state
        time.sleep(interval)
    raise AssertionError(f"condition not reached in {timeout}s; last state: {state}")
