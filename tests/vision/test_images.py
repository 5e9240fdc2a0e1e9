"""Image files -> arrays (utamoe.vision.images.read_image): the pixel limit before decoding, and a
JPEG decoded at a reduced DCT scale for a small model (`draft`), other formats untouched."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from utamoe.vision.images import ImageTooLarge, read_image
from utamoe.vision.processor import to_rgb


def _encoded(fmt: str, size=(256, 192)) -> bytes:
    rng = np.random.default_rng(0)
    arr = np.clip(np.linspace(0, 255, size[0])[None, :, None] + rng.normal(0, 20, (size[1], size[0], 3)),
                  0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_draft_decodes_a_jpeg_at_the_smallest_scale_that_still_covers_the_size():
    data = _encoded("JPEG")
    assert read_image(data, 10**8).shape == (192, 256, 3)
    small = read_image(data, 10**8, draft=48)
    assert small.shape == (48, 64, 3)  # 1/4: the height is still 48; 1/8 would be 24
    full = to_rgb(read_image(data, 10**8), 48)
    assert np.abs(to_rgb(small, 48).astype(int) - full.astype(int)).mean() < 3


def test_draft_leaves_other_formats_and_the_pixel_limit_alone():
    png = _encoded("PNG")
    assert np.array_equal(read_image(png, 10**8, draft=48), read_image(png, 10**8))
    with pytest.raises(ImageTooLarge):
        read_image(_encoded("JPEG"), 1000, draft=48)
