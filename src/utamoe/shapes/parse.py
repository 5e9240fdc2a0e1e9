"""The deterministic ShapesWorld scene parser: any RGB image back into a `Scene`.

Generated images are scored by parsing them (GenEval-style), so the parser must
read clean renders perfectly, tolerate what a VQ decoder does to them (blur, a
little noise, colour drift) and still *reject* what is wrong. It works cell by
cell, because the world puts at most one object, centred, in each 3x3 grid cell:

1. foreground = pixels far from the background colour; too few in a cell -> empty;
2. colour = the palette colour whose background->colour line best explains the
   foreground pixels (least squares); if the most opaque pixels are still far
   from it (a colour the world does not have), the colour is "unknown";
3. alpha = each pixel's position on that line, in [0, 1];
4. shape and size = the nearest (L2) rendered template, searched over small
   shifts (a generator may draw an object a pixel or two off-centre); "no object"
   competes as the empty template; a poor best fit (a blob, two fragments, a
   shape the world lacks) gives shape "unknown".

Objects with an "unknown" attribute never equal a prompt's object, so a wrong
image fails the facets it breaks instead of being forced onto the nearest class.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from utamoe.shapes.render import object_alpha
from utamoe.shapes.world import (
    SIZES,
    Scene,
    SceneObject,
    ShapesWorldConfig,
    cell_center,
    object_side,
)

UNKNOWN = "unknown"
_SHIFT = 2  # template search radius in pixels
# Templates are also matched blurred: a blurred small square is closer to a *sharp*
# circle than to a sharp square, but never closer to a blurred circle than to a
# blurred square. Sigmas in pixels at the world's image size.
_BLURS = (0.0, 0.8, 1.4, 2.0)
_BG_TOLERANCE = 60.0  # how far (RGB) an image's background may drift from the world's


def to_rgb_array(image, size: int) -> np.ndarray:
    """Any supported image (HxWx3/4 uint8 or float in [0, 1], PIL image) as float32 HxWx3 in
    0..255 at `size` x `size` (resized bilinearly when it differs)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 RGB image (channels last), got shape {arr.shape}")
    arr = arr[..., :3]
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(arr, 0.0, 1.0) * 255.0  # float images are in [0, 1]
    if arr.shape[:2] != (size, size):
        pil = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
        arr = np.asarray(pil.resize((size, size), Image.BILINEAR))
    return arr.astype(np.float32)


def _cell_bounds(config: ShapesWorldConfig, row: int, col: int) -> tuple[int, int, int, int]:
    cell = config.image_size / 3
    return (round(row * cell), round((row + 1) * cell), round(col * cell), round((col + 1) * cell))


@lru_cache(maxsize=16)
def _templates(
    image_size: int, small_frac: float, large_frac: float, shapes: tuple[str, ...]
) -> dict[tuple[int, int], tuple[np.ndarray, list[tuple[str, str]]]]:
    """Per cell: a stack (K, h, w) of shifted shape/size alpha templates and their labels."""
    config = ShapesWorldConfig(image_size=image_size, small_frac=small_frac,
                               large_frac=large_frac, shapes=shapes, heldout=())
    out = {}
    for row in range(3):
        for col in range(3):
            y0, y1, x0, x1 = _cell_bounds(config, row, col)
            cx, cy = cell_center(config, row, col)
            stack, labels = [], []
            for shape in shapes:
                for size in SIZES:
                    side = object_side(config, size)
                    for dy in range(-_SHIFT, _SHIFT + 1):
                        for dx in range(-_SHIFT, _SHIFT + 1):
                            alpha = object_alpha(shape, cx + dx - x0, cy + dy - y0, side,
                                                 y1 - y0, x1 - x0)
                            for sigma in _BLURS:
                                stack.append(_blur(alpha, sigma))
                                labels.append((shape, size))
            out[(row, col)] = (np.stack(stack), labels)
    return out


