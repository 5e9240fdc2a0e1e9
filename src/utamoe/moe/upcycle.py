"""Upcycling: turn the dense MLPs of a Hugging Face decoder into TA-MoE layers.

`upcycle(model, config)` finds the decoder layers (the first `ModuleList` whose
blocks all have an `.mlp`), checks each chosen MLP is a bias-free gated MLP with
`gate_proj` / `up_proj` / `down_proj` (Llama, Qwen2, Qwen3, Gemma3, Mistral and
the Llama inside Janus), detects its activation by evaluating it, and swaps in a
`TaskAwareMoE` whose experts are copies of it. Routed weights sum to 1 and
shared/routed outputs are mixed convexly, so the upcycled model computes the
same logits as the dense one until training moves the experts apart.
Anything else (GPT-2's c_fc, an MLP with biases, a model that is already MoE)
fails with an error that says what is supported. A block whose MLP is wrapped in
MoLE adapters (utamoe.moe.mole) is seen through: the wrapped FFN is upcycled and
the adapters stay beside it.
"""

from __future__ import annotations

import torch
from torch import nn

from utamoe.moe.blocks import (
    SUPPORTED,
    UnsupportedArchitectureError,
    decoder_layers,
    inner_mlp,
    set_inner_mlp,
)
from utamoe.moe.config import MoEConfig
from utamoe.moe.experts import ACTIVATIONS
from utamoe.moe.layer import TaskAwareMoE


def detect_activation(mlp: nn.Module) -> str:
    """Name of the MLP's activation, found by comparing it with the known ones on a probe."""
    probe = torch.linspace(-6, 6, 257, dtype=torch.float64, device="cpu")  # also under a meta context
    with torch.no_grad():
        got = mlp.act_fn(probe)
        for name, fn in ACTIVATIONS.items():
            if torch.allclose(got, fn(probe), atol=1e-6):
                return name
    raise UnsupportedArchitectureError(
        f"{type(mlp).__name__}: activation {mlp.act_fn!r} is none of {', '.join(ACTIVATIONS)}"
    )


def check_dense_mlp(mlp: nn.Module, where: str) -> None:
    parts = ("gate_proj", "up_proj", "down_proj", "act_fn")
    missing = [p for p in parts if not hasattr(mlp, p)]
    if isinstance(mlp, TaskAwareMoE):
        raise UnsupportedArchitectureError(f"{where} is already a TaskAwareMoE layer")
    if missing:
        raise UnsupportedArchitectureError(
            f"{where}: {type(mlp).__name__} is not a dense gated MLP (missing {', '.join(missing)}); "
            f"upcycle supports {SUPPORTED}"
        )
    for p in parts[:3]:
        if not isinstance(getattr(mlp, p), nn.Linear) or getattr(mlp, p).bias is not None:
            raise UnsupportedArchitectureError(
                f"{where}.{p}: expected a bias-free nn.Linear (MLPs with biases, e.g. "
                f"mlp_bias=True, are not supported)"
            )


def upcycle(
    model: nn.Module, config: MoEConfig | None = None, group_mlps: dict | None = None
) -> nn.Module:
    """Replace the dense MLP of the chosen decoder layers (config.layers; default all) in place.

    `group_mlps` maps a layer index to one MLP per task group (the stage-1 task FFNs) that
    initialise that layer's routed experts. Returns `model` for chaining.
    """
    config = config or MoEConfig()
    prefix, layers = decoder_layers(model)
    chosen = range(len(layers)) if config.layers is None else config.layers
    for i in chosen:
        if i >= len(layers):
            raise ValueError(f"MoEConfig.layers: layer {i} does not exist ({len(layers)} layers)")
    for i in chosen:
        mlp = inner_mlp(layers[i])
        wrapped = ".ffn" if mlp is not layers[i].mlp else ""
        where = f"{type(model).__name__}.{prefix}.{i}.mlp{wrapped}"
        check_dense_mlp(mlp, where)
        act = detect_activation(mlp)
        groups = None if group_mlps is None else group_mlps[i]
        set_inner_mlp(layers[i], TaskAwareMoE.from_dense(mlp, config, act, group_mlps=groups))
    return model


def moe_layers(model: nn.Module) -> list[TaskAwareMoE]:
    return [m for m in model.modules() if isinstance(m, TaskAwareMoE)]
