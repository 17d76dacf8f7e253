"""`python -m app` refuses to expose the console off localhost without a password."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import pytest

from app.options import AUTH_ENV, add_arguments, is_loopback, options_from_args, resolve_auth
from rt2_cot.errors import ConfigError


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_defaults_bind_localhost_without_auth():
    o = options_from_args(_args(), environ={})
    assert o.host == "127.0.0.1" and o.port == 7860 and o.auth is None
    assert (o.camera, o.arm, o.model) == ("sim", "sim", "builtin")
    assert o.hold_reference and not options_from_args(_args("--no-hold-reference"), environ={}).hold_reference


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "robot-lab.local"])
def test_other_hosts_require_auth(host):
    with pytest.raises(ConfigError, match="--auth"):
        resolve_auth(host, None, environ={})
    assert resolve_auth(host, "op:secret", environ={}) == ("op", "secret")
    assert resolve_auth(host, None, environ={AUTH_ENV: "ops:pw"}) == ("ops", "pw")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts(host):
    assert is_loopback(host)
    assert resolve_auth(host, None, environ={}) is None


@pytest.mark.parametrize("bad", ["nopassword", ":pw", "user:"])
def test_malformed_auth_is_rejected(bad):
    with pytest.raises(ConfigError, match="USER:PASS"):
        resolve_auth("0.0.0.0", bad, environ={})


def test_cli_refuses_public_bind_without_auth_in_one_line(repo_root):
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "app", "--host", "0.0.0.0", "--port", "7999"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: refusing to bind 0.0.0.0") and "--auth" in lines[0]
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30
