"""End to end in a real browser: `streamlit run app.py`, driven by Playwright with Debian's Chromium.

Walks the demo flow (data -> DELIFT-SE kernel -> 30 % budget -> explore -> review -> download),
checks the downloaded subset, and saves a screenshot of every page to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from delift_core import load_dataset

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SLOW_MS = 300_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    """A headless Streamlit server on a free localhost port (no usage statistics)."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited early; see {ARTIFACTS / 'streamlit.log'}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not answer its health check")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def idle(page) -> None:
    """Wait until the script has finished running (the status widget is gone)."""
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=SLOW_MS)


def nav(page, name: str) -> None:
    """Switch page through the sidebar (keeps the session, unlike loading a URL)."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=name).first.click()
    idle(page)


def shot(page, name: str) -> None:
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


@pytest.mark.slow
def test_demo_flow_in_chromium(server: str) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium (scripts/setup.sh --test "
                    "does: apt-get install -y chromium); Playwright cannot download a browser here")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000},
                                      accept_downloads=True)
            page = ctx.new_page()
            page.set_default_timeout(SLOW_MS)
            page.goto(server)
            page.get_by_role("heading", name="DELIFT Studio").wait_for()
            idle(page)
            shot(page, "0_home")

            nav(page, "Data")
            page.get_by_role("button", name="Load the demo data").click()
            page.get_by_text("Demo data loaded").wait_for()
            idle(page)
            shot(page, "1_data")

            nav(page, "Kernel")
            page.get_by_text("DELIFT-SE (sentence embedding)").click()
            idle(page)
            page.get_by_role("button", name="Compute the kernel").click()
            page.get_by_text("Kernel ready").wait_for()
            idle(page)
            shot(page, "2_kernel")

            nav(page, "Select")
            page.get_by_text("72 of 240", exact=True).wait_for()
            page.locator(".js-plotly-plot").first.wait_for()
            shot(page, "3_select")

            nav(page, "Explore")
            page.locator(".js-plotly-plot").first.wait_for()
            idle(page)
            shot(page, "4_explore_heatmap")
            page.get_by_role("tab", name="Embedding map").click()
            page.wait_for_timeout(500)
            shot(page, "4_explore_map")
            page.get_by_role("tab", name="Explain a sample").click()
            shot(page, "4_explore_explain")

            nav(page, "Review")
            page.get_by_text("Override").first.wait_for()
            idle(page)
            shot(page, "5_review")

            nav(page, "Download")
            button = page.get_by_role("button", name="selected.jsonl")
            button.wait_for()
            shot(page, "6_download")
            with page.expect_download() as info:
                button.click()
            path = ARTIFACTS / "selected.jsonl"
            info.value.save_as(str(path))
        finally:
            browser.close()

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    pool = load_dataset("demo:pool")
    assert len(rows) == 72  # 30 % of 240
    assert all(r in pool.rows for r in rows)  # original rows, all fields, unchanged
    assert len({r["id"] for r in rows}) == 72
    assert {"instruction", "input", "output", "family"} <= set(rows[0])
    for name in ("0_home", "1_data", "2_kernel", "3_select", "4_explore_heatmap", "5_review",
                 "6_download"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000
