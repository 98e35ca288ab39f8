#!/usr/bin/env bash
# Create .venv and install DELIFT Studio with everything it needs (CPU torch first, so that pip
# does not pull several GB of CUDA packages). Pass --test to add the test tools and Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "--test" ]; then
  python -m pip install -q -r requirements-test.txt -e .
  if [ ! -x /usr/bin/chromium ]; then
    # Playwright cannot download its own browser here; the tests drive Debian's Chromium.
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
else
  python -m pip install -q -r requirements.txt -e .
fi
