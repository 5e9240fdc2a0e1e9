"""Edits of a Hugging Face decoder: its first N layers only, and a vocabulary grown for added
tokens. Shared by the directory and the GGUF loaders (utamoe.hf.parts, utamoe.hf.gguf)."""

from __future__ import annotations

import torch
from torch import nn

from utamoe.config import ConfigError


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
