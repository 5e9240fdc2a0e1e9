#!/usr/bin/env bash
# Install utamoe (editable) into the active Python, plus the dev tools with `--dev`.
# torch: installed (pinned 2.13.0, the CPU build) only when no torch is importable;
# an existing torch is pinned by a constraint so that nothing upgrades or replaces it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[install] no torch found: installing torch==2.13.0"
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
tv=$("$PY" -c "import torch; print(torch.__version__)")
constraints=$(mktemp)
echo "torch==${tv}" >"$constraints"
echo "[install] keeping torch ${tv}; installing utamoe${extra}"
"$PY" -m pip install --quiet --disable-pip-version-check -c "$constraints" -e ".${extra}"
rm -f "$constraints"
