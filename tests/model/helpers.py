"""A tiny unified model, its sequence encoder and a mixed-task batch, for the model tests."""

from __future__ import annotations

import numpy as np
import torch

from utamoe.data.formats import Sample
from utamoe.data.sequences import collate
from utamoe.hf.parts import HFPart
from utamoe.model.config import UnifiedConfig
from utamoe.model.unified import UnifiedModel
from utamoe.moe import MoEConfig
from utamoe.text.tokenizer import SpecialIds, train_text_tokenizer
from utamoe.vision.tokenizer import TokenizerConfig, VQTokenizer

TEXT = ["what color is the circle ?", "red", "blue", "a red circle at the top left",
        "describe the image .", "make the circle blue", "where is the red circle ?",
        "[0.10,0.20,0.30,0.40]", "is there a square ?", "yes", "no"]


DEFAULT = object()


# The task markers of the tiny model's tokenizer, pinned as a training run pins its data's: a
# task registered later (instruct, issue 26) would otherwise grow the vocabulary and re-draw
# every tiny model's weights. A test of another task passes `tasks`.
TASKS = ("caption", "vqa", "pope", "grounding", "t2i", "edit", "reason_edit", "seg", "layout",
         "dialog")


def tiny_model(moe: MoEConfig | None = DEFAULT, seed: int = 0, backbone: dict | None = None,
               tasks=TASKS, **config):
    """(model, text tokenizer, encoder); `moe` defaults to the default TA-MoE, None = dense;
    `backbone`: the backbone's HF config (default a 2-layer Llama); `tasks`: the tokenizer's
    task markers; `config`: more UnifiedConfig fields (move, mole, sentence_encoder, ...)."""
    moe = MoEConfig() if moe is DEFAULT else moe
    torch.manual_seed(seed)
    tok = train_text_tokenizer(TEXT * 10, vocab_size=300, tasks=tasks)
    vq = VQTokenizer(TokenizerConfig(base_channels=32, channel_multiplier=(1, 1, 2, 2),
                                     latent_channels=32, codebook_size=32))
    cfg = UnifiedConfig(
        backbone=HFPart(config=backbone or dict(
            model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)),
        vision=HFPart(config=dict(model_type="siglip_vision_model", image_size=48, patch_size=16,
                                  hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=4)),
        moe=moe, vocab_size=len(tok), num_codes=vq.num_codes, code_grid=vq.grid_size,
        und_slot_id=SpecialIds.of(tok).und_slot, code_embed_dim=8, **config,
    )
    model = UnifiedModel.build(cfg, vq)
    return model, tok, model.sequence_encoder(tok)


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(n)]


def mixed_samples() -> list[Sample]:
    a, b, c = images(3)
    return [
        Sample("s0", "vqa", "what color is the circle ?", image=a, target="red"),
        Sample("s1", "t2i", "a red circle at the top left", target_image=b),
        Sample("s2", "caption", "describe the image .", image=b, target="a red circle at the top left"),
        Sample("s3", "edit", "make the circle blue", image=a, target_image=c),
        Sample("s4", "grounding", "where is the red circle ?", image=c, target="[0.10,0.20,0.30,0.40]"),
    ]


def mixed_batch(encoder, samples=None):
    seqs = [encoder.sample(s) for s in samples or mixed_samples()]
    return collate(seqs, encoder.special.pad), seqs


SIGLIP = dict(model_type="siglip_vision_model", patch_size=16, hidden_size=32, intermediate_size=64,
              num_hidden_layers=1, num_attention_heads=4)
DINO = dict(model_type="dinov2", patch_size=8, hidden_size=24, intermediate_size=48,
            num_hidden_layers=1, num_attention_heads=4)


def tiny_mome_model(seed: int = 0, mole: bool = True):
    """The three systems in one tiny model: MoVE (SigLIP, frozen DINOv2, the codec; ADT; router),
    TA-MoE FFNs, MoLE adapters (3, instance-routed) beside them."""
    from utamoe.moe.mole import MoLEConfig
    from utamoe.vision.mixture import MoVEConfig, VisionExpertConfig

    move = MoVEConfig(encoders=[VisionExpertConfig("vit", config=SIGLIP),
                                VisionExpertConfig("dino", config=DINO, frozen=True),
                                VisionExpertConfig("codec", kind="codec")],
                      query_grid=3, adt_heads=4, adt_points=2)
    return tiny_model(MoEConfig(), seed=seed, move=move,
                      mole=MoLEConfig(num_experts=3, bottleneck=8) if mole else None)


def perturb_mome(model) -> None:
    """Move MoME's zero-initialised parts so that every router and adapter matters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters.w_up" in name or "router.fc2" in name or "instance_gate" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
