"""Janus / Janus-Pro (Hugging Face `JanusForConditionalGeneration`) as a utamoe UnifiedModel.

Janus already has the layout utamoe uses: a SigLIP tower + MLP aligner for
understanding, a VQ tokenizer + code embedding + aligner + head for generation,
and a Llama backbone. `from_hf_janus` reuses those modules as they are (no copy;
the VQ model becomes a `VQTokenizer` with Janus's blocks and weights),
so before upcycling our understanding and generation logits equal Janus's; then
`model.upcycle(MoEConfig())` turns its Llama MLPs into TA-MoE layers. Weights are
read from a local directory only (`load_janus(path)`), as a user with Janus-Pro-1B
on disk would; a recipe names that directory as `model.janus` (utamoe.train.setup,
configs/janus_pro_utamoe.yaml).
"""

from __future__ import annotations

from pathlib import Path

import torch

from utamoe.hf.decoders import grow_vocab
from utamoe.hf.local import pretrained
from utamoe.hf.parts import HFPart
from utamoe.model.config import UnifiedConfig
from utamoe.model.unified import UnifiedModel
from utamoe.vision.encoders import TowerEncoder
from utamoe.vision.tokenizer import VQTokenizer


def janus_config(janus) -> UnifiedConfig:
    cfg = janus.config
    vision = cfg.vision_config.to_dict()
    vq = cfg.vq_config
    return UnifiedConfig(
        # Janus ties lm_head to the token table when its top-level config says so (not the
        # text config): the backbone built from this config must tie the same way.
        backbone=HFPart(config={**cfg.text_config.to_dict(),
                                "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False))}),
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


def _janus_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"Janus checkpoint directory {path} does not exist or has no "
                                "config.json (give a local Janus / Janus-Pro directory in the "
                                "Hugging Face layout, e.g. deepseek-community/Janus-Pro-1B)")
    return path


def load_janus(path: str | Path, dtype: torch.dtype = torch.float32,
               vocab_size: int | None = None) -> UnifiedModel:
    """Load Janus / Janus-Pro from a local directory (no download) as a UnifiedModel; with
    `vocab_size`, its embedding table and lm_head first grow to it (mean-initialised rows,
    utamoe.model.parts.grow_vocab) for the tokens utamoe's text tokenizer adds."""
    from transformers import JanusForConditionalGeneration

    janus = pretrained(JanusForConditionalGeneration, _janus_dir(path), "model.janus", dtype=dtype)
    if vocab_size is not None:
        grow_vocab(janus, vocab_size)
    model = from_hf_janus(janus)
    if vocab_size is not None:
        model.config.vocab_size = max(vocab_size, model.config.vocab_size)
    return model


def janus_config_from_dir(path: str | Path) -> UnifiedConfig:
    """The UnifiedConfig of a local Janus directory from its config.json alone (no weights
    read): what a recipe's preflight builds on the meta device."""
    from types import SimpleNamespace

    from transformers import JanusConfig

    return janus_config(SimpleNamespace(config=pretrained(JanusConfig, _janus_dir(path), "model.janus")))
