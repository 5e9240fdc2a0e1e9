"""A tiny dataset, a tiny (untrained) image tokenizer and a tiny recipe, shared by the training tests."""

from __future__ import annotations

import pytest

from utamoe.shapes import ShapesWorldConfig, write_dataset
from utamoe.vision.tokenizer import TokenizerConfig, VQTokenizer


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    write_dataset(root / "data", ShapesWorldConfig(seed=0, sizes={"train": 12, "val": 2, "test": 4,
                                                                   "heldout": 2}))
    vq = VQTokenizer(TokenizerConfig(base_channels=32, channel_multiplier=(1, 1, 2, 2),
                                     latent_channels=32, codebook_size=32))
    vq.save_pretrained(root / "vq")
    return root


def tiny_recipe(assets, out, stages=None, **train) -> dict:
    """A config mapping for `build_config` (tiny model, tiny steps)."""
    return {
        "run": {"out": str(out), "seed": 0},
        "data": {"dir": str(assets / "data")},
        "tokenizers": {"image": str(assets / "vq"), "text_vocab_size": 300},
        "model": {
            "backbone": {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                    "num_hidden_layers": 2, "num_attention_heads": 4,
                                    "num_key_value_heads": 2, "max_position_embeddings": 256}},
            "vision": {"config": {"model_type": "siglip_vision_model", "image_size": 48,
                                  "patch_size": 16, "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 1, "num_attention_heads": 4}},
            "code_embed_dim": 8,
        },
        "train": {"batch_size": 6, "log_every": 1, "ckpt_every": 2, "warmup_steps": 1, "lr": 3e-3,
                  **train},
        "stages": stages or [{"name": "pretrain", "steps": 4}],
    }


UTAMOE_STAGES = [
    {"name": "pretrain", "steps": 3},
    {"name": "stage1", "steps": 3, "surgery": ["split_ffn"], "frozen": ["lm.layers.*.self_attn.*"]},
    {"name": "stage2", "steps": 3, "surgery": ["upcycle"],
     "moe": {"num_experts": 4, "top_k": 1}, "lora": {"rank": 4, "alpha": 8},
     "trainable": ["*lora_*", "lm.layers.*.mlp.*", "gen_head.*", "lm_head.*"]},
]


class Killed(BaseException):
    """Stands in for the process being killed (not an Exception: nothing may catch it)."""


def kill_then_resume(cfg, run_dir, monkeypatch, kill_at: int = 6, checkpoint_at: int = 4) -> None:
    """Train `cfg` into `run_dir`, killed while step `kill_at` runs (the last checkpoint is at
    `checkpoint_at`), then resume it to the end."""
    from utamoe.train.checkpoint import latest_checkpoint, read_state
    from utamoe.train.trainer import Trainer

    original, calls = Trainer._step, {"n": 0}

    def dying_step(self, *args):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise Killed
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_step", dying_step)
    with pytest.raises(Killed):
        Trainer(cfg, run_dir, progress=False).run()
    assert read_state(latest_checkpoint(run_dir / "checkpoints"))["trainer"]["global_step"] == checkpoint_at
    monkeypatch.setattr(Trainer, "_step", original)
    Trainer(cfg, run_dir, progress=False).run(resume=True)
