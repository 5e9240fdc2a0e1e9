"""Understanding encoders: pixels -> a sequence of features in the backbone's width.

The unified model holds one module in its `und_encoder` slot and asks it only two
things: `forward(pixel_values (N, 3, H, W) in [-1, 1]) -> (N, P, D)` and
`num_tokens(image_size) -> P`. Anything with that interface fits the slot, so a
mixture of several encoders (MoVE) is a drop-in replacement for the single one.

`TowerEncoder` is today's encoder: a Hugging Face vision tower (SigLIP, CLIP,
Janus's SigLIP, or any model whose forward(pixel_values=...) returns
`last_hidden_state`) followed by the MLP aligner that maps its width to the
backbone's (the aligner is folded in: an encoder's output is always ready for
the backbone). Its parameters are `tower.*` and `aligner.*`.
"""

from __future__ import annotations

import torch
from torch import nn


class TowerEncoder(nn.Module):
    """An HF vision tower + MLP aligner (Janus / LLaVA layout)."""

    def __init__(self, tower: nn.Module, aligner: nn.Module):
        super().__init__()
        self.tower, self.aligner = tower, aligner

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.tower.parameters()).dtype
        hidden = self.tower(pixel_values=pixel_values.to(dtype)).last_hidden_state
        return self.aligner(hidden)

    @torch.no_grad()
    def num_tokens(self, image_size: int) -> int:
        """Features per image (the understanding slots a sequence reserves for it)."""
        device = next(self.parameters()).device
        return self(torch.zeros(1, 3, image_size, image_size, device=device)).shape[1]
