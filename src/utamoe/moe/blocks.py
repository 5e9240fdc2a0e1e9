"""Where the FFN of a Hugging Face decoder block is: the decoder's blocks, and a block's FFN seen
through a wrapper (MoLE's adapters wrap it; upcycling replaces what is inside).

Shared by upcycling (utamoe.moe.upcycle) and MoLE (utamoe.moe.mole), which both edit blocks.
"""

from __future__ import annotations

from torch import nn

SUPPORTED = "Llama, Mistral, Qwen2, Qwen3, Gemma3 (and Janus's Llama language model)"


class UnsupportedArchitectureError(ValueError):
    """The model has no dense gated MLPs that utamoe can upcycle."""


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The (name, ModuleList) of decoder blocks in a ...ForCausalLM or a base decoder model."""
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) > 0
            and all(hasattr(block, "mlp") for block in module)
        ):
            return name, module
    raise UnsupportedArchitectureError(
        f"{type(model).__name__}: found no decoder blocks (a ModuleList whose blocks have an "
        f"'mlp'); upcycle supports {SUPPORTED}"
    )


class WrapsFFN:
    """A block's `mlp` that holds the block's FFN as `ffn` and adds something beside it
    (MoLE's routed adapters): upcycling sees through it and keeps it."""

    ffn: nn.Module


def inner_mlp(block: nn.Module) -> nn.Module:
    """The block's FFN, seen through a wrapper (what upcycling turns into TA-MoE)."""
    mlp = block.mlp
    return mlp.ffn if isinstance(mlp, WrapsFFN) else mlp


def set_inner_mlp(block: nn.Module, new: nn.Module) -> None:
    """Replace the block's FFN, keeping a wrapper (and what it adds) around it."""
    if isinstance(block.mlp, WrapsFFN):
        block.mlp.ffn = new
    else:
        block.mlp = new
