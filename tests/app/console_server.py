"""Launch `python -m app` as a real subprocess on a free port (sim camera + sim arm + oracle) for the
API and browser tests, and stop it by its own process id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ConsoleServer:
    def __init__(
        self, sessions: Path, *extra: str, auth: tuple[str, str] | None = None, model: str = "oracle"
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.auth = auth
        self.sessions = sessions
        args = [
            sys.executable,
            "-m",
            "app",
            "--camera",
            "sim",
            "--arm",
            "sim",
            "--model",
            model,
            "--port",
            str(self.port),
            "--sessions",
            str(sessions),
            *extra,
        ]
        if auth:
            args += ["--auth", f"{auth[0]}:{auth[1]}"]
        env = dict(
            os.environ,
            MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
            HF_HUB_OFFLINE="1",
            GRADIO_ANALYTICS_ENABLED="False",
            RT2_LOG_LEVEL="INFO",
        )
        env.pop("RT2_CONSOLE_AUTH", None)
        self.log = sessions.parent / f"console-{self.port}.log"
        self._log_fh = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log_fh, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> ConsoleServer:
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
        self._log_fh.close()


def wait_state(client, pred, timeout: float = 30.0, interval: float = 0.05) -> dict:
    t0 = time.monotonic()
    state: dict = {}
    while time.monotonic() - t0 < timeout:
        state = client.predict(api_name="/state")
        if pred(state):
            return state
        time.sleep(interval)
    raise AssertionError(f"condition not reached in {timeout}s; last state: {state}")
