"""Boxes on images: the code-grid cells and the pixels a normalised box covers, and compositing
an edited image into the original inside boxes only. Shared by the executors that work on a
box (the box-grounded editor, box segmentation, the diffusers editor)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from utamoe.text.boxes import Box
from utamoe.vision.processor import to_rgb


def box_cells(boxes: Sequence[Box], grid: int) -> torch.Tensor:
    """Bool (grid * grid,) in raster order: True for the cells that overlap a box (with a
    positive area); those are regenerated, the others kept."""
    edges = torch.arange(grid + 1, dtype=torch.float64) / grid
    lo, hi = edges[:-1], edges[1:]
    inside = torch.zeros(grid, grid, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        cols = (lo < x1) & (hi > x0)
        rows = (lo < y1) & (hi > y0)
        inside |= rows[:, None] & cols[None, :]
    return inside.reshape(-1)


def box_pixels(boxes: Sequence[Box], height: int, width: int) -> np.ndarray:
    """Bool (H, W): True for the pixels a box covers (the pixel rectangle from floor(x0 * W)
    to ceil(x1 * W), so a box always covers at least the pixels it touches)."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        c0, c1 = math.floor(x0 * width), math.ceil(x1 * width)
        r0, r1 = math.floor(y0 * height), math.ceil(y1 * height)
        mask[r0:r1, c0:c1] = True
    return mask


def composite(original: np.ndarray, edited: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """The original image with the boxes' pixels taken from `edited` (resized to the original's
    size first); every other pixel is the original's, unchanged."""
    h, w = original.shape[:2]
    edited = to_rgb(edited, (h, w))
    keep = ~box_pixels(boxes, h, w)
    out = edited.copy()
    out[keep] = original[keep]
    return out
