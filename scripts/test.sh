#!/usr/bin/env bash
# Quickstart command 2: install what the tests need, then run the default (fast) test suite.
# Extra arguments go to pytest (e.g. `-m slow` for the long tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
bash scripts/install.sh --dev
# The web page's browser test drives Debian's Chromium (Playwright uses the system binary);
# without it (or without root and apt-get) that one test is skipped with its reason.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing chromium for the browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "[test] chromium could not be installed; the browser test will be skipped"
fi
PY=${PYTHON:-python3}
"$PY" -m ruff check .
"$PY" -m pytest -q -n 2 "$@"
