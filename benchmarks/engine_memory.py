"""Peak memory per process of the distributed engines, with and without activation checkpointing.

A small (not tiny) UTAMoE recipe: Llama backbone d 384, 6 layers, FFN 1536, 6 heads / 2 KV
heads; SigLIP d 192, 2 layers; stages pretrain / split FFNs / TA-MoE (4 experts per group,
top-1) with LoRA r8, 2 steps each; 16 samples per process. Each engine runs as 2 CPU
processes (gloo) through `accelerate launch --config_file configs/accelerate/ENGINE.yaml`,
with tests/train/ddp_worker.py as the entry point, which writes every process's peak resident
memory (VmHWM; torch keeps no allocator statistics on the CPU) after the run. The assets
(a small ShapesWorld dataset and a random VQ tokenizer) are made in OUT first.

    python benchmarks/engine_memory.py [--engines ddp,fsdp,zero3] [--out runs/engine_memory]

On a GPU machine the same launches run on the GPUs; read torch.cuda.max_memory_allocated
there instead (not collected here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "train" / "ddp_worker.py"
STAGES = [
    {"name": "pretrain", "steps": 2},
    {"name": "stage1", "steps": 2, "surgery": ["split_ffn"], "frozen": ["lm.layers.*.self_attn.*"]},
    {"name": "stage2", "steps": 2, "surgery": ["upcycle"], "moe": {"num_experts": 4, "top_k": 1},
     "lora": {"rank": 8, "alpha": 16},
     "trainable": ["*lora_*", "lm.layers.*.mlp.*", "gen_head.*", "lm_head.*"]},
]


def make_assets(root: Path) -> Path:
    from utamoe.shapes import ShapesWorldConfig, write_dataset
    from utamoe.vision.tokenizer import TokenizerConfig, VQTokenizer

    if not (root / "vq").is_dir():
        write_dataset(root / "data", ShapesWorldConfig(seed=0, sizes={"train": 64, "val": 2,
                                                                      "test": 4, "heldout": 2}))
        VQTokenizer(TokenizerConfig(base_channels=32, channel_multiplier=(1, 1, 2, 2),
                                    latent_channels=32, codebook_size=32)).save_pretrained(root / "vq")
    return root


def recipe(assets: Path, out: Path, checkpointing: bool) -> dict:
    """The tests' tiny recipe (tests/train/conftest.py), widened."""
    sys.path.insert(0, str(ROOT))
    from tests.train.conftest import tiny_recipe

    raw = tiny_recipe(assets, out, STAGES, batch_size=16, ckpt_every=100,
                      activation_checkpointing=checkpointing)
    raw["run"]["seed"] = 3
    raw["model"]["backbone"]["config"].update(hidden_size=384, intermediate_size=1536,
                                              num_hidden_layers=6, num_attention_heads=6,
                                              num_key_value_heads=2)
    raw["model"]["vision"]["config"].update(hidden_size=192, intermediate_size=768,
                                            num_hidden_layers=2)
    return raw


def run_one(engine: str, checkpointing: bool, assets: Path, out: Path, port: int) -> dict:
    name = f"{engine}-ckpt{int(checkpointing)}"
    run = out / name
    cfg, opts = out / f"{name}.json", out / "opts.json"
    cfg.write_text(json.dumps(recipe(assets, run, checkpointing)))
    opts.write_text(json.dumps({"memory": True}))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / f"{engine}.yaml"), "--num_processes", "2",
           "--main_process_port", str(port), str(WORKER), str(cfg), str(run), str(opts)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with (out / f"{name}.log").open("w") as log:
        done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{name} failed ({done.returncode}): see {out / f'{name}.log'}")
    peaks = [json.loads((run / f"memory-{r}.json").read_text())["vm_hwm_mib"] for r in (0, 1)]
    return {"engine": engine, "activation_checkpointing": checkpointing, "peak_mib": peaks,
            "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", default="ddp,fsdp,zero3")
    ap.add_argument("--out", default="runs/engine_memory")
    ap.add_argument("--port", type=int, default=29650)
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    assets = make_assets(out / "assets")
    rows = []
    for i, engine in enumerate(args.engines.split(",")):
        for j, ckpt in enumerate((False, True)):
            shutil.rmtree(out / f"{engine}-ckpt{int(ckpt)}", ignore_errors=True)  # a fresh run
            rows.append(run_one(engine, ckpt, assets, out, args.port + 2 * i + j))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| engine | activation checkpointing | process 0 (MiB) | process 1 (MiB) | wall s |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['engine']} | {'on' if r['activation_checkpointing'] else 'off'} | "
              f"{r['peak_mib'][0]:.0f} | {r['peak_mib'][1]:.0f} | {r['seconds']:.0f} |")
    (out / "memory.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
