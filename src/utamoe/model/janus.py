"""Janus / Janus-Pro (Hugging Face `JanusForConditionalGeneration`) as a utamoe UnifiedModel.

Janus already has the layout utamoe uses: a SigLIP tower + MLP aligner for
understanding, a VQ tokenizer + code embedding + aligner + head for generation,
and a Llama backbone. `from_hf_janus` reuses those modules as they are (no copy;
the VQ model becomes a `VQTokenizer` with Janus's blocks and weights),
so before upcycling our understanding and generation logits equal Janus's; then
`model.upcycle(MoEConfig())` turns its Llama MLPs into TA-MoE layers. Weights are
read from a local directory only (`load_janus(path)`), as a user with Janus-Pro-1B
on disk would.
"""

from __future__ import annotations

from pathlib import Path

import torch

from utamoe.model.config import HFPart, UnifiedConfig
from utamoe.model.unified import UnifiedModel
from utamoe.vision.encoders import TowerEncoder
from utamoe.vision.tokenizer import VQTokenizer


def janus_config(janus) -> UnifiedConfig:
    cfg = janus.config
    vision = cfg.vision_config.to_dict()
    vq = cfg.vq_config
    return UnifiedConfig(
        backbone=HFPart(config=cfg.text_config.to_dict()),
        vision=HFPart(config={**vision, "model_type": "janus_vision_model"}),
        image_size=cfg.vision_config.image_size,
        aligner_depth=cfg.vision_config.depth,
        code_embed_dim=vq.embed_dim,
        gen_head_dim=vq.projection_dim,
        vocab_size=cfg.text_config.vocab_size,
        num_codes=vq.num_embeddings,
        code_grid=vq.num_patches,
        und_slot_id=cfg.image_token_id,
    )


def from_hf_janus(janus) -> UnifiedModel:
    """A UnifiedModel sharing the modules of a `JanusForConditionalGeneration` (dense backbone)."""
    inner = janus.model
    if inner.generation_aligner.hidden_layers.__len__() + 1 != janus.config.vq_config.num_hidden_layers:
        raise ValueError("unexpected Janus generation aligner depth")
    return UnifiedModel(
        janus_config(janus), inner.language_model, janus.lm_head,
        TowerEncoder(inner.vision_model, inner.aligner), inner.generation_embeddings, inner.generation_aligner, inner.generation_head,
        VQTokenizer.from_janus(inner.vqmodel, image_size=janus.config.vision_config.image_size),
    )


def load_janus(path: str | Path, dtype: torch.dtype = torch.float32) -> UnifiedModel:
    """Load Janus / Janus-Pro from a local directory (no download) as a UnifiedModel."""
    from transformers import JanusForConditionalGeneration

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Janus checkpoint directory {path} does not exist")
    return from_hf_janus(JanusForConditionalGeneration.from_pretrained(str(path), dtype=dtype))
