"""KV cache speed-up for image sampling: codes per second with and without the cache, one run.

Builds the default ShapesWorld-sized unified model (random weights; speed does not
depend on them) with an image of GRID x GRID codes (default 8 x 8 = 64 codes),
samples a batch of images with classifier-free guidance, once recomputing the
whole sequence at every step and once with the KV cache, checks both produce the
same codes (greedy), and prints the ratio. Target: cache >= 5x faster at 64 codes.

    python benchmarks/generation_cache.py [--grid 8] [--batch 4] [--moe] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/README.md

import torch  # noqa: E402

from utamoe.data.sequences import Encoder  # noqa: E402
from utamoe.infer import Engine, Request, SamplingConfig  # noqa: E402
from utamoe.model.config import UnifiedConfig  # noqa: E402
from utamoe.model.unified import UnifiedModel  # noqa: E402
from utamoe.moe import MoEConfig  # noqa: E402
from utamoe.text.tokenizer import SpecialIds, train_text_tokenizer  # noqa: E402


def build(grid: int, moe: bool):
    tok = train_text_tokenizer(["a red circle at the top left and a blue square"] * 20, 300)
    special = SpecialIds.of(tok)
    cfg = UnifiedConfig(vocab_size=len(tok), num_codes=256, code_grid=grid, und_slot_id=special.und_slot,
                        moe=MoEConfig() if moe else None)
    torch.manual_seed(0)
    model = UnifiedModel.build(cfg).eval()
    return model, Encoder(tok, special, model.und_tokens, image_codes=None)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=8, help="codes per side (8 -> 64 codes)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--moe", action="store_true", help="TA-MoE backbone instead of dense")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    model, enc = build(args.grid, args.moe)
    prompts = ["a red circle at the top left"] * args.batch
    sampling = SamplingConfig(temperature=0.0, cfg_scale=3.0)
    reqs = [Request("t2i", p, sampling=sampling) for p in prompts]

    def run(cache: bool) -> list[list[int]]:
        got = Engine(model, enc, use_cache=cache).generate(reqs, shared_sampling=True, pixels=False)
        return [r.codes for r in got]

    run(True)  # warm-up
    cached, t_cache = timed(lambda: run(True))
    plain, t_plain = timed(lambda: run(False))
    result = {
        "codes": args.grid**2, "batch": args.batch, "moe": args.moe,
        "threads": torch.get_num_threads(), "no_cache_s": round(t_plain, 3),
        "cache_s": round(t_cache, 3), "speedup": round(t_plain / t_cache, 2),
        "same_codes": cached == plain,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['codes']} codes x {args.batch} images (CFG, {'TA-MoE' if args.moe else 'dense'}), "
              f"{result['threads']} threads: no cache {t_plain:.2f} s, cache {t_cache:.2f} s, "
              f"speed-up {result['speedup']}x, identical codes: {result['same_codes']}")


if __name__ == "__main__":
    main()
