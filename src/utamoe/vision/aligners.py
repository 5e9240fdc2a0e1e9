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


POS2D_INITS = ("normal", "sincos")


def sincos_table(grid: int, dim: int, axis: int) -> torch.Tensor:
    """(grid, dim) fixed 2-D sine-cosine position code of one axis (MAE's, He et al. 2022):
    the row table fills the first half of the dims and the column table the second, each with
    sin / cos of `index * omega_k`, omega_k = 10000^(-k / (dim / 4)). Every omega is <= 1, so on a
    grid of up to 3 cells (ShapesWorld's) every coordinate moves monotonically with the index, and
    on any grid the low frequencies do: "left of" starts as a linear comparison of two tokens'
    codes, not a lookup table to learn."""
    half, quarter = dim // 2, dim // 4
    omega = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    angle = torch.arange(grid, dtype=torch.float64)[:, None] * omega[None, :]
    table = torch.zeros(grid, dim, dtype=torch.float64)
    start = axis * half
    table[:, start:start + quarter] = angle.sin()
    table[:, start + quarter:start + 2 * quarter] = angle.cos()
    return table.float()


class GridPosAligner(MLPAligner):
    """`init`: "normal" (N(0, std) rows) or "sincos" (MAE's ordered 2-D code, scaled to the same
    per-element RMS `std`); the tables are learned either way."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, grid: int, std: float = 0.02,
                 init: str = "normal"):
        super().__init__(in_dim, out_dim, depth)
        if init not in POS2D_INITS:
            raise ValueError(f"GridPosAligner init {init!r} is not one of {', '.join(POS2D_INITS)}")
        self.grid = grid
        if init == "sincos":
            row, col = sincos_table(grid, out_dim, 0), sincos_table(grid, out_dim, 1)
            # tensor arithmetic, no .item(): the recipe preflight builds models on the meta device
            scale = std / row.pow(2).mean().sqrt().clamp_min(1e-12)
            row, col = row * scale, col * scale
        else:
            row, col = torch.randn(grid, out_dim) * std, torch.randn(grid, out_dim) * std
        self.row_embed = nn.Parameter(row)
        self.col_embed = nn.Parameter(col)

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
