"""benchmarks/gpu_suite.py, the one-run GPU measurement of issue 16, runs its whole path on CPU
at toy sizes (--smoke): the MoE layer table, the ShapesWorld recipe, the summary file."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.mark.slow
def test_gpu_suite_smoke_run_writes_every_figure(tmp_path):
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {(r["case"], r["pass"]) for r in summary["moe_layer"]} == {
        (c, p) for c in ("e8k2-uniform", "e64k8-uniform") for p in ("fwd", "fwd+bwd")}
    assert all("ours/hf_grouped_mm" in r["ratios"] for r in summary["moe_layer"])
    assert set(summary["utamoe"]["tokens_per_s"]) == {"pretrain", "stage1", "stage2"}
    assert all(v > 0 for v in summary["utamoe"]["tokens_per_s"].values())
