"""End to end in a real browser: `streamlit run app.py`, driven by Playwright with Debian's Chromium.

Walks the demo flow (data -> DELIFT-SE kernel -> 30 % budget -> explore -> review -> download),
checks the downloaded subset, and saves a screenshot of every page to ``test-artifacts/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from delift_core.data.dataset import load_dataset

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SLOW_MS = int(os.environ.get("DELIFT_TEST_SLOW_MS", "600000"))  # a shared 2-core machine can take minutes to embed the demo pool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    """A headless Streamlit server on a free localhost port (no usage statistics)."""
    with streamlit_server(dict(os.environ), "streamlit.log") as url:
        yield url


@contextlib.contextmanager
def streamlit_server(env: dict[str, str], log_name: str,
                     options: tuple[str, ...] = (), port: int | None = None) -> Iterator[str]:
    """Run ``streamlit run app.py`` with ``env`` (and extra command-line ``options``, e.g.
    ``("--runner.postScriptGC", "true")``) until the block ends, on ``port`` (a free one by
    default); yields its URL."""
    port = port or free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / log_name, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", *options],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited early; see {ARTIFACTS / log_name}")
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


def load_demo_data(page: Any) -> None:
    """Data page: "Load the demo data", and wait until it is loaded."""
    nav(page, "Data")
    page.get_by_role("button", name="Load the demo data").click()
    page.get_by_text("Demo data loaded").wait_for()
    idle(page)


def compute_se_kernel(page: Any) -> None:
    """Kernel page: the DELIFT-SE (embedding) kernel, computed and ready. A click that lands
    while the page reruns (a background job's fragment just ending, say) can be dropped, so the
    button is clicked again when nothing came of it in a minute (a disabled button is waited on)."""
    nav(page, "Kernel")
    page.get_by_text("DELIFT-SE (sentence embedding)").click()
    idle(page)
    for _ in range(3):
        page.get_by_role("button", name="Compute the kernel").click()
        try:
            page.get_by_text("Kernel ready").wait_for(timeout=60_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: click again
            idle(page)
    page.get_by_text("Kernel ready").wait_for(timeout=SLOW_MS)
    idle(page)


def grid_text(page: Any, header: str) -> tuple[list[str], list[str]]:
    """(column headers, cell texts) of the data frame with a column ``header``, once rendered:
    a data frame's text lives in the accessible table its grid draws inside its canvas."""
    grid = page.locator('[data-testid="stDataFrame"]').filter(
        has=page.locator('th[role="columnheader"]', has_text=header))
    grid.locator('td[role="gridcell"]').first.wait_for(state="attached")
    return (grid.locator('th[role="columnheader"]').all_text_contents(),
            grid.locator('td[role="gridcell"]').all_text_contents())


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
            # bulk review: filter, pin every row shown at once, save the decisions, load them
            search = page.get_by_label("Search prompt, response, id or note")
            search.fill("sentiment")
            search.press("Enter")
            idle(page)
            pin_all = page.get_by_role("button", name=re.compile(r"Pin all \d+ shown"))
            n_pinned = int(re.search(r"\d+", pin_all.inner_text()).group())
            assert 3 <= n_pinned < 240
            pin_all.click()
            idle(page)
            page.get_by_text(f"{n_pinned} rows changed", exact=True).wait_for()
            page.get_by_text(re.compile(rf"Last step: pin all samples matching "
                                        rf"'sentiment' \({n_pinned} rows\)")).wait_for()
            shot(page, "5_review")
            with page.expect_download() as info:
                page.get_by_role("button", name="Save decisions (decisions.json)").click()
            decisions_path = ARTIFACTS / "decisions.json"
            info.value.save_as(str(decisions_path))
            page.get_by_role("button", name="Undo the last step").click()
            idle(page)
            page.get_by_text("0 rows changed", exact=True).wait_for()
            pinned_text = page.get_by_text(re.compile(rf"\b{n_pinned} pinned")).first
            for _ in range(4):  # an upload during a rerun can be dropped with the old widget
                idle(page)
                page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
                    str(decisions_path))
                idle(page)
                try:
                    pinned_text.wait_for(timeout=30_000)
                    break
                except Exception:  # noqa: BLE001 - playwright's TimeoutError: upload again
                    continue
            pinned_text.wait_for(timeout=1_000)
            page.get_by_text("0 rows changed", exact=True).wait_for()  # counted from the file

            nav(page, "Download")
            button = page.get_by_role("button", name="selected.jsonl")
            button.wait_for()
            shot(page, "6_download")
            with page.expect_download() as info:
                button.click()
            path = ARTIFACTS / "selected.jsonl"
            info.value.save_as(str(path))

            nav(page, "Audit")
            page.get_by_role("tab", name="Near-duplicates").click()
            page.get_by_role("button", name=re.compile(r"Ban the \d+ duplicates")).wait_for()
            shot(page, "8_audit")
        finally:
            browser.close()

    saved = json.loads(decisions_path.read_text(encoding="utf-8"))
    assert len(saved["pinned"]) == n_pinned and saved["banned"] == []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    pool = load_dataset("demo:pool")
    assert set(saved["pinned"]) <= set(pool.ids)
    assert len(rows) == 72  # 30 % of 240
    assert all(r in pool.rows for r in rows)  # original rows, all fields, unchanged
    assert len({r["id"] for r in rows}) == 72
    assert {"instruction", "input", "output", "family"} <= set(rows[0])
    for name in ("0_home", "1_data", "2_kernel", "3_select", "4_explore_heatmap", "5_review",
                 "6_download", "8_audit"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000


@pytest.mark.slow
def test_report_opens_in_chromium_without_errors(tmp_path: Path) -> None:
    """`delift report` on a demo selection: Chromium renders every figure with no console error;
    a row holding <script> (a fixture report) shows as text and runs nothing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium")
    from playwright.sync_api import sync_playwright

    from delift_core.cli import main

    out = tmp_path / "sel"
    assert main(["select", "--pool", "demo:pool", "--kernel", "embedding", "--objective", "fl",
                 "--budget", "0.3", "--out", str(out)]) == 0
    assert main(["report", str(out), "--label-col", "family"]) == 0
    report = out / "report.html"
    evil = tmp_path / "evil"
    evil.mkdir()
    rows = [{"id": f"e{k}", "prompt": f"question {k}", "response": f"answer {k}"} for k in range(8)]
    rows[3]["prompt"] = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    (evil / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["select", "--pool", str(evil / "pool.jsonl"), "--kernel", "embedding",
                 "--objective", "fl", "--budget", "3", "--out", str(evil / "sel")]) == 0
    assert main(["report", str(evil / "sel"), "--clusters", "2"]) == 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            errors: list[str] = []
            dialogs: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(
                "file:") else route.continue_())  # no network: the file must need none
            page.goto(report.as_uri())
            page.get_by_role("heading", name="Gain curve").wait_for()
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 5")
            # gain, cluster, family, map and heatmap (no evaluation in this folder)
            assert page.locator(".js-plotly-plot").count() == 5
            page.wait_for_timeout(800)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"))
            page.goto((evil / "sel" / "report.html").as_uri())
            page.get_by_role("heading", name="Sample rows and why").wait_for()
            page.wait_for_timeout(500)
            assert page.get_by_text("<script>alert('x')</script>").count() >= 1
            assert dialogs == []
            assert errors == [], errors
        finally:
            browser.close()


def open_utility_kernel_page(page: Any, url: str, learned: bool | None = False) -> None:
    """From a fresh session: load the demo data, open the Kernel page, choose DELIFT, and switch
    its "Learned kernel" toggle to ``learned`` (off by default: the exact kernel of the first N
    rows, which a CPU otherwise replaces with a learned kernel of the demo pool; None leaves the
    page's default)."""
    page.goto(url)
    idle(page)
    load_demo_data(page)
    nav(page, "Kernel")
    page.get_by_text("DELIFT (model utility)").first.click()
    page.locator('[data-testid="stMetric"]', has_text="Forward passes").wait_for()
    if learned is not None:
        set_learned(page, learned)


def learned_switch(page: Any) -> Any:
    """The Kernel page's "Learned kernel" toggle (a switch: a hidden checkbox input)."""
    return page.get_by_role("switch", name=re.compile(r"^Learned kernel"))


def set_learned(page: Any, on: bool) -> None:
    """Switch "Learned kernel" on or off with a click on its label, and wait until the page
    follows (the "Exact passes" input shows for a learned kernel only); clicked again if a rerun
    still running replaced the toggle."""
    switch = learned_switch(page)
    label = page.locator('[data-testid="stCheckbox"]', has_text="Learned kernel").get_by_text(
        re.compile(r"^Learned kernel")).first
    passes = page.locator('input[aria-label="Exact passes"]')
    for _ in range(5):
        idle(page)
        if switch.is_checked() != on:
            label.click()
        try:
            passes.wait_for(state="visible" if on else "detached", timeout=15_000)
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: click it again
            continue
        if switch.is_checked() == on:
            break
    assert switch.is_checked() == on, f"the Learned kernel toggle did not switch to {on}"
    passes.wait_for(state="visible" if on else "detached", timeout=1_000)
    idle(page)


def type_until(page: Any, box: Any, n: int, want: Any) -> None:
    """Type ``n`` into ``box`` and commit it until ``want`` shows; typed again (up to 5 times)
    when a rerun still running replaced the input."""
    for _ in range(5):
        idle(page)
        box.fill(str(n))
        box.press("Enter")
        try:
            want.wait_for(timeout=15_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: type it again
            continue
    want.wait_for(timeout=1_000)
    idle(page)


def set_first_rows(page: Any, n: int) -> None:
    """Type N into "first N rows", commit it, and wait until the estimate is for N rows of a
    dense kernel (n² + n passes); typed again if a rerun still running replaced the input."""
    box = page.locator('input[aria-label^="Use the first N rows of the pool"]')
    want = page.locator('[data-testid="stMetric"]', has_text="Forward passes").locator(
        '[data-testid="stMetricValue"]', has_text=re.compile(rf"^{n * n + n:,}$"))
    type_until(page, box, n, want)


def _give_up(page: Any, cache: Path, why: str, name: str = "utility") -> None:
    """Fail with what the page and the server's cache folder show, kept in test-artifacts/
    (a screenshot, the page's text, the measured speeds) so a hang can be told apart from a
    slow kernel afterwards (``name``: the files' prefix, one per test)."""
    page.screenshot(path=str(ARTIFACTS / f"2_kernel_{name}_gave_up.png"))
    text = page.locator("body").all_inner_texts()
    speeds = cache / "speeds.json"
    diag = {"why": why, "page_text": text,
            "running_widget": page.locator('[data-testid="stStatusWidget"]').count(),
            "speeds": speeds.read_text() if speeds.exists() else None}
    (ARTIFACTS / f"{name}_gave_up.json").write_text(json.dumps(diag, indent=1))
    pytest.fail(f"{why}; see {ARTIFACTS / f'{name}_gave_up.json'}")


def _seconds(text: str) -> float:
    """Seconds from format_seconds' text ('42 s', '3 min 5 s', '1 h 20 min')."""
    units = {"h": 3600, "min": 60, "s": 1}
    found = re.findall(r"(\d+) (h|min|s)\b", text)
    assert found, f"no duration in {text!r}"
    return float(sum(int(n) * units[u] for n, u in found))


@pytest.mark.slow
@pytest.mark.real_cache
def test_utility_kernel_estimate_and_progress_in_chromium(tmp_path: Path) -> None:
    """The Kernel page's time estimate for a small utility kernel is within 2x of the time it
    then takes, and its progress bar moves every few seconds.

    A first 4-row kernel measures this machine (its speed is recorded in the cache folder, as
    every fresh utility kernel's is); the estimate for the 16-row kernel comes from that speed and
    the 16-row kernel's work, and is compared with the 16-row kernel's own measured time (16 rows,
    272 passes: an 8-row kernel took under 3 s on an AVX512 CPU, too short for its progress bar to
    be seen moving)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium")
    from playwright.sync_api import sync_playwright

    from delift_core.lm.models import cache_dir

    (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").symlink_to(cache_dir() / "models")  # the dequantised model, reused
    env = dict(os.environ, DELIFT_CACHE_DIR=str(tmp_path))  # a fresh pair store and speeds
    with streamlit_server(env, "streamlit-utility.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(SLOW_MS)
            open_utility_kernel_page(page, url)

            def set_rows(n: int) -> None:
                set_first_rows(page, n)

            set_rows(4)
            page.get_by_role("button", name="Compute the kernel").click()
            try:
                page.get_by_text(re.compile(r"Kernel ready: .* on 4 rows")).wait_for()
            finally:
                page.screenshot(path=str(ARTIFACTS / "2_kernel_utility_first.png"))
            idle(page)
            set_rows(16)
            metric = page.locator('[data-testid="stMetric"]', has_text="Time (about)")
            estimate = _seconds(metric.locator('[data-testid="stMetricValue"]').inner_text())
            page.get_by_role("button", name="Compute the kernel").click()
            ready = page.get_by_text(re.compile(r"Kernel ready: .* on 16 rows"))
            seen: list[tuple[float, int]] = []
            t0 = time.time()
            while not ready.is_visible():
                # all_inner_texts never waits: the bar may be gone by the time it is read
                bars = page.locator('[data-testid="stProgress"]').all_inner_texts()
                if bars:
                    m = re.search(r"utility pool: (\d+) / (\d+)", bars[0])
                    if m and (not seen or int(m.group(1)) != seen[-1][1]):
                        seen.append((time.time() - t0, int(m.group(1))))
                if time.time() - t0 > 600:
                    _give_up(page, tmp_path, "the 16-row kernel was not shown as ready in 10 min")
                page.wait_for_timeout(250)
            measured = float(re.search(r"\(([\d.]+) s\)", ready.inner_text()).group(1))
            page.screenshot(path=str(ARTIFACTS / "2_kernel_utility.png"))
        finally:
            browser.close()
    (ARTIFACTS / "utility_estimate.json").write_text(json.dumps(
        {"estimate_s": estimate, "measured_s": measured, "progress": seen}, indent=1))
    assert 0.5 <= estimate / measured <= 2.0, (estimate, measured)
    counts = [d for _, d in seen]
    assert len(set(counts)) >= 3 and counts == sorted(counts), seen  # it moved, forwards only
    gaps = [b[0] - a[0] for a, b in zip(seen, seen[1:])]
    assert max(gaps) <= 10.0, seen  # the bar moves at least every 10 s on a 2-core machine


EXACT_PASSES = 400
"""The learned kernel's exact budget in the cancel-and-resume test: one chunk of anchor rows
(400 // 13 = 30 rows of 12 examples and a plain pass each), minutes on a 2-core CPU."""


def set_exact_passes(page: Any, n: int) -> None:
    """Type N into "Exact passes", commit it, and wait until the learned kernel's estimate says
    so; typed again if a rerun still running replaced the input."""
    box = page.locator('input[aria-label="Exact passes"]')
    want = page.get_by_text(re.compile(rf"Learned kernel: .* of which about {n:,} exact model "
                                       r"passes"))
    type_until(page, box, n, want)


def native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX): without them bfloat16
    runs about 5x slower than float32 (benchmarks/README.md), with them about 2.7x faster."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def choose_bfloat16(page: Any) -> bool:
    """Choose the bfloat16 precision when the page offers it; whether it is chosen."""
    option = page.get_by_text(re.compile(r"^bfloat16 \(reduced precision"))
    if option.count() == 0:
        return False
    radio = page.get_by_role("radio", name=re.compile(r"^bfloat16"))
    for _ in range(5):
        idle(page)
        if radio.is_checked():
            break
        option.first.click()
        page.wait_for_timeout(500)
    idle(page)
    assert radio.is_checked(), "the bfloat16 precision could not be chosen"
    return True


@pytest.mark.slow
@pytest.mark.real_cache
def test_learned_kernel_cancel_then_resume_in_chromium(tmp_path: Path) -> None:
    """The learned utility kernel of the whole demo pool from the Kernel page (on by default on
    a CPU): a first run, cancelled while it scores exact pairs, keeps the pairs it finished in
    the pair store; the same settings computed again reuse them (the learned-kernel line says
    "N passes computed, M reused" with M > 0), fit, predict and show the held-out fidelity."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium")
    from playwright.sync_api import sync_playwright

    from delift_core import settings as spec
    from delift_core.lm.models import cache_dir, resolve_device
    from delift_core.selection import plan

    (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").symlink_to(cache_dir() / "models")  # the dequantised model, reused
    env = dict(os.environ, DELIFT_CACHE_DIR=str(tmp_path))  # a fresh pair store and speeds
    # the anchor rows' plain passes come first; past them, exact pairs are being stored
    anchors = EXACT_PASSES // (spec.default("exact_per_row") + 1)
    seen: list[tuple[float, int, int]] = []
    with streamlit_server(env, "streamlit-learned.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(SLOW_MS)
            open_utility_kernel_page(page, url, learned=None)
            default_on = plan.default_learned(240, resolve_device().type == "cpu")
            assert learned_switch(page).is_checked() == default_on
            set_learned(page, True)
            box = page.locator('input[aria-label^="Use the first N rows of the pool"]')
            assert box.input_value() == "240"  # a learned kernel takes the whole pool
            set_exact_passes(page, EXACT_PASSES)
            bf16 = native_bf16() and choose_bfloat16(page)  # float32 (the default) otherwise

            compute = page.get_by_role("button", name="Compute the kernel")
            cancel = page.get_by_role("button", name="Cancel", exact=True)
            cancelled = page.get_by_text("The computation was cancelled")
            ready = page.get_by_text(re.compile(r"Kernel ready: .* on 240 rows"))
            failed = page.locator('[data-testid="stAlertContentError"]')
            bars = page.locator('[data-testid="stProgress"]')

            def check_failed() -> None:
                if failed.count():
                    _give_up(page, tmp_path, "the kernel job failed: "
                             + " / ".join(failed.all_inner_texts()), "learned")

            def exact_progress(t0: float) -> int | None:
                """Exact passes done as the progress bar shows them (None: no such bar now)."""
                texts = bars.all_inner_texts()  # never waits: the bar may be gone by now
                m = re.search(r"exact pairs: ([\d,]+) / ([\d,]+)", texts[0]) if texts else None
                if m is None:
                    return None
                done, total = (int(g.replace(",", "")) for g in m.groups())
                if not seen or seen[-1][1:] != (done, total):
                    seen.append((round(time.time() - t0, 1), done, total))
                return done

            # first run: cancel once exact pairs past the anchors' plain passes are scored
            idle(page)
            compute.click()
            t0 = time.time()
            clicked = 0.0
            while not cancelled.is_visible():
                if ready.is_visible():
                    _give_up(page, tmp_path, "the learned kernel was ready before Cancel took "
                             "effect (a faster machine: raise EXACT_PASSES)", "learned")
                check_failed()
                done = exact_progress(t0)
                if done is not None and done > anchors and time.time() - clicked > 10:
                    with contextlib.suppress(Exception):  # the fragment may be redrawing it
                        cancel.click(timeout=5_000)
                        clicked = time.time()
                if time.time() - t0 > SLOW_MS / 1000:
                    _give_up(page, tmp_path, "the first learned run was neither cancelled nor "
                             f"scoring exact pairs past {anchors} in {SLOW_MS / 1000:.0f} s",
                             "learned")
                page.wait_for_timeout(250)
            assert clicked, seen  # cancelled by the click above, not by anything else
            idle(page)
            page.screenshot(path=str(ARTIFACTS / "2_kernel_learned_cancelled.png"))

            # the same settings again: the finished exact pairs come from the pair store
            compute.click()
            t1 = time.time()
            last_click = t1
            while not ready.is_visible():
                check_failed()
                exact_progress(t1)
                if time.time() - last_click > 30 and not bars.count() and compute.is_visible() \
                        and compute.is_enabled():  # the click was lost in a rerun: again
                    with contextlib.suppress(Exception):
                        compute.click(timeout=5_000)
                    last_click = time.time()
                if time.time() - t1 > SLOW_MS / 1000:
                    _give_up(page, tmp_path, "the resumed learned kernel was not shown as ready "
                             f"in {SLOW_MS / 1000:.0f} s", "learned")
                page.wait_for_timeout(250)
            idle(page)
            info = page.locator('[data-testid="stAlertContentInfo"], '
                                '[data-testid="stAlertContentWarning"]').filter(
                has_text="LEARNED kernel")
            info.first.wait_for()
            line = info.first.inner_text()
            info.first.scroll_into_view_if_needed()
            shot(page, "2_kernel_learned")
        finally:
            browser.close()
    m = re.search(r"\(([\d,]+) passes computed, ([\d,]+) reused\)", line)
    computed, reused = (int(g.replace(",", "")) for g in m.groups()) if m else (None, None)
    (ARTIFACTS / "learned_resume.json").write_text(json.dumps(
        {"exact_passes": EXACT_PASSES, "bfloat16": bf16, "progress": seen,
         "passes_computed": computed, "passes_reused": reused, "line": line}, indent=1))
    assert "utility pool: LEARNED kernel" in line and "held-out fidelity" in line, line
    assert re.search(r"median row Spearman -?[\d.]+ \[-?[\d.]+, -?[\d.]+\]", line), line
    assert m is not None, line
    assert reused > 0, line  # Cancel kept the finished exact pairs for the next run
    assert computed + reused <= EXACT_PASSES, line  # the budget counts stored passes too
    assert (ARTIFACTS / "2_kernel_learned.png").stat().st_size > 10_000


@pytest.mark.slow
def test_evaluate_compares_methods_with_their_cost_in_chromium(server: str,
                                                               tmp_path: Path) -> None:
    """Evaluate page: the current selection and the longest-responses method at the same budget,
    scored in one run; the verdict table shows each one's cost beside its gain over random, and
    the HTML report made from that evaluation's results.json shows the same."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium")
    from playwright.sync_api import sync_playwright

    from delift_core.cli import main

    results = tmp_path / "results.json"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1500, "height": 1400},
                                      accept_downloads=True)
            page = ctx.new_page()
            page.set_default_timeout(SLOW_MS)
            page.goto(server)
            idle(page)
            load_demo_data(page)
            compute_se_kernel(page)
            nav(page, "Select")
            page.get_by_text("72 of 240", exact=True).wait_for()
            nav(page, "Evaluate")
            methods = page.locator('[data-testid="stMultiSelect"]',
                                   has_text="Compare with other methods at the same budget")
            methods.click()
            page.get_by_role("option", name="longest responses").click()
            page.keyboard.press("Escape")
            idle(page)
            rows = page.get_by_label("Use the first N test rows")
            rows.fill("2")
            rows.press("Enter")
            idle(page)
            page.get_by_role("button", name="Run the evaluation").click()
            page.get_by_text("Is the edge real? Each subset against random").wait_for()
            idle(page)
            heads, cells = grid_text(page, "verdict")  # the verdict table
            assert "what the selection cost" in heads, heads
            assert {"selection (fl)", "longest (same budget)"} <= set(cells), cells
            # the DELIFT-SE selection's: the demo pool and target embedded, no model pass
            cost = re.compile(r"0 passes · [1-9][\d,]* texts · \d+ s")
            assert any(cost.fullmatch(c) for c in cells), cells
            assert "0 passes · 0 texts · 0 s" in cells, cells  # the longest responses'
            page.screenshot(path=str(ARTIFACTS / "7_evaluate_methods.png"), full_page=True)
            with page.expect_download() as info:
                page.get_by_role("button", name="results.json").click()
            info.value.save_as(str(results))
            sel = tmp_path / "sel"
            assert main(["select", "--pool", "demo:pool", "--kernel", "embedding",
                         "--budget", "0.3", "--out", str(sel)]) == 0
            assert main(["report", str(sel), "--evaluation", str(results)]) == 0
            page.goto((sel / "report.html").as_uri())
            page.get_by_role("heading", name="Evaluation").wait_for()
            verdicts = page.locator("table", has_text="difference vs random")
            assert "what the selection cost" in verdicts.locator("th").all_text_contents()
            cells = verdicts.locator("td").all_text_contents()
            assert any(cost.fullmatch(c) for c in cells), cells
            assert "longest (same budget)" in cells and "0 passes · 0 texts · 0 s" in cells
        finally:
            browser.close()
