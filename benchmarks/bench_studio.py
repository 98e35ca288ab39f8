"""Is the studio slower than the CLI? The same utility kernel computed both ways, side by side.

    python benchmarks/bench_studio.py [--rows 8] [--repeats 2]

Each arm starts from its own fresh cache folder (the dequantised default model is linked in, so
neither pays for dequantising; no pairs are reused): the CLI arm runs ``delift kernel`` in a new
process; the studio arm runs ``streamlit run app.py`` and drives Chromium through Data -> Kernel ->
Compute (the "studio-unwatched" arm closes the browser once the job has started, to tell
the cost of a watching browser and its progress polling from the server's own; "studio-gc-on"
turns Streamlit's full garbage collection after every script run back on, which the project's
config turns off, to show what that setting is worth). Printed per arm: wall time from the command (CLI) or the click (studio) to the kernel,
the kernel's own compute seconds (``meta["seconds"]``, model loading excluded), and the
studio/CLI ratios. The arms alternate (CLI, studio, CLI, studio, ...) so slow drift in the
machine's load hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from delift_core.lm.models import cache_dir


def fresh_cache() -> Path:
    """A new cache folder with the user's model folder linked in."""
    root = Path(tempfile.mkdtemp(prefix="delift-bench-studio-"))
    (cache_dir() / "models").mkdir(parents=True, exist_ok=True)
    (root / "models").symlink_to(cache_dir() / "models")
    return root


def cli_arm(rows: int) -> dict:
    """``delift kernel`` on the first ``rows`` demo rows in a new process."""
    cache = fresh_cache()
    out = cache / "out"
    t = time.time()
    subprocess.run([sys.executable, "-c", "import sys; from delift_core.cli import main; "
                    "sys.exit(main())", "kernel", "--pool", "demo:pool",
                    "--limit", str(rows), "--kernel", "utility", "--out", str(out)],
                   check=True, cwd=ROOT, env=dict(os.environ, DELIFT_CACHE_DIR=str(cache)),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.time() - t
    meta = json.loads((out / "kernel_meta.json").read_text())
    return {"wall_s": wall, "compute_s": float(meta["seconds"])}


def studio_arm(rows: int, watch: bool = True, options: tuple[str, ...] = ()) -> dict:
    """The Kernel page in Chromium: demo data, DELIFT kernel of ``rows`` rows, Compute.

    ``watch=False`` closes the browser once the job has started (its progress bar is shown), so
    nothing polls or renders while the server computes; the kernel's compute time is then read
    from the speed the job records in the cache folder (``speeds.json``: its ``seconds``)."""
    from playwright.sync_api import sync_playwright
    from test_e2e_browser import (CHROMIUM, CHROMIUM_ARGS, open_utility_kernel_page,
                                  set_first_rows, streamlit_server)

    cache = fresh_cache()
    env = dict(os.environ, DELIFT_CACHE_DIR=str(cache))
    with streamlit_server(env, "streamlit-bench.log", options) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(1_800_000)
            open_utility_kernel_page(page, url)
            set_first_rows(page, rows)
            t = time.time()
            page.get_by_role("button", name="Compute the kernel").click()
            if watch:
                ready = page.get_by_text(re.compile(rf"Kernel ready: .* on {rows} rows"))
                ready.wait_for()
                wall = time.time() - t
                compute = float(re.search(r"\(([\d.]+) s\)", ready.inner_text()).group(1))
            else:
                page.locator('[data-testid="stProgress"]').first.wait_for()
                browser.close()
                speeds = cache / "speeds.json"
                while not speeds.exists():  # written when the job's kernel is done
                    time.sleep(0.5)
                wall = time.time() - t
                compute = _recorded_seconds(speeds)
        finally:
            browser.close()
    return {"wall_s": wall, "compute_s": compute}


def _recorded_seconds(speeds: Path) -> float:
    """The compute seconds of the one kernel recorded in a fresh cache's speeds.json."""
    for _ in range(20):  # it is written atomically, but may be read as it is replaced
        try:
            (runs,) = json.loads(speeds.read_text()).values()
            return float(runs[-1]["seconds"])
        except (ValueError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{speeds} could not be read")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    arms = {"cli": cli_arm, "studio": studio_arm,
            "studio-unwatched": lambda rows: studio_arm(rows, watch=False),
            # Streamlit's default: a full garbage collection after every script run (the
            # project's .streamlit/config.toml turns it off; this arm turns it back on)
            "studio-gc-on": lambda rows: studio_arm(rows, options=("--runner.postScriptGC",
                                                                   "true"))}
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for k in range(args.repeats):
        for arm, fn in arms.items():
            r = fn(args.rows)
            runs[arm].append(r)
            print(f"run {k + 1} {arm:16s}: wall {r['wall_s']:6.1f} s, kernel compute "
                  f"{r['compute_s']:6.1f} s", flush=True)
    med = {arm: {m: statistics.median(r[m] for r in rs) for m in ("wall_s", "compute_s")}
           for arm, rs in runs.items()}
    print(f"{args.rows} demo rows ({args.rows ** 2 + args.rows} passes), float32, medians of "
          f"{args.repeats}:")
    for m, label in (("compute_s", "kernel compute"), ("wall_s", "wall (with model load)")):
        print(f"  {label}: CLI {med['cli'][m]:.1f} s, studio {med['studio'][m]:.1f} s, "
              f"studio/CLI = {med['studio'][m] / med['cli'][m]:.2f}x; studio with the browser "
              f"closed {med['studio-unwatched'][m]:.1f} s = "
              f"{med['studio-unwatched'][m] / med['cli'][m]:.2f}x; studio with Streamlit's "
              f"post-run GC on {med['studio-gc-on'][m]:.1f} s = "
              f"{med['studio-gc-on'][m] / med['cli'][m]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
