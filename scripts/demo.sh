#!/usr/bin/env bash
# Quickstart command 1: install what is needed, then run the main job on the built-in default:
# `utamoe demo` (ShapesWorld data, tokenizers, the UTAMoE recipe, evaluation). Extra arguments
# go to it (e.g. --quick, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
# The demo is the machine's main job: let OpenMP threads busy-wait (about a third faster on a
# quiet machine) instead of utamoe's PASSIVE default, which protects machines shared with
# other jobs (docs: README, "Reproducibility and speed on CPU"). An explicit setting wins.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-ACTIVE}"
bash scripts/install.sh
PY=${PYTHON:-python3}
"$PY" -m utamoe.cli demo "$@"
