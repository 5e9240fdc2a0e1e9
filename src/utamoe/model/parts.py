"""The parts of a unified model, built from `HFPart`s or created here when they are small.

Backbone and understanding encoder come from Hugging Face (any causal decoder;
any SigLIP/CLIP-style vision tower). The aligners and the image-code head are
small MLPs with the same structure as Janus's (`fc1`, `hidden_layers`, GELU;
`proj_out`, `vision_head`), so Janus checkpoints map onto them one to one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from utamoe.config import ConfigError
from utamoe.model.config import HFPart


class MLPAligner(nn.Module):
    """Linear -> (GELU -> Linear) x (depth - 1): features from one space into another."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.hidden_layers = nn.ModuleList(nn.Linear(out_dim, out_dim) for _ in range(depth - 1))
        self.activation_fn = nn.GELU()

    def forward(self, x):
        x = self.fc1(x)
        for layer in self.hidden_layers:
            x = layer(self.activation_fn(x))
        return x


class GenHead(nn.Module):
    """Backbone hidden state -> logits over image codes (Janus's generation head)."""

    def __init__(self, hidden: int, num_codes: int, proj_dim: int | None = None):
        super().__init__()
        proj_dim = proj_dim or hidden
        self.proj_out = nn.Linear(hidden, proj_dim)
        self.activation_fn = nn.GELU()
        self.vision_head = nn.Linear(proj_dim, num_codes)

    def forward(self, h):
        return self.vision_head(self.activation_fn(self.proj_out(h)))


def _require_dir(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(
            f"{what}: directory {p} does not exist (utamoe loads weights from local directories only; "
            f"download the checkpoint first, or give a `config` to build a fresh model)"
        )
    return p


def build_backbone(part: HFPart, vocab_size: int) -> tuple[nn.Module, nn.Module]:
    """(decoder base model, lm_head) from a local ...ForCausalLM directory, a GGUF file in a
    local directory (`part.gguf_file`; utamoe.model.gguf) or a config dict.

    The embedding table grows to `vocab_size` when the text tokenizer added tokens (utamoe's
    special tokens, task and grounding tokens): see `grow_vocab`.
    """
    meta = torch.get_default_device().type == "meta"  # preflight: structure, no weights
    if part.gguf_file is not None:
        from utamoe.model.gguf import load_gguf_causal_lm

        causal = load_gguf_causal_lm(part.path, part.gguf_file, "model.backbone", meta=meta,
                                     num_layers=part.num_layers)
    elif part.path is not None:
        path = str(_require_dir(part.path, "model.backbone"))
        config = AutoConfig.from_pretrained(path)
        if part.num_layers is not None:  # the checkpoint's other layers are left unread
            keep_first_layers(config, part.num_layers, "model.backbone")
        causal = (AutoModelForCausalLM.from_config(config) if meta
                  else AutoModelForCausalLM.from_pretrained(path, config=config))
    else:
        cfg = AutoConfig.for_model(**{**part.config, "vocab_size": vocab_size})
        causal = AutoModelForCausalLM.from_config(cfg)
    grow_vocab(causal, vocab_size)
    return causal.get_decoder(), causal.get_output_embeddings()


def keep_first_layers(config, n: int, where: str) -> None:
    """Cut a decoder config to its first `n` layers (and per-layer lists such as Gemma-3's
    `layer_types` to their first `n` entries)."""
    total = config.num_hidden_layers
    if not 1 <= n <= total:
        raise ConfigError(f"{where}.num_layers is {n} but the backbone has {total} layers; give "
                          f"1..{total}, or null for all of them")
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == total:
            setattr(config, key, value[:n])
    config.num_hidden_layers = n


@torch.no_grad()
def grow_vocab(causal: nn.Module, vocab_size: int) -> int:
    """Give a causal LM `vocab_size` rows in its input and output embeddings; returns how many
    were added. Each new row (input and output alike) is the mean of the existing rows: a new
    token then starts as an "average" token, its logit the mean logit, so a pretrained backbone
    is not thrown off by tokens it never saw (a random row can dominate the softmax)."""
    old = causal.get_input_embeddings().num_embeddings
    if old >= vocab_size:
        return 0
    causal.resize_token_embeddings(vocab_size, mean_resizing=False)
    tables = [causal.get_input_embeddings().weight]
    head = causal.get_output_embeddings()
    if head is not None and head.weight is not tables[0]:
        tables.append(head.weight)
    for w in tables:
        w[old:] = w[:old].float().mean(0).to(w.dtype)
    if head is not None and getattr(head, "bias", None) is not None:
        head.bias[old:] = head.bias[:old].float().mean().to(head.bias.dtype)
    return vocab_size - old


def _janus_vision(config: dict) -> nn.Module:
    # Janus's SigLIP tower is not registered with AutoModel.
    from transformers.models.janus.configuration_janus import JanusVisionConfig
    from transformers.models.janus.modeling_janus import JanusVisionModel

    cfg = {k: v for k, v in config.items() if k != "model_type"}
    return JanusVisionModel(JanusVisionConfig(**cfg))


def build_vision(part: HFPart, image_size: int) -> nn.Module:
    """A vision tower whose forward(pixel_values=...) gives `last_hidden_state` (B, P, Dv).

    `image_size` is the model's (UnifiedConfig.image_size, the one source of the image size):
    a tower built from a config gets it; a loaded tower must have been trained at it."""
    if part.path is not None:
        model = AutoModel.from_pretrained(str(_require_dir(part.path, "model.vision")))
    else:
        given = part.config.get("image_size")
        if given is not None and given != image_size:
            raise ConfigError(f"model.vision.config.image_size is {given} but model.image_size "
                              f"is {image_size}; drop the vision one (the model's is used)")
        config = {**part.config, "image_size": image_size}
        if config.get("model_type") == "janus_vision_model":
            model = _janus_vision(config)
        else:
            model = AutoModel.from_config(AutoConfig.for_model(**config))
    # A full CLIP/SigLIP (text + vision) directory: keep the vision tower only.
    model = getattr(model, "vision_model", model) if hasattr(model, "text_model") else model
    tower_size = getattr(model.config, "image_size", image_size)
    if part.path is not None and tower_size != image_size:
        raise ConfigError(f"the vision tower in {part.path} takes {tower_size}x{tower_size} "
                          f"images but model.image_size is {image_size}; set "
                          f"model.image_size={tower_size}")
    return model


def hidden_size_of(module: nn.Module) -> int:
    cfg = module.config
    return getattr(cfg, "hidden_size", None) or cfg.get_text_config().hidden_size
