"""UnifiedConfig: what a unified model is made of, as data (saved next to its weights).

Each Hugging Face part (the decoder backbone, the understanding encoder) is a
`HFPart` (utamoe.hf.parts): either a local directory to load (`path`) or a config dict to build a
fresh model from (`config`, with its `model_type`). The defaults are a small
Llama backbone and a small SigLIP vision tower sized for ShapesWorld's 48x48
images on a CPU; users point `path` at Janus-Pro / Qwen / SigLIP checkpoints.
`image_size` is the one image size of the model (see the field).
MoME's parts are optional fields: `move` (several understanding encoders, ADT and
an instruction router in the understanding slot; utamoe.vision.mixture), `mole`
(routed adapters beside the backbone's FFNs; utamoe.moe.mole) and
`sentence_encoder` (the instruction embedding both routers read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from utamoe.config import ConfigError
from utamoe.hf.parts import HFPart
from utamoe.moe import MoEConfig
from utamoe.moe.mole import MoLEConfig
from utamoe.vision.aligners import POS2D_INITS
from utamoe.vision.mixture import MoVEConfig
from utamoe.vision.processor import RESAMPLE


def _tiny_llama() -> dict[str, Any]:
    return dict(model_type="llama", hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=512,
                rms_norm_eps=1e-5, tie_word_embeddings=False)


def _tiny_siglip() -> dict[str, Any]:
    return dict(model_type="siglip_vision_model", patch_size=8, hidden_size=128,
                intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)


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
    # Add a learned row + column embedding to each understanding feature after the aligner
    # (utamoe.vision.aligners; issue 12), so a token's grid cell is in its value.
    und_pos2d: bool = False
    # How those tables start: "normal" (random rows) or "sincos" (MAE's ordered 2-D sine-cosine
    # code at the same scale, so "left of" starts as a linear comparison; RESULTS.md, issue 24).
    und_pos2d_init: str = "normal"
    # MoME (all optional): a mixture of vision experts in the understanding slot (replaces
    # `vision`, which is then unused), routed adapters beside the backbone FFNs, and the local
    # directory of a sentence encoder (e.g. all-MiniLM-L6-v2) for the instruction embedding
    # both routers read (None: the mean of the backbone's embeddings of the instruction tokens).
    move: MoVEConfig | None = None
    mole: MoLEConfig | None = None
    sentence_encoder: str | None = None
    # A local Janus / Janus-Pro directory (Hugging Face layout): backbone, vision tower,
    # aligners, generation embedding/aligner/head and the VQ codec all come from it, with the
    # sizes of its config.json (the `backbone`, `vision` and size fields here are then unused;
    # utamoe.model.janus). Training from it: configs/janus_pro_utamoe.yaml.
    janus: str | None = None
    # Filled from the tokenizers when a model is built; saved so a model dir is self-describing.
    vocab_size: int = 0
    num_codes: int = 0
    code_grid: int = 0
    und_slot_id: int = -1

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ConfigError(f"model.image_size must be >= 8, got {self.image_size}")
        if self.image_resample not in RESAMPLE:
            raise ConfigError(f"model.image_resample {self.image_resample!r} is not one of "
                              f"{', '.join(RESAMPLE)}")
        if self.aligner_depth < 1:
            raise ConfigError(f"model.aligner_depth must be >= 1, got {self.aligner_depth}")
        if self.und_pos2d_init not in POS2D_INITS:
            raise ConfigError(f"model.und_pos2d_init {self.und_pos2d_init!r} is not one of "
                              f"{', '.join(POS2D_INITS)}")
        if self.move is not None and self.und_pos2d:
            raise ConfigError("model.und_pos2d applies to the single encoder's aligner; it cannot "
                              "be combined with model.move")
        b = self.backbone
        if b.path is not None and b.gguf_file is None and b.path.endswith(".gguf"):
            # `path: DIR/NAME.gguf` (as tokenizers.text takes it) means {path: DIR, gguf_file: NAME}.
            folder, _, name = b.path.rpartition("/")
            b.path, b.gguf_file = folder or ".", name
        if self.vision.gguf_file is not None:
            raise ConfigError("model.vision.gguf_file: GGUF files hold decoder LLMs; only "
                              "model.backbone takes one")
        if self.vision.num_layers is not None:
            raise ConfigError("model.vision.num_layers: only model.backbone takes one")
        if self.backbone.num_layers is not None and self.backbone.path is None:
            raise ConfigError("model.backbone.num_layers applies to a loaded backbone (`path`); "
                              "a backbone built from `config` sets config.num_hidden_layers")
        if self.backbone.gguf_file is not None and self.backbone.path is None:
            raise ConfigError(f"model.backbone.gguf_file {self.backbone.gguf_file!r} needs "
                              "model.backbone.path, the directory holding it")
        for name in ("backbone", "vision"):
            part = getattr(self, name)
            if part.path is None and "model_type" not in part.config:
                raise ConfigError(
                    f"model.{name}: give a local `path` or a `config` with a `model_type` "
                    f"(e.g. 'llama', 'qwen3', 'siglip_vision_model')"
                )
