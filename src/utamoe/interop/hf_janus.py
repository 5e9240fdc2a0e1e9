"""Janus / Janus-Pro (Hugging Face `JanusForConditionalGeneration`) as a utamoe UnifiedModel.

Janus already has the layout utamoe uses: a SigLIP tower + MLP aligner for
understanding, a VQ tokenizer + code embedding + aligner + head for generation,
and a Llama backbone. `from_hf_janus` reuses those modules as they are (no copy),
so before upcycling our understanding and generation logits equal Janus's; then
`model.upcycle(MoEConfig())` turns its Llama MLPs into TA-MoE layers. Weights are
read from a local directory only (`load_janus(path)`), as a user with Janus-Pro-1B
on disk would.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from utamoe.model.config import HFPart, UnifiedConfig
from utamoe.model.unified import UnifiedModel


class JanusVQTokenizer(nn.Module):
    """Janus's VQ model behind utamoe's image tokenizer interface (encode/decode/save/load)."""

    def __init__(self, vq: nn.Module):
        super().__init__()
        self.vq = vq

    @property
    def num_codes(self) -> int:
        return self.vq.config.num_embeddings

    @property
    def grid_size(self) -> int:
        return self.vq.quantize.quant_state_dims[0]

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> codes (B, h, w)."""
        out = self.vq.encode(pixels.to(self.vq.dtype), return_dict=True)
        g = self.grid_size
        return out.image_tokens.view(pixels.shape[0], g, g)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) or (B, h*w) -> (B, 3, H, W) in about [-1, 1]."""
        return self.vq.decode(codes.reshape(codes.shape[0], -1))

    def save_pretrained(self, path) -> None:
        self.vq.save_pretrained(str(path))

    @classmethod
    def from_pretrained(cls, path) -> JanusVQTokenizer:
        from transformers.models.janus.modeling_janus import JanusVQVAE

        return cls(JanusVQVAE.from_pretrained(str(path)))


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
        janus_config(janus), inner.language_model, janus.lm_head, inner.vision_model, inner.aligner,
        inner.generation_embeddings, inner.generation_aligner, inner.generation_head,
        JanusVQTokenizer(inner.vqmodel),
    )


def load_janus(path: str | Path, dtype: torch.dtype = torch.float32) -> UnifiedModel:
    """Load Janus / Janus-Pro from a local directory (no download) as a UnifiedModel."""
    from transformers import JanusForConditionalGeneration

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Janus checkpoint directory {path} does not exist")
    return from_hf_janus(JanusForConditionalGeneration.from_pretrained(str(path), dtype=dtype))
