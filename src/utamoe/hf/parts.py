"""Hugging Face parts: a decoder backbone or a vision tower, loaded from a local directory (or a
GGUF file) or built fresh from a config dict.

`HFPart` says which (as data, saved in a model's config); `build_backbone` and `build_vision`
make the modules. Any causal decoder works as a backbone; any SigLIP/CLIP-style tower whose
forward(pixel_values=...) gives `last_hidden_state` works as a vision tower. Weights come
from local directories only (no hub download).
"""

from __future__ import annotations

import inspect
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from utamoe.config import ConfigError
from utamoe.hf.decoders import grow_vocab, keep_first_layers
from utamoe.hf.gguf import load_gguf_causal_lm
from utamoe.hf.local import pretrained, refuse_code_in_config


@dataclass
class HFPart:
    """A Hugging Face model: loaded from a local directory, or built from a config dict."""

    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # Backbones only: the name of a GGUF file inside `path` (llama.cpp's format, dequantised to
    # fp32 on load; the optional `gguf` extra; utamoe.hf.gguf). `path` may be `pkg:<module>`.
    gguf_file: str | None = None
    # Backbones only: keep the first N decoder layers of a loaded backbone (a smoke run or a
    # test on real weights at a fraction of the cost; a GGUF file's other layers are not even
    # dequantised). None keeps them all. A backbone built from `config` sets
    # config.num_hidden_layers instead.
    num_layers: int | None = None


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
    local directory (`part.gguf_file`; utamoe.hf.gguf) or a config dict.

    The embedding table grows to `vocab_size` when the text tokenizer added tokens (utamoe's
    special tokens, task and grounding tokens): see `grow_vocab`.
    """
    meta = torch.get_default_device().type == "meta"  # preflight: structure, no weights
    if part.gguf_file is not None:
        causal = load_gguf_causal_lm(part.path, part.gguf_file, "model.backbone", meta=meta,
                                     num_layers=part.num_layers)
    elif part.path is not None:
        path = _require_dir(part.path, "model.backbone")
        config = _config(path, "model.backbone")
        if part.num_layers is not None:  # the checkpoint's other layers are left unread
            keep_first_layers(config, part.num_layers, "model.backbone")
        causal = (AutoModelForCausalLM.from_config(config, trust_remote_code=False) if meta
                  else _weights(AutoModelForCausalLM, path, "model.backbone", config))
    else:
        refuse_code_in_config(part.config, "model.backbone.config")
        cfg = AutoConfig.for_model(**{**part.config, "vocab_size": vocab_size})
        causal = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    grow_vocab(causal, vocab_size)
    return causal.get_decoder(), causal.get_output_embeddings()


def _janus_vision(config: dict) -> nn.Module:
    # Janus's SigLIP tower is not registered with AutoModel.
    from transformers.models.janus.configuration_janus import JanusVisionConfig
    from transformers.models.janus.modeling_janus import JanusVisionModel

    cfg = {k: v for k, v in config.items() if k != "model_type"}
    return JanusVisionModel(JanusVisionConfig(**cfg))


def build_vision(part: HFPart, image_size: int, where: str = "model.vision") -> nn.Module:
    """A vision tower whose forward(pixel_values=...) gives `last_hidden_state` (B, P, Dv).

    `image_size` is the model's (UnifiedConfig.image_size, the one source of the image size):
    a tower built from a config gets it; a loaded tower must have been trained at it."""
    if part.path is not None:
        path = _require_dir(part.path, where)
        config = _config(path, where)
        # On the meta device (the recipe's preflight) the structure is built from the config.
        model = (AutoModel.from_config(config, trust_remote_code=False)
                 if torch.get_default_device().type == "meta"
                 else _weights(AutoModel, path, where, config))
    else:
        given = part.config.get("image_size")
        if given is not None and given != image_size:
            raise ConfigError(f"{where}.config.image_size is {given} but model.image_size "
                              f"is {image_size}; drop the vision one (the model's is used)")
        config = {**part.config, "image_size": image_size}
        if config.get("model_type") == "janus_vision_model":
            model = _janus_vision(config)
        else:
            refuse_code_in_config(config, f"{where}.config")
            model = AutoModel.from_config(AutoConfig.for_model(**config), trust_remote_code=False)
    # A full CLIP/SigLIP (text + vision) directory: keep the vision tower only.
    model = getattr(model, "vision_model", model) if hasattr(model, "text_model") else model
    if "pixel_values" not in inspect.signature(model.forward).parameters:
        raise ConfigError(f"{where}: {part.path or 'the config'} is a {type(model).__name__}, "
                          "not a vision model (its forward takes no pixel_values); give a "
                          "vision tower such as SigLIP or CLIP")
    tower_size = getattr(model.config, "image_size", image_size)
    if part.path is not None and tower_size != image_size:
        raise ConfigError(f"{where}: the vision tower in {part.path} takes "
                          f"{tower_size}x{tower_size} images but model.image_size is "
                          f"{image_size}; set model.image_size={tower_size}")
    return model


def _config(path: Path, where: str):
    """The transformers config of a local directory (no code from it is run)."""
    try:
        return pretrained(AutoConfig, path, where)
    except (OSError, ValueError, KeyError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where}.path {path}: not a Hugging Face model directory transformers "
                          f"reads ({type(err).__name__}: {str(err)[:300]})") from err


def _weights(loader, path: Path, where: str, config) -> nn.Module:
    """The model of `config` with the directory's weights; a weight the checkpoint lacks or
    has in another shape is an error, never a silently random or skipped weight."""
    try:
        model, info = pretrained(loader, path, where, config=config, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError) as err:
        raise ConfigError(f"{where}.path {path}: its weights cannot be loaded "
                          f"({type(err).__name__}: {str(err)[:300]}); the checkpoint is damaged "
                          "or does not match its config.json") from err
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k)
                        for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        bad = missing or mismatched
        raise ConfigError(f"{where}.path {path}: the checkpoint "
                          f"{'lacks' if missing else 'has wrong shapes for'} {len(bad)} weight(s) "
                          f"of the model its config.json describes ({', '.join(bad[:4])}"
                          f"{' ...' if len(bad) > 4 else ''}); it is incomplete or damaged")
    return model


def hidden_size_of(module: nn.Module) -> int:
    cfg = module.config
    return getattr(cfg, "hidden_size", None) or cfg.get_text_config().hidden_size
