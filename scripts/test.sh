#!/usr/bin/env bash
# Quickstart command 2: install what the tests need, then run the default (fast) test suite.
# Extra arguments go to pytest (e.g. `-m slow` for the long tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
bash scripts/install.sh --dev
PY=${PYTHON:-python3}
"$PY" -m ruff check .
"$PY" -m pytest -q -n 2 "$@"
