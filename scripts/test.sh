#!/usr/bin/env bash
# Set up everything the tests need (packages, Chromium) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
. .venv/bin/activate
python -m pytest -q -rs --durations=15 "$@"
