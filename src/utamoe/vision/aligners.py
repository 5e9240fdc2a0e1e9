"""Aligners: features of a vision encoder (or image-code embeddings) into the backbone's width.

`MLPAligner` is Janus's (`fc1`, `hidden_layers`, GELU), so Janus checkpoints map onto it one to
one. `GridPosAligner` (issue 12; `model.und_pos2d: true`) also puts each understanding token's
grid position in its value:

The backbone's rotary positions reach attention scores, never values, and a 1-D
sequence index is a poor handle on a 2-D row and column: a probe recovers an object
token's grid cell from its own feature only 25 % of the time. `GridPosAligner` is the
vision -> backbone aligner (same `fc1` / `hidden_layers` as `MLPAligner`, so the
aligner weights keep their names) plus a learned row embedding and a learned column
embedding, added to the feature of every token of the image's `grid x grid` patch
grid. With a patch as large as a ShapesWorld cell (16 px on 48 px: 3 x 3 tokens) each
understanding token is one cell, and "top left" is a direction in its value.
"""

from __future__ import annotations

import math

import torch
from torch import nn


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


class GridPosAligner(MLPAligner):
    def __init__(self, in_dim: int, out_dim: int, depth: int, grid: int, std: float = 0.02):
        super().__init__(in_dim, out_dim, depth)
        self.grid = grid
        self.row_embed = nn.Parameter(torch.randn(grid, out_dim) * std)
        self.col_embed = nn.Parameter(torch.randn(grid, out_dim) * std)

    def position_table(self) -> torch.Tensor:
        """(grid * grid, D): row-major, like the vision tower's patch order."""
        return (self.row_embed[:, None, :] + self.col_embed[None, :, :]).reshape(-1, self.row_embed.shape[-1])

    def forward(self, x):
        h = super().forward(x)
        if h.shape[-2] != self.grid * self.grid:
            raise ValueError(f"GridPosAligner: {h.shape[-2]} tokens per image, expected "
                             f"{self.grid}x{self.grid} (vision patch grid)")
        return h + self.position_table().to(h.dtype)


def patch_grid(vision: nn.Module, image_size: int) -> int:
    """Side of the vision tower's square token grid (a dummy forward; error if not square)."""
    param = next(vision.parameters())
    with torch.no_grad():
        dummy = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
        n = vision(pixel_values=dummy).last_hidden_state.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"model.und_pos2d needs a square patch grid; the vision tower gives {n} tokens")
    return side
