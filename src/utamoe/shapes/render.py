"""Render ShapesWorld scenes to uint8 RGB images, and the alpha masks the parser matches.

Shapes are defined analytically in continuous pixel coordinates and rasterised by
8x8 supersampling, so edges are anti-aliased the same way on every platform (pure
numpy, no font or PIL drawing version in the loop) and the output is a pure
function of the scene and the config. The same `object_alpha` masks are the
parser's templates, so render and parse agree by construction.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from utamoe.shapes.world import (
    Scene,
    ShapesWorldConfig,
    cell_center,
    object_side,
)

_SUPERSAMPLE = 8


@lru_cache(maxsize=4096)
def _alpha_cached(
    shape: str, cx: float, cy: float, side: float, height: int, width: int
) -> np.ndarray:
    ss = _SUPERSAMPLE
    # Sub-pixel sample centres, in pixel units.
    ys = (np.arange(height * ss) + 0.5) / ss
    xs = (np.arange(width * ss) + 0.5) / ss
    dx = xs[None, :] - cx
    dy = ys[:, None] - cy
    h = side / 2
    if shape == "square":
        inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    elif shape == "circle":
        inside = dx * dx + dy * dy <= h * h
    elif shape == "triangle":
        # Apex at the top, base at the bottom: the width at depth d below the apex is d.
        depth = dy + h
        inside = (depth >= 0) & (depth <= side) & (np.abs(dx) <= depth / 2)
    else:
        raise ValueError(f"cannot draw shape '{shape}'")
    alpha = inside.reshape(height, ss, width, ss).mean(axis=(1, 3)).astype(np.float32)
    alpha.setflags(write=False)  # cached: callers must not modify it
    return alpha


def object_alpha(
    shape: str, cx: float, cy: float, side: float, height: int, width: int
) -> np.ndarray:
    """Coverage in [0, 1] of a shape centred at (cx, cy) (pixels) on a height x width grid."""
    return _alpha_cached(shape, float(cx), float(cy), float(side), int(height), int(width))


def _window(cx: float, cy: float, side: float, size: int) -> tuple[int, int, int, int]:
    """Integer pixel window (y0, y1, x0, x1) covering an object, clipped to the image."""
    h = side / 2 + 1
    y0, y1 = max(0, int(np.floor(cy - h))), min(size, int(np.ceil(cy + h)))
    x0, x1 = max(0, int(np.floor(cx - h))), min(size, int(np.ceil(cx + h)))
    return y0, y1, x0, x1


def render(scene: Scene, config: ShapesWorldConfig | None = None) -> np.ndarray:
    """The scene as a (H, W, 3) uint8 RGB image; deterministic for a scene and config."""
    config = config or ShapesWorldConfig()
    size = config.image_size
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = np.asarray(config.background, dtype=np.float32)
    for obj in scene:
        if obj.color not in config.colors:
            raise ValueError(f"unknown colour '{obj.color}'; the world has {config.color_names}")
        cx, cy = cell_center(config, obj.row, obj.col)
        side = object_side(config, obj.size)
        y0, y1, x0, x1 = _window(cx, cy, side, size)
        a = object_alpha(obj.shape, cx - x0, cy - y0, side, y1 - y0, x1 - x0)[..., None]
        rgb = np.asarray(config.colors[obj.color], dtype=np.float32)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + rgb * a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
