"""Golden losses: the per-step losses of a 10-step tiny UTAMoE recipe equal a committed curve.

Any change that alters training numerics (data order, initialisation, sequence layout, loss
terms, the optimiser) fails here loudly instead of drifting unnoticed. When a change is
*meant* to alter the numbers, regenerate the curve and commit it with the change:

    UTAMOE_UPDATE_GOLDEN=1 python -m pytest tests/train/test_golden_losses.py

The run uses one thread and seeds everything (its own dataset, codec and model), so it
depends neither on test order nor on the machine's core count.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from utamoe.shapes import ShapesWorldConfig, write_dataset
from utamoe.train.config import build_config
from utamoe.train.trainer import Trainer
from utamoe.vision.tokenizer import TokenizerConfig, VQTokenizer

from .conftest import tiny_recipe

GOLDEN = Path(__file__).resolve().parent.parent / "assets" / "golden_losses.json"
STAGES = [
    {"name": "pretrain", "steps": 4},
    {"name": "stage1", "steps": 3, "surgery": ["split_ffn"], "frozen": ["lm.layers.*.self_attn.*"]},
    {"name": "stage2", "steps": 3, "surgery": ["upcycle"],
     "moe": {"num_experts": 4, "top_k": 1}, "lora": {"rank": 4, "alpha": 8},
     "trainable": ["*lora_*", "lm.layers.*.mlp.*", "gen_head.*", "lm_head.*"]},
]
KEYS = ("loss", "loss_und", "loss_gen")


def _curve(root: Path) -> list[dict]:
    write_dataset(root / "data", ShapesWorldConfig(seed=3, sizes={"train": 12, "val": 0,
                                                                   "test": 0, "heldout": 0}))
    torch.manual_seed(0)
    VQTokenizer(TokenizerConfig(base_channels=32, channel_multiplier=(1, 1, 2, 2),
                                latent_channels=32, codebook_size=32)).save_pretrained(root / "vq")
    cfg = build_config(tiny_recipe(root, root / "run", STAGES, ckpt_every=100))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, root / "run", progress=False).run()
    finally:
        torch.set_num_threads(threads)
    recs = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return [{"global_step": r["global_step"], **{k: r[k] for k in KEYS if k in r}}
            for r in recs if "loss" in r]


def test_tiny_recipe_losses_equal_the_golden_curve(tmp_path):
    curve = _curve(tmp_path)
    assert [r["global_step"] for r in curve] == list(range(1, 11))
    if os.environ.get("UTAMOE_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(curve, indent=1) + "\n")
        pytest.skip(f"golden curve rewritten: {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    assert len(curve) == len(golden)
    for got, want in zip(curve, golden):
        assert got.keys() == want.keys(), (got, want)
        for k in KEYS:
            if k in want:
                assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), (got["global_step"], k)
