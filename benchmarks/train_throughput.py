"""Training throughput: the TA-MoE model against a dense model with the same active parameters.

Both models are the ShapesWorld-sized unified model of configs/base.yaml. TA-MoE:
each FFN becomes 2 groups x 4 experts, top-2 inside the group, plus 1 shared expert,
so a token passes through 3 expert FFNs of width F. Dense equivalent: one FFN of width
3F (same active parameters and FLOPs per token). Both train on the same mixed-task
batches (synthetic ShapesWorld samples, random image codes), fused AdamW, fp32, in
turns within one run; tokens/s counts non-padding tokens. Target: TA-MoE >= 0.8x dense.

Two kinds of batch, measured in the same run:
  padded    the recipes' mixed-task batches, right-padded to the longest sequence. The
            TA-MoE layers route only real tokens; the dense MLP computes the padding too.
  unpadded  the same batches with every sequence cut to the batch's shortest length (no
            padding at all, a stand-in for sequence packing): expert compute against
            dense compute, with nothing for the MoE to skip.

    python benchmarks/train_throughput.py [--steps 20] [--batch 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/README.md

import numpy as np  # noqa: E402
import torch  # noqa: E402

from utamoe.data.sequences import collate, training_sequences  # noqa: E402
from utamoe.hf.parts import HFPart  # noqa: E402
from utamoe.model.config import UnifiedConfig
from utamoe.model.unified import UnifiedModel  # noqa: E402
from utamoe.moe import MoEConfig  # noqa: E402
from utamoe.shapes import ShapesWorldConfig, generate_dataset  # noqa: E402
from utamoe.text.tokenizer import SpecialIds, train_text_tokenizer  # noqa: E402
from utamoe.train.config import load_config  # noqa: E402


class RandomCodes(torch.nn.Module):
    """Stands in for the VQ tokenizer: speed does not depend on which codes a batch holds."""

    num_codes, grid_size = 256, 6

    def encode(self, pixels):
        g = torch.Generator().manual_seed(int(pixels.sum().item() * 1000) % 2**31)
        return torch.randint(0, self.num_codes, (pixels.shape[0], 6, 6), generator=g)


def build(base: UnifiedConfig, tok, moe: MoEConfig | None, ffn_scale: int) -> UnifiedModel:
    backbone = dict(base.backbone.config)
    backbone["intermediate_size"] *= ffn_scale
    cfg = UnifiedConfig(backbone=HFPart(config=backbone), vision=base.vision, moe=moe,
                        vocab_size=len(tok), num_codes=256, code_grid=6,
                        und_slot_id=SpecialIds.of(tok).und_slot)
    torch.manual_seed(0)
    return UnifiedModel.build(cfg, RandomCodes())


def crop(seqs):
    """Every sequence cut to the shortest one's length: a batch with no padding."""
    n = min(len(s.input_ids) for s in seqs)
    for s in seqs:
        s.input_ids, s.code_ids, s.text_loss, s.code_loss = (
            s.input_ids[:n], s.code_ids[:n], s.text_loss[:n], s.code_loss[:n])
    return seqs


def batches(encoder, samples, n: int, batch: int, unpadded: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        chosen = [samples[i] for i in rng.integers(len(samples), size=batch)]
        seqs = training_sequences(encoder, chosen, 0.1, rng)
        out.append(collate(crop(seqs) if unpadded else seqs, encoder.special.pad))
    return out


def step(model, opt, batch) -> int:
    model(batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return int(batch.attention_mask.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = load_config("utamoe").model
    samples = generate_dataset(ShapesWorldConfig(sizes={"train": 50, "val": 0, "test": 0, "heldout": 0}))["train"]
    tok = train_text_tokenizer([t for s in samples for t in (s.prompt, s.target) if t], 512)
    ta = MoEConfig(num_experts=8, top_k=2, num_shared_experts=1)
    models = {"ta_moe": build(base, tok, ta, 1), "dense_3f": build(base, tok, None, 3)}
    encoder = models["ta_moe"].sequence_encoder(tok)
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for k, m in models.items()}
    result = {"steps": args.steps, "batch": args.batch, "threads": torch.get_num_threads()}
    for kind in ("padded", "unpadded"):
        data = batches(encoder, samples, args.steps + 2, args.batch, unpadded=kind == "unpadded")
        tps, padding = measure(models, opts, data)
        result[kind] = {"tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
                        "padding_fraction": round(padding, 3),
                        "ratio_ta_over_dense": round(tps["ta_moe"] / tps["dense_3f"], 3)}
    result["load"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(result))
        return
    print(f"training tokens/s ({args.steps} steps x batch {args.batch}, {result['threads']} threads, "
          f"load {result['load']}; target TA-MoE >= 0.8x dense):")
    for kind in ("padded", "unpadded"):
        r = result[kind]
        print(f"  {kind:8s} batches ({r['padding_fraction']:.0%} padding): TA-MoE "
              f"{r['tokens_per_s']['ta_moe']:.0f}, dense 3F {r['tokens_per_s']['dense_3f']:.0f}, "
              f"ratio {r['ratio_ta_over_dense']:.3f}")


def measure(models, opts, data) -> tuple[dict[str, float], float]:
    """Real tokens per second of each model over `data` (first 2 batches warm up), padding share."""
    seconds = {k: 0.0 for k in models}
    tokens = slots = 0
    for i, batch in enumerate(data):
        for name, model in models.items():  # in turns, so load changes hit both alike
            start = time.perf_counter()
            n = step(model, opts[name], batch)
            if i >= 2:  # warm-up
                seconds[name] += time.perf_counter() - start
        if i >= 2:
            tokens, slots = tokens + n, slots + batch.attention_mask.numel()
    return {k: tokens / s for k, s in seconds.items()}, 1 - tokens / slots


if __name__ == "__main__":
    main()
