"""The quick demo, twice, in fresh processes with different PYTHONHASHSEED: same metrics,
same tokenizers, same weights (same thread count; another one changes the numerics)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
ARTEFACTS = ("text_tokenizer/tokenizer.json", "image_tokenizer/model.safetensors",
             "model/model.safetensors", "eval/predictions.jsonl")


def _demo(out: Path, hash_seed: str) -> tuple[dict, dict]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "utamoe.cli", "demo", "--quick", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("seconds")
    files = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in ARTEFACTS}
    return metrics, files


def test_quick_demo_is_reproducible_across_processes_and_hash_seeds(tmp_path):
    a = _demo(tmp_path / "a", "1")
    b = _demo(tmp_path / "b", "2")
    assert a[0] == b[0]
    assert a[1] == b[1]
