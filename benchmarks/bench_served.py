"""A served studio under load: five sessions at once while one utility kernel runs.

    python benchmarks/bench_served.py [--sessions 5] [--rows 20] [--json-out FILE]

Two runs of ``streamlit run app.py`` in served mode (``DELIFT_DATA_ROOT`` set), each from its
own fresh cache folder (the dequantised default model linked in, no pairs reused):
1. **alone**: one Chromium session computes the utility kernel of the demo pool's first
   ``--rows`` rows (dense, float32); its seconds are read from the page ("Kernel ready ... (X s)").
2. **loaded**: the same kernel in one session while ``--sessions`` other sessions (each its own
   browser context) run the demo flow at the same time: load the demo data, compute the
   DELIFT-SE (embedding) kernel, open Selection and wait for "72 of 240", open Review.

Printed: every interaction's time (click to the page idle again) as median and p95, the page
errors seen (browser errors and Streamlit exception boxes; the run fails on any), and the
utility kernel's seconds loaded against alone, as a ratio from this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from delift_core.lm.models import cache_dir  # noqa: E402
from test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, streamlit_server  # noqa: E402

TIMEOUT_MS = 900_000


def fresh_env() -> dict[str, str]:
    """Served mode, a fresh cache folder with the user's model folder linked in."""
    tmp = Path(tempfile.mkdtemp(prefix="delift-bench-served-"))
    (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
    (tmp / "cache").mkdir()
    (tmp / "cache" / "models").symlink_to(cache_dir() / "models")
    (tmp / "root").mkdir()
    return dict(os.environ, DELIFT_CACHE_DIR=str(tmp / "cache"), DELIFT_DATA_ROOT=str(tmp / "root"))


async def idle(page) -> None:
    await page.wait_for_timeout(300)
    await page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached",
                                 timeout=TIMEOUT_MS)


class Session:
    """One browser context; times every interaction and keeps the page errors it sees."""

    def __init__(self, page, name: str) -> None:
        self.page, self.name = page, name
        self.times: list[float] = []
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(f"{name}: page error {e}"))

    async def act(self, coro, *, wait=None) -> None:
        t0 = time.perf_counter()
        await coro
        if wait is not None:
            await wait.wait_for(timeout=TIMEOUT_MS)
        await idle(self.page)
        self.times.append(time.perf_counter() - t0)
        boxes = await self.page.locator('[data-testid="stException"]').all_inner_texts()
        self.errors += [f"{self.name}: {b[:200]}" for b in boxes]

    async def nav(self, name: str, wait=None) -> None:
        link = self.page.locator('[data-testid="stSidebarNav"] a', has_text=name).first
        await self.act(link.click(), wait=wait)


async def demo_flow(s: Session, url: str) -> None:
    p = s.page
    await s.act(p.goto(url), wait=p.get_by_role("heading", name="DELIFT Studio"))
    await s.nav("Data")
    await s.act(p.get_by_role("button", name="Load the demo data").click(),
                wait=p.get_by_text("Demo data loaded"))
    await s.nav("Kernel")
    await s.act(p.get_by_text("DELIFT-SE (sentence embedding)").click())
    await s.act(p.get_by_role("button", name="Compute the kernel").click(),
                wait=p.get_by_text("Kernel ready"))
    await s.nav("Select", wait=p.get_by_text("72 of 240", exact=True))
    await s.nav("Review", wait=p.get_by_text("Override").first)


async def utility_kernel(page, url: str, rows: int) -> float:
    """The utility kernel of the first ``rows`` rows from the Kernel page; its seconds."""
    await page.goto(url)
    await idle(page)
    await page.locator('[data-testid="stSidebarNav"] a', has_text="Data").first.click()
    await idle(page)
    await page.get_by_role("button", name="Load the demo data").click()
    await page.get_by_text("Demo data loaded").wait_for(timeout=TIMEOUT_MS)
    await idle(page)
    await page.locator('[data-testid="stSidebarNav"] a', has_text="Kernel").first.click()
    await idle(page)
    await page.get_by_text("DELIFT (model utility)").first.click()
    await idle(page)
    switch = page.get_by_role("switch", name=re.compile(r"^Learned kernel"))
    if await switch.is_checked():
        await page.locator('[data-testid="stCheckbox"]', has_text="Learned kernel").get_by_text(
            re.compile(r"^Learned kernel")).first.click()
        await page.locator('input[aria-label="Exact passes"]').wait_for(state="detached")
        await idle(page)
    box = page.locator('input[aria-label^="Use the first N rows of the pool"]')
    want = page.locator('[data-testid="stMetric"]', has_text="Forward passes").locator(
        '[data-testid="stMetricValue"]', has_text=re.compile(rf"^{rows * rows + rows:,}$"))
    for _ in range(5):
        await box.fill(str(rows))
        await box.press("Enter")
        try:
            await want.wait_for(timeout=15_000)
            break
        except Exception:  # noqa: BLE001 - a rerun replaced the input: type it again
            await idle(page)
    await idle(page)
    await page.get_by_role("button", name="Compute the kernel").click()
    ready = page.get_by_text(re.compile(rf"Kernel ready: .* on {rows} rows"))
    await ready.wait_for(timeout=TIMEOUT_MS)
    return float(re.search(r"\(([\d.]+) s\)", await ready.inner_text()).group(1))


async def run(url: str, sessions: int, rows: int) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            async def context():
                ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
                page = await ctx.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                return page

            upage = await context()
            kernel = asyncio.create_task(utility_kernel(upage, url, rows))
            flows = []
            if sessions:
                await upage.get_by_text(re.compile(r"utility pool: \d+ / \d+")).wait_for()
                users = [Session(await context(), f"session {k + 1}") for k in range(sessions)]
                flows = users
                t0 = time.perf_counter()
                await asyncio.gather(*(demo_flow(u, url) for u in users))
                flow_s = time.perf_counter() - t0
            seconds = await kernel
        finally:
            await browser.close()
    out: dict = {"utility_seconds": seconds}
    if flows:
        times = sorted(t for u in flows for t in u.times)
        out.update(interactions=len(times), median_s=statistics.median(times),
                   p95_s=times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))],
                   max_s=times[-1], flows_s=flow_s,
                   errors=[e for u in flows for e in u.errors])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: install Debian's Chromium")
    results = {}
    for arm, n in (("alone", 0), ("loaded", args.sessions)):
        with streamlit_server(fresh_env(), f"streamlit-bench-served-{arm}.log") as url:
            results[arm] = asyncio.run(run(url, n, args.rows))
        print(f"{arm}: utility kernel of {args.rows} rows {results[arm]['utility_seconds']:.1f} s",
              flush=True)
    loaded = results["loaded"]
    results["settings"] = {"sessions": args.sessions, "rows": args.rows, "cpus": os.cpu_count()}
    results["utility_slowdown"] = loaded["utility_seconds"] / results["alone"]["utility_seconds"]
    print(f"{args.sessions} sessions' demo flow (embedding kernel) beside one utility kernel: "
          f"{loaded['interactions']} interactions, median {loaded['median_s']:.2f} s, "
          f"p95 {loaded['p95_s']:.2f} s, max {loaded['max_s']:.2f} s; all flows done in "
          f"{loaded['flows_s']:.1f} s; page errors: {len(loaded['errors'])}")
    print(f"utility kernel loaded / alone: {results['utility_slowdown']:.2f}x")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    if loaded["errors"]:
        sys.exit("page errors: " + "; ".join(loaded["errors"][:5]))


if __name__ == "__main__":
    main()