def _blur(alpha: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return alpha
    from scipy.ndimage import gaussian_filter  # scipy comes with scikit-image

    return gaussian_filter(alpha, sigma, mode="constant").astype(np.float32)


def parse_image(
    image,
    config: ShapesWorldConfig | None = None,
    *,
    max_color_dist: float = 60.0,
    max_shape_error: float = 0.45,
    min_pixels_frac: float = 0.3,
) -> Scene:
    """Read an image back into a Scene (objects carry their parsed normalised `box`).

    `max_color_dist`: RGB distance off the background->colour line (scaled to full
    opacity) beyond which the colour is "unknown"; `max_shape_error`: template misfit
    (squared error / template area) beyond which the shape is "unknown";
    `min_pixels_frac`: foreground pixels a cell needs, as a fraction of the smallest
    object's area, to hold an object at all.
    """
    config = config or ShapesWorldConfig()
    img = to_rgb_array(image, config.image_size)
    bg = _background(img, config)
    names = list(config.colors)
    palette = np.asarray([config.colors[n] for n in names], dtype=np.float32)
    vec = palette - bg  # (C, 3): direction from background to each colour
    # Foreground threshold: halfway to the colour nearest the background.
    thresh = 0.5 * float(np.linalg.norm(vec, axis=1).min())
    templates = _templates(config.image_size, config.small_frac, config.large_frac, config.shapes)
    small_area = min(_smallest_area(config, s) for s in config.shapes)
    min_pixels = max(3.0, min_pixels_frac * small_area)
    objects = []
    for (row, col), (stack, labels) in templates.items():
        y0, y1, x0, x1 = _cell_bounds(config, row, col)
        diff = img[y0:y1, x0:x1] - bg  # (h, w, 3)
        fg = np.linalg.norm(diff, axis=2) > thresh
        if fg.sum() < min_pixels:
            continue
        obj = _parse_cell(diff, fg, stack, labels, vec, names, max_color_dist, max_shape_error)
        if obj is None:
            continue
        shape, color, size, alpha = obj
        box = _box(alpha, y0, x0, config.image_size)
        objects.append(SceneObject(shape, color, size, row, col, box=box))
    return Scene(tuple(objects))


def _background(img: np.ndarray, config: ShapesWorldConfig) -> np.ndarray:
    """The image's own background when close to the world's: objects cover at most a
    quarter of the pixels, so the per-channel median is background, and using it
    absorbs a global colour drift (a VQ decoder's) that would bias every alpha."""
    bg = np.asarray(config.background, dtype=np.float32)
    med = np.median(img.reshape(-1, 3), axis=0)
    return med if float(np.linalg.norm(med - bg)) <= _BG_TOLERANCE else bg


def _smallest_area(config: ShapesWorldConfig, shape: str) -> float:
    side = object_side(config, "small")
    return {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[shape] * side * side


def _parse_cell(diff, fg, stack, labels, vec, names, max_color_dist, max_shape_error):
    """(shape, colour, size, alpha) for one cell, or None when it is best explained as empty."""
    px = diff[fg]  # (N, 3) foreground pixels relative to the background
    # Least-squares fit of each pixel onto each background->colour line.
    norms = (vec * vec).sum(axis=1)  # (C,)
    a = np.clip(px @ vec.T / norms, 0.0, 1.0)  # (N, C)
    resid = ((px[:, None, :] - a[..., None] * vec[None]) ** 2).sum(axis=(0, 2))
    ci = int(np.argmin(resid))
    alpha = np.clip(diff @ vec[ci] / norms[ci], 0.0, 1.0)  # (h, w)
    err = ((stack - alpha[None]) ** 2).sum(axis=(1, 2))
    best = int(np.argmin(err))
    if float((alpha**2).sum()) <= err[best]:
        return None  # "no object" fits better than any shape
    shape, size = labels[best]
    area = float(stack[best].sum())
    if err[best] / max(area, 1.0) > max_shape_error:
        shape = UNKNOWN
    color = names[ci]
    # The most opaque pixels must lie on the background->colour line: their distance
    # off the line, scaled back to full opacity, rejects colours the world lacks
    # (orange, white, purple) while a dimmer or blurred shade of a colour passes.
    top = np.argsort(a[:, ci])[-max(3, len(px) // 4):]
    at = a[top, ci]
    off = np.linalg.norm(px[top] - at[:, None] * vec[ci], axis=1) / np.maximum(at, 0.3)
    if float(np.median(off)) > max_color_dist:
        color = UNKNOWN
    return shape, color, size, alpha


def _box(alpha: np.ndarray, y0: int, x0: int, size: int) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(alpha > 0.5)
    if len(ys) == 0:  # very faint object: fall back to any coverage
        ys, xs = np.nonzero(alpha > 0)
    return (float(x0 + xs.min()) / size, float(y0 + ys.min()) / size,
            float(x0 + xs.max() + 1) / size, float(y0 + ys.max() + 1) / size)
