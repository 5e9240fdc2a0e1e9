"""MoME's cost: the training step of MoVE (3 encoders, ADT, router) against one encoder, and of
MoLE (4 instance-routed adapters per FFN) against no adapters, side by side in one run.

Four models built from configs/mome.yaml's model (the ShapesWorld-sized backbone of
configs/base.yaml), trained in turns on the same understanding batches (caption, VQA, POPE,
grounding; synthetic ShapesWorld samples), fused AdamW, fp32:
  one        the plain single-encoder path (the recipe's ViT encoder as `model.vision`)
  one+mole   the same + MoLE
  move       the recipe's MoVE mixture (ViT, ResNet, frozen VQ-codec encoder; ADT; router)
  move+mole  configs/mome.yaml's model
The instruction embedding is the backbone's own (sentence_encoder null): a frozen sentence
encoder runs once per distinct instruction and is cached, so it is not a per-step cost.

    python benchmarks/mome_step.py [--steps 20] [--batch 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/README.md

import copy  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from train_throughput import step  # noqa: E402 (one optimiser step, the same in both benchmarks)

from utamoe.data.sequences import collate, training_sequences  # noqa: E402
from utamoe.hf.parts import HFPart  # noqa: E402
from utamoe.model.unified import UnifiedModel  # noqa: E402
from utamoe.shapes import ShapesWorldConfig, generate_dataset  # noqa: E402
from utamoe.text.tokenizer import SpecialIds, train_text_tokenizer  # noqa: E402
from utamoe.train.config import load_config  # noqa: E402
from utamoe.vision.tokenizer import TokenizerConfig, VQTokenizer  # noqa: E402

UND = ("caption", "vqa", "pope", "grounding")


def build(base, tok, move: bool, mole: bool) -> UnifiedModel:
    cfg = copy.deepcopy(base)
    cfg.sentence_encoder = None
    cfg.vision = HFPart(config=dict(cfg.move.encoders[0].config))  # the ViT, for the plain path
    cfg.move = cfg.move if move else None
    cfg.mole = cfg.mole if mole else None
    cfg.vocab_size, cfg.num_codes, cfg.code_grid = len(tok), 256, 6
    cfg.und_slot_id = SpecialIds.of(tok).und_slot
    torch.manual_seed(0)
    return UnifiedModel.build(cfg, VQTokenizer(TokenizerConfig()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = load_config("mome").model
    world = ShapesWorldConfig(sizes={"train": 50, "val": 0, "test": 0, "heldout": 0})
    samples = [s for s in generate_dataset(world)["train"] if s.task in UND]
    tok = train_text_tokenizer([t for s in samples for t in (s.prompt, s.target) if t], 512)
    models = {"one": build(base, tok, False, False), "one+mole": build(base, tok, False, True),
              "move": build(base, tok, True, False), "move+mole": build(base, tok, True, True)}
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, fused=True)
            for k, m in models.items()}
    rng = np.random.default_rng(0)
    data = {}
    for k, m in models.items():  # the same samples; each model's own slot count per image
        enc, r = m.sequence_encoder(tok), np.random.default_rng(0)
        picks = [[samples[i] for i in r.integers(len(samples), size=args.batch)]
                 for _ in range(args.steps + 2)]
        data[k] = [collate(training_sequences(enc, p, 0.0, rng), enc.special.pad) for p in picks]
    seconds = dict.fromkeys(models, 0.0)
    for i in range(args.steps + 2):
        for k, m in models.items():  # in turns, so load changes hit every model alike
            t = time.perf_counter()
            step(m, opts[k], data[k][i])
            if i >= 2:
                seconds[k] += time.perf_counter() - t
    ms = {k: 1000 * s / args.steps for k, s in seconds.items()}
    result = {"steps": args.steps, "batch": args.batch, "threads": torch.get_num_threads(),
              "ms_per_step": {k: round(v, 1) for k, v in ms.items()},
              "params": {k: sum(p.numel() for n, p in m.named_parameters()
                                if not n.startswith("image_tokenizer.")) for k, m in models.items()},
              "ratio_move_over_one": round(ms["move"] / ms["one"], 3),
              "ratio_mole_overhead_one": round(ms["one+mole"] / ms["one"], 3),
              "ratio_mole_overhead_move": round(ms["move+mole"] / ms["move"], 3),
              "load": round(os.getloadavg()[0], 2)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"training step, ms ({args.steps} steps x batch {args.batch} understanding samples, "
          f"{result['threads']} threads, load {result['load']}):")
    for k, v in ms.items():
        print(f"  {k:10s} {v:7.1f} ms   {result['params'][k] / 1e6:.2f} M params")
    print(f"  MoVE (3 encoders) / one encoder: {result['ratio_move_over_one']:.2f}x; MoLE overhead: "
          f"{result['ratio_mole_overhead_one']:.2f}x on one encoder, "
          f"{result['ratio_mole_overhead_move']:.2f}x on MoVE")


if __name__ == "__main__":
    main()
