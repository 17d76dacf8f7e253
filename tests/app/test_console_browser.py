"""End to end in real headless Chromium (Playwright + Debian's chromium): the live view updates,
a typed command streams its plan token by token, the E-stop latches and resets. A tiny random
PaliGemma (built offline) is the model, so the plan genuinely streams from a transformers backend;
its words are nonsense, its grammar is enforced. Saves artifacts/console_e2e.png."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest
from console_server import CHROMIUM, CHROMIUM_ARGS, REPO, ConsoleServer

# Every distinct plan text the page shows, with the time it appeared (installed before Run).
WATCH_PLAN_JS = """
() => {
  window.__plans = [];
  const seen = () => {
    const el = document.querySelector('#plan-text');
    const t = el ? el.textContent : '';
    const last = window.__plans.length ? window.__plans[window.__plans.length - 1].text : null;
    if (t !== last) window.__plans.push({text: t, t: performance.now()});
  };
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, characterData: true});
  seen();
}
"""


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    pytest.importorskip("robot_io.safety", reason="needs the safety shield (robot_io/safety.py)")
    pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium")
    from rt2_cot.tiny_vlm import build_tiny_paligemma

    root = tmp_path_factory.mktemp("browser")
    model = build_tiny_paligemma(root / "tiny-paligemma")
    srv = ConsoleServer(root / "sessions", "--max-steps", "50", model=str(model)).wait_ready(timeout=180)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(console):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_console(browser, url):
    pg = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    pg.goto(url, wait_until="domcontentloaded")
    pg.wait_for_selector("#live-img", timeout=60_000)
    return pg


@pytest.fixture(scope="module")
def page(browser, console):
    return open_console(browser, console.url)


def test_api_run_streams_the_plan_token_by_token(console):
    """gradio_client sees the same stream: /run yields the reasoning panel as each token lands."""
    import re

    client = console.client()
    job = client.submit("pick up the red block", 1, api_name="/run")
    job.result(timeout=120)
    plans = [m.group(1).strip() for out in job.outputs() if (m := re.search(r'id="plan-text">([^<]*)<', out))]
    plans = [p for i, p in enumerate(plans) if p and (i == 0 or p != plans[i - 1])]
    growing = [b for a, b in itertools.pairwise(plans) if b.startswith(a) and len(b) > len(a)]
    assert len(growing) >= 2, plans[:10]
    final = job.outputs()[-1]
    tokens = re.findall(r'<div class="tok-raw">(\d+)</div>', final)
    assert len(tokens) == 8 and all(0 <= int(t) <= 255 for t in tokens)
    client.predict(api_name="/release_control")


def test_live_view_updates(page):
    first = int(page.get_attribute("#live-view", "data-frame"))
    page.wait_for_function(
        f"Number(document.querySelector('#live-view').dataset.frame) >= {first + 5}", timeout=10_000
    )
    assert page.locator("#camera-state").inner_text().startswith("camera sim: ok")


def test_typed_command_streams_the_plan_then_estop_latches(page):
    box = page.locator("#command-box textarea, #command-box input").first
    box.fill("pick up the red block")
    page.evaluate(WATCH_PLAN_JS)
    box.press("Enter")  # keyboard-first: Enter runs
    # The plan grows word by word while the model generates (several distinct partial texts).
    page.wait_for_function("window.__plans.filter(p => p.text.trim().length > 0).length >= 3", timeout=60_000)
    # Then the eight action tokens arrive and the step lands in the history table.
    page.wait_for_function(
        "document.querySelectorAll('#action-tokens .tok:not(.tok-empty)').length === 8", timeout=60_000
    )
    page.wait_for_function("document.querySelectorAll('#history tbody tr').length >= 1", timeout=60_000)
    plans = [p["text"].strip() for p in page.evaluate("window.__plans") if p["text"].strip()]
    growing = [b for a, b in itertools.pairwise(plans) if b.startswith(a) and len(b) > len(a)]
    assert len(growing) >= 2, plans[:10]

    page.click("#estop-btn")
    page.wait_for_selector("#estop-state.latched", timeout=5_000)
    assert "E-STOP LATCHED" in page.inner_text("#estop-state")
    page.wait_for_function(
        "document.querySelector('#arm-state').textContent.includes('holding')", timeout=5_000
    )
    page.wait_for_function(
        "document.querySelector('#m-status') && document.querySelector('#m-status').textContent === 'E-STOP'",
        timeout=5_000,
    )
    out = REPO / "artifacts"
    out.mkdir(exist_ok=True)
    page.screenshot(path=str(out / "console_e2e.png"), full_page=True)
    assert (out / "console_e2e.png").stat().st_size > 10_000

    # Run is refused while latched; Reset E-stop (explicit) re-arms.
    steps_before = page.locator("#history tbody tr").count()
    page.click("#run-btn")
    time.sleep(1.0)
    assert page.locator("#estop-state.latched").count() == 1
    assert page.locator("#history tbody tr").count() == steps_before
    page.click("#reset-estop-btn")
    page.wait_for_selector("#estop-state.armed", timeout=5_000)


def test_escape_key_is_the_estop(page):
    page.locator("body").press("Escape")
    page.wait_for_selector("#estop-state.latched", timeout=5_000)
    page.click("#reset-estop-btn")
    page.wait_for_selector("#estop-state.armed", timeout=5_000)


@pytest.mark.skipif(os.environ.get("CI") == "true", reason="layout check needs no CI-specific fonts")
def test_estop_stays_visible_when_scrolled(page):
    page.mouse.wheel(0, 3000)
    time.sleep(0.3)
    box = page.locator("#estop-btn").bounding_box()
    assert box is not None and 0 <= box["y"] < 1000 and box["height"] >= 48


def test_a_second_browser_watches_read_only_and_can_still_estop(page, browser, console):
    page.click("#take-btn")
    page.wait_for_function(
        "document.querySelector('#control-state').textContent.includes('you have control')"
    )
    other = open_console(browser, console.url)
    other.wait_for_function(
        "document.querySelector('#control-state').textContent.includes('read-only')", timeout=10_000
    )
    assert "has control" in other.inner_text("#control-state")
    other.wait_for_selector("#run-btn:disabled", timeout=10_000)
    assert other.locator("#estop-btn").is_enabled()
    other.click("#estop-btn")
    page.wait_for_selector("#estop-state.latched", timeout=5_000)  # the holder sees the latch too
    other.close()
    page.click("#reset-estop-btn")
    page.wait_for_selector("#estop-state.armed", timeout=5_000)
