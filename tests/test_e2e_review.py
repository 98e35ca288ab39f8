"""Review work is never lost, in a real browser (Playwright, Debian's Chromium): pins and notes
survive a page reload (a new session that loads the same pool), and a table edit counts at once,
so leaving the Review page mid-edit keeps it."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from test_e2e_browser import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, compute_se_kernel,  # noqa: F401
                              idle, load_demo_data, nav, server)

pytestmark = pytest.mark.slow


def _to_review(page: Any, url: str) -> None:
    """Load the demo data, compute the DELIFT-SE kernel, open Review."""
    page.goto(url)
    page.get_by_role("heading", name="DELIFT Studio").wait_for()
    idle(page)
    load_demo_data(page)
    compute_se_kernel(page)
    nav(page, "Review")
    page.get_by_text("Override").first.wait_for()
    idle(page)


def _counts(page: Any) -> tuple[int, int]:
    """(pinned, notes) from the Review page's count line."""
    text = page.get_by_text(re.compile(r"samples shown · \d+ pinned")).first.inner_text()
    return (int(re.search(r"(\d+) pinned", text).group(1)),
            int(re.search(r"(\d+) notes", text).group(1)))


def _settled_counts(page: Any, want: tuple[int, int], seconds: float = 30.0) -> tuple[int, int]:
    """The count line once it shows ``want``, or what it shows after ``seconds``: a rerun can
    still be replacing the line when the text waited for has appeared (seen once in a full CI
    run on a slow 2-core CPU); a count that never comes right still fails the assertion."""
    deadline = time.monotonic() + seconds
    got = _counts(page)
    while got != want and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        got = _counts(page)
    return got


def test_review_work_survives_a_reload_and_leaving_mid_edit_in_chromium(server: str) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium (scripts/setup.sh --test)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(120_000)
            _to_review(page, server)
            assert _counts(page) == (0, 0)
            page.get_by_role("button", name="Pin", exact=True).click()
            idle(page)
            page.get_by_label("Note", exact=True).fill("keep: a rare task")
            page.get_by_role("button", name="Save note").click()
            idle(page)
            page.get_by_text(re.compile(r"Saved automatically at")).wait_for()
            assert _settled_counts(page, (1, 1)) == (1, 1)
            # a reload is a new session: load the same pool again and the work is back
            page.reload()
            _to_review(page, server)
            page.get_by_text(re.compile(r"Decisions restored")).wait_for()
            assert _settled_counts(page, (1, 1)) == (1, 1)
            page.screenshot(path=str(ARTIFACTS / "5_review_restored.png"))
            # a table edit, then leave the page at once: the edit was applied as it was made
            grid = page.locator('[data-testid="stDataFrame"]').first
            box = grid.bounding_box()
            pinned_before = _counts(page)[0]
            for _ in range(3):  # the first row's pin box: click its id cell, step right, tick
                page.mouse.click(box["x"] + 30, box["y"] + 35 + 36 * 2 + 18)
                page.keyboard.press("ArrowRight")
                page.keyboard.press("Space")
                idle(page)
                if _counts(page)[0] != pinned_before:
                    break
            pinned_after = _counts(page)[0]
            assert pinned_after != pinned_before, "the table edit did not count"
            nav(page, "Download")
            nav(page, "Review")
            assert _counts(page)[0] == pinned_after
        finally:
            browser.close()
