"""Run the console as a real subprocess on a free port and wait until it serves; stop it by its own
process id. Used by the API and browser tests and by `benchmarks/console_browser.py`, so they
launch the console, and Chromium, exactly the same way.

    with ConsoleProcess(tmp / "sessions", model="oracle") as console:
        console.url          # http://127.0.0.1:<port>/
        console.client()     # gradio_client.Client on it
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
# Debian's chromium, never `playwright install`; flags for a headless machine without a GPU or network.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConsoleProcess:
    """`python -m app --camera sim --arm sim --model MODEL` plus `extra` arguments, logging to a file
    beside `sessions`."""

    def __init__(
        self, sessions: Path, *extra: str, auth: tuple[str, str] | None = None, model: str = "oracle"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.auth = auth
        self.sessions = Path(sessions)
        args = [sys.executable, "-m", "app", "--camera", "sim", "--arm", "sim", "--model", model]
        args += ["--port", str(self.port), "--sessions", str(sessions), *extra]
        if auth:
            args += ["--auth", f"{auth[0]}:{auth[1]}"]
        env = dict(
            os.environ,
            MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
            HF_HUB_OFFLINE="1",
            GRADIO_ANALYTICS_ENABLED="False",
            RT2_LOG_LEVEL="INFO",
        )
        env.pop("RT2_CONSOLE_AUTH", None)  # only what the caller asks for
        self.sessions.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.sessions.parent / f"console-{self.port}.log"
        self._log_fh = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log_fh, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> ConsoleProcess:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"console exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                r = httpx.get(self.url + "gradio_api/info", timeout=2, auth=self.auth)
                if r.status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"console not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def client(self):
        from gradio_client import Client

        return Client(self.url, auth=self.auth, verbose=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if not self._log_fh.closed:
            self._log_fh.close()

    def __enter__(self) -> ConsoleProcess:
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
