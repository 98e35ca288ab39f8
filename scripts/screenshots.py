"""Regenerate the README's pictures of the studio from the demo flow, in Chromium.

    .venv/bin/python scripts/screenshots.py

Runs the browser tests that walk the demo flow and open the report (each saves its page
screenshots to test-artifacts/), then copies the pictures the README shows into
docs/screenshots/: the DELIFT-SE demo flow, the report, and the learned utility kernel of the
whole demo pool (the Kernel page's CPU default).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
OUT = ROOT / "docs" / "screenshots"
TESTS = ["tests/test_e2e_browser.py::test_demo_flow_in_chromium",
         "tests/test_e2e_browser.py::test_report_opens_in_chromium_without_errors",
         "tests/test_e2e_browser.py::test_learned_kernel_cancel_then_resume_in_chromium",
         "tests/test_e2e_browser.py::test_evaluate_compares_methods_with_their_cost_in_chromium"]
PICTURES = ("0_home.png", "1_data.png", "2_kernel.png", "2_kernel_learned.png", "3_select.png",
            "4_explore_heatmap.png", "4_explore_map.png", "4_explore_explain.png",
            "5_review.png", "6_download.png", "7_evaluate_methods.png", "8_audit.png",
            "report.png")


def main() -> int:
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *TESTS], cwd=ROOT)
    if run.returncode != 0:
        print("the browser tests failed: docs/screenshots/ left as it was", file=sys.stderr)
        return run.returncode
    OUT.mkdir(parents=True, exist_ok=True)
    for name in PICTURES:
        shutil.copyfile(ARTIFACTS / name, OUT / name)
        print(f"docs/screenshots/{name} <- test-artifacts/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
