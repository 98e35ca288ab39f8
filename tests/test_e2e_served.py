"""The studio served to a team, in a real browser (Playwright, Debian's Chromium): sign-in against
a local OpenID Connect provider (oidc-provider-mock) with an allow-list, and two sessions whose
model jobs share the server's queue while their decisions and downloads stay apart."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from test_e2e_browser import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, SLOW_MS, compute_se_kernel,
                              free_port, idle, load_demo_data, nav, open_utility_kernel_page,
                              set_first_rows, streamlit_server)

pytestmark = pytest.mark.slow


def _chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium (scripts/setup.sh --test)")


def sign_in(page: Any, url: str, email: str) -> None:
    """Open the studio, press "Sign in", and authorize as ``email`` on the mock provider."""
    page.goto(url)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_placeholder("sub").fill(email)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(re.compile(rf"^{re.escape(url)}"))
    idle(page)


def test_sign_in_with_an_allow_list_in_chromium(tmp_path: Path) -> None:
    _chromium()
    import urllib.request

    from oidc_provider_mock import User, run_server_in_thread
    from playwright.sync_api import sync_playwright

    users = [User(sub=e, claims={"email": e, "name": n})
             for e, n in (("alice@team.org", "Alice"), ("eve@elsewhere.net", "Eve"))]
    port = free_port()
    with run_server_in_thread(user_claims=users) as oidc:
        issuer = f"http://localhost:{oidc.server_port}"
        with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration") as r:
            assert json.load(r)["issuer"] == issuer
        secrets = tmp_path / "secrets.toml"
        secrets.write_text(f'''[auth]
redirect_uri = "http://localhost:{port}/oauth2callback"
cookie_secret = "a-test-cookie-secret-that-is-long-enough"
client_id = "delift-studio"
client_secret = "test-secret"
server_metadata_url = "{issuer}/.well-known/openid-configuration"

[delift]
allowed_users = ["@team.org"]
''')
        env = dict(os.environ)
        with streamlit_server(env, "streamlit-signin.log", ("--secrets.files", str(secrets)),
                              port=port) as _, sync_playwright() as p:
            url = f"http://localhost:{port}"
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                ctx = browser.new_context(viewport={"width": 1400, "height": 1000},
                                          accept_downloads=True)
                page = ctx.new_page()
                page.set_default_timeout(60_000)  # no model work here: seconds, not minutes
                # signed out: the sign-in screen and nothing else, on any page's URL
                for path in ("", "/Data", "/Kernel"):
                    page.goto(url + path)
                    page.get_by_role("button", name="Sign in").wait_for()
                    idle(page)
                    assert page.locator('[data-testid="stSidebarNav"]').count() == 0
                    assert page.get_by_role("button", name="Load the demo data").count() == 0
                page.screenshot(path=str(ARTIFACTS / "served_sign_in.png"))
                # an address not on the allow-list is refused
                sign_in(page, url, "eve@elsewhere.net")
                page.get_by_text("eve@elsewhere.net is not allowed to use this studio").wait_for()
                assert page.locator('[data-testid="stSidebarNav"]').count() == 0
                page.get_by_role("button", name="Sign out").click()
                page.get_by_role("button", name="End session").click()  # on the provider
                page.get_by_role("button", name="Sign in").wait_for()
                # a user on the list runs the demo flow
                sign_in(page, url, "alice@team.org")
                page.get_by_text("Signed in as Alice (alice@team.org)").wait_for()
                load_demo_data(page)
                compute_se_kernel(page)
                nav(page, "Select")
                page.get_by_text("72 of 240", exact=True).wait_for()
                nav(page, "Download")
                button = page.get_by_role("button", name="selected.jsonl")
                with page.expect_download() as info:
                    button.click()
                path = tmp_path / "selected.jsonl"
                info.value.save_as(str(path))
                assert len(path.read_text().splitlines()) == 72
                page.screenshot(path=str(ARTIFACTS / "served_signed_in.png"))
            finally:
                browser.close()


def _pin_and_save(page: Any, query: str, name: str) -> dict:
    """On the Review page: pin every row matching ``query``; download decisions.json."""
    nav(page, "Review")
    search = page.get_by_label("Search prompt, response, id or note")
    search.fill(query)
    search.press("Enter")
    idle(page)
    page.get_by_role("button", name=re.compile(r"Pin all \d+ shown")).click()
    idle(page)
    with page.expect_download() as info:
        page.get_by_role("button", name="Save decisions (decisions.json)").click()
    path = ARTIFACTS / name
    info.value.save_as(str(path))
    return json.loads(path.read_text())


def _download_selected(page: Any) -> list[str]:
    """The ids of the session's selected.jsonl, downloaded from the Download page."""
    nav(page, "Download")
    with page.expect_download() as info:
        page.get_by_role("button", name="selected.jsonl").click()
    return [json.loads(line)["id"] for line in Path(info.value.path()).read_text().splitlines()]


def test_two_sessions_share_the_model_queue_and_nothing_else_in_chromium(tmp_path: Path) -> None:
    _chromium()
    from playwright.sync_api import sync_playwright

    from delift_core.lm.models import cache_dir

    root = tmp_path / "root"
    root.mkdir()
    (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(cache_dir() / "models")  # the dequantised model, reused
    env = dict(os.environ, DELIFT_CACHE_DIR=str(cache), DELIFT_DATA_ROOT=str(root))
    with streamlit_server(env, "streamlit-queue.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pages = []
            for _ in range(2):  # two browser contexts: two users, no shared cookies
                ctx = browser.new_context(viewport={"width": 1400, "height": 1000},
                                          accept_downloads=True)
                page = ctx.new_page()
                page.set_default_timeout(SLOW_MS)
                pages.append(page)
            a, b = pages
            for page in pages:
                open_utility_kernel_page(page, url)
                set_first_rows(page, 20)  # 420 passes: long enough to queue behind
            a.get_by_role("button", name="Compute the kernel").click()
            a.get_by_text(re.compile(r"utility pool: \d+ / \d+")).wait_for()
            b.get_by_role("button", name="Compute the kernel").click()
            b.get_by_text(re.compile(r"Queued: place 1 of 1 waiting for the model")).wait_for()
            b.screenshot(path=str(ARTIFACTS / "served_queued.png"))
            assert a.get_by_text(re.compile(r"Queued: place")).count() == 0
            # B's Cancel reaches B's job only: it leaves the queue, A's kernel goes on
            b.get_by_role("button", name="Cancel").click()
            b.get_by_text("The computation was cancelled").wait_for()
            a.get_by_text(re.compile(r"Kernel ready: .* on 20 rows")).wait_for()
            assert b.get_by_text("Kernel ready").count() == 0
            # each session selects, pins other rows and downloads its own decisions
            for page in pages:
                compute_se_kernel(page)
            ids_a = set(_pin_and_save(a, "sentiment", "served_decisions_a.json")["pinned"])
            before = _download_selected(a)
            ids_b = set(_pin_and_save(b, "translate", "served_decisions_b.json")["pinned"])
            # B's file would hold A's pins too if the sessions shared their decisions
            assert ids_a and ids_b and not ids_a & ids_b, (ids_a, ids_b)
            after = _download_selected(a)
            assert ids_a <= set(after) and after == before  # B's pins changed nothing of A's
        finally:
            browser.close()
