"""UnifiedConfig: what a unified model is made of, as data (saved next to its weights).

Each Hugging Face part (the decoder backbone, the understanding encoder) is a
`HFPart`: either a local directory to load (`path`) or a config dict to build a
fresh model from (`config`, with its `model_type`). The defaults are a small
Llama backbone and a small SigLIP vision tower sized for ShapesWorld's 48x48
images on a CPU; users point `path` at Janus-Pro / Qwen / SigLIP checkpoints.
`image_size` is the one image size of the model (see the field).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from utamoe.config import ConfigError
from utamoe.moe import MoEConfig


def _tiny_llama() -> dict[str, Any]:
    return dict(model_type="llama", hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=512,
                rms_norm_eps=1e-5, tie_word_embeddings=False)


def _tiny_siglip() -> dict[str, Any]:
    return dict(model_type="siglip_vision_model", patch_size=8, hidden_size=128,
                intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)


@dataclass
class HFPart:
    """A Hugging Face model: loaded from a local directory, or built from a config dict."""

    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnifiedConfig:
    backbone: HFPart = field(default_factory=lambda: HFPart(config=_tiny_llama()))
    vision: HFPart = field(default_factory=lambda: HFPart(config=_tiny_siglip()))
    # TA-MoE inside the backbone (None = dense, e.g. for the dense baselines and stage 1).
    moe: MoEConfig | None = None
    # The one image size: every input image is resized to it (the image processor), the
    # vision tower is built for it and the VQ codec is trained at it.
    image_size: int = 48
    # Resampling filter of the image processor (bicubic, like SigLIP's).
    image_resample: str = "bicubic"
    # Depth of the MLP aligners (vision -> backbone, code embedding -> backbone); Janus uses 2.
    aligner_depth: int = 2
    code_embed_dim: int = 32
    # Width of the generation head's hidden layer (0 = the backbone's hidden size).
    gen_head_dim: int = 0
    # Probability that a generation sample's prompt is replaced by <null> tokens in training,
    # so the same model also predicts unconditionally (classifier-free guidance).
    cfg_dropout: float = 0.1
    # Add a learned row + column embedding to each understanding feature after the aligner
    # (utamoe.model.grid_pos; issue 12), so a token's grid cell is in its value.
    und_pos2d: bool = False
    # Filled from the tokenizers when a model is built; saved so a model dir is self-describing.
    vocab_size: int = 0
    num_codes: int = 0
    code_grid: int = 0
    und_slot_id: int = -1

    def __post_init__(self) -> None:
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ConfigError(f"model.cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if self.image_size < 8:
            raise ConfigError(f"model.image_size must be >= 8, got {self.image_size}")
        from utamoe.vision.processor import RESAMPLE

        if self.image_resample not in RESAMPLE:
            raise ConfigError(f"model.image_resample {self.image_resample!r} is not one of "
                              f"{', '.join(RESAMPLE)}")
        if self.aligner_depth < 1:
            raise ConfigError(f"model.aligner_depth must be >= 1, got {self.aligner_depth}")
        for name in ("backbone", "vision"):
            part = getattr(self, name)
            if part.path is None and "model_type" not in part.config:
                raise ConfigError(
                    f"model.{name}: give a local `path` or a `config` with a `model_type` "
                    f"(e.g. 'llama', 'qwen3', 'siglip_vision_model')"
                )
