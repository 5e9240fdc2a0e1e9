"""Sequence packing: training tokens/s of packed against padded batches, dense and TA-MoE, in one run.

Both models are the demo's (configs/utamoe.yaml on configs/base.yaml): the dense model of
its `pretrain` stage and the TA-MoE model of its stage 2 (2 groups x 4 experts, top-2 in
the group, 1 shared expert). Batches are the trainer's own (utamoe.train.data.TrainData,
the demo's mixture: every ShapesWorld task, equal weights, cfg dropout 0.1; random image
codes stand in for the VQ tokenizer), drawn at the same positions twice:

  padded   right-padded to the longest sequence (`collate`, the default today); the
           TA-MoE layers skip the padding, attention, norms, heads and the dense FFN do not;
  packed   the same samples packed into rows of at most --pack-tokens tokens
           (utamoe.data.packing), block-diagonal causal attention (a 4D SDPA mask on CPU);
           several budgets (`--pack-tokens 160,256,512`) are timed side by side, as
           `packed@N`: wider rows mean fewer slots but more attention per row.

Before timing, each model's loss on the first batch must agree packed and padded (the
same math). Each step is forward + backward + fused AdamW, fp32; the four contenders run
in turns on every batch so that load changes hit all alike; the first 2 batches warm
up. tokens/s counts real (non-padding) tokens, so the ratio packed/padded is the speed-up
of the same training. Target (issue 17): >= 1.25x for both models.

    python benchmarks/packing.py [--steps 20] [--batch 32] [--pack-tokens 160,256] [--json]
    python benchmarks/packing.py --steps 2       # smoke test (seconds; figures meaningless)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/README.md
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_throughput import build  # noqa: E402

from utamoe.moe import MoEConfig  # noqa: E402
from utamoe.shapes import ShapesWorldConfig, generate_dataset  # noqa: E402
from utamoe.text.tokenizer import train_text_tokenizer  # noqa: E402
from utamoe.train.config import StageConfig, load_config  # noqa: E402
from utamoe.train.data import TrainData  # noqa: E402


def demo_models(tok) -> dict:
    """The demo's dense (pretrain) and TA-MoE (stage 2) models, same initial weights."""
    recipe = load_config("utamoe")
    base, moe = recipe.model, recipe.stages[-1].moe
    assert isinstance(moe, MoEConfig) and moe.routing == "task_aware"
    return {"dense": build(base, tok, None, 1), "ta_moe": build(base, tok, moe, 1)}


def demo_batches(data: TrainData, steps: int, batch: int, budgets: list[int]) -> dict[str, list]:
    """The same trainer batch positions, padded and packed at each budget."""
    mixture = StageConfig().mixture  # the demo recipe's stages leave the mixture at its default
    out = {}
    for kind, budget in [("padded", None)] + [(f"packed@{n}", n) for n in budgets]:
        data.pack_tokens = budget
        out[kind] = [data.batch(0, i, batch, mixture, 0.1) for i in range(steps + 2)]
    data.pack_tokens = None
    return out


def check_same_math(models, batches) -> None:
    with torch.no_grad():
        for name, model in models.items():
            want = float(model(batches["padded"][0]).loss)
            for kind in batches:
                got = float(model(batches[kind][0]).loss)
                if abs(got - want) > 1e-4 * abs(want):
                    raise SystemExit(f"{name}: {kind} loss {got} != padded loss {want}; not timing "
                                     "a different computation (run tests/model/test_packing.py)")


def step(model, opt, batch) -> None:
    model(batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(models, opts, batches) -> dict[tuple[str, str], float]:
    """Seconds per (model, kind) over the batches after the 2 warm-up ones."""
    seconds = {(m, k): 0.0 for m in models for k in batches}
    for i in range(len(batches["padded"])):
        for m, model in models.items():
            for k in batches:
                start = time.perf_counter()
                step(model, opts[m], batches[k][i])
                if i >= 2:
                    seconds[m, k] += time.perf_counter() - start
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pack-tokens", default="256",
                    help="row budgets to time, comma-separated (train.pack_tokens)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    samples = generate_dataset(ShapesWorldConfig(sizes={"train": 60, "val": 0, "test": 0,
                                                        "heldout": 0}))["train"]
    tok = train_text_tokenizer([t for s in samples for t in (s.prompt, s.target) if t], 512)
    models = demo_models(tok)
    # One optimiser per model, stepped by both kinds in turn: the weights drift by a tiny lr,
    # which does not change the work of a step (timing only).
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True) for k, m in models.items()}
    data = TrainData(samples, models["dense"].sequence_encoder(tok), seed=0)
    budgets = [int(n) for n in args.pack_tokens.split(",")]
    batches = demo_batches(data, args.steps, args.batch, budgets)
    check_same_math(models, batches)
    seconds = measure(models, opts, batches)
    timed = {k: v[2:] for k, v in batches.items()}
    kinds, packed = list(timed), [k for k in timed if k != "padded"]
    tokens = sum(int(b.attention_mask.sum()) for b in timed["padded"])
    assert all(tokens == sum(int(b.attention_mask.sum()) for b in timed[k]) for k in packed)
    result = {"steps": args.steps, "batch": args.batch, "pack_tokens": budgets,
              "threads": torch.get_num_threads(),
              "efficiency": {k: round(tokens / sum(b.attention_mask.numel() for b in timed[k]), 3)
                             for k in kinds},
              "rows_per_batch": {k: round(sum(b.input_ids.shape[0] for b in timed[k]) / len(timed[k]), 1)
                                 for k in kinds},
              "width": {k: round(sum(b.input_ids.shape[1] for b in timed[k]) / len(timed[k]), 1)
                        for k in kinds},
              "tokens_per_s": {m: {k: round(tokens / seconds[m, k], 1) for k in kinds} for m in models},
              "ratio_over_padded": {m: {k: round(seconds[m, "padded"] / seconds[m, k], 3)
                                        for k in packed} for m in models},
              "load": round(os.getloadavg()[0], 2)}
    if args.json:
        print(json.dumps(result))
        return
    eff, rows, width = result["efficiency"], result["rows_per_batch"], result["width"]
    print(f"training tokens/s, packed vs padded ({args.steps} steps x batch {args.batch}, demo "
          f"mixture, {result['threads']} threads, load {result['load']}; target >= 1.25x):")
    for k in kinds:
        print(f"  {k:11s} batches: {rows[k]:5.1f} rows x {width[k]:5.1f} tokens, "
              f"{eff[k]:.0%} real tokens")
    for m in models:
        tps, ratio = result["tokens_per_s"][m], result["ratio_over_padded"][m]
        print(f"  {m:7s} padded {tps['padded']:8.0f}" + "".join(
            f"  {k} {tps[k]:8.0f} ({ratio[k]:.3f}x)" for k in packed))


if __name__ == "__main__":
    main()
