"""The image processor: any mode and size to the model's RGB resolution, equal to Hugging
Face's SigLIP image processor, and a no-op for images already at the model's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from utamoe.vision.processor import ImageProcessor, to_rgb


def test_equals_hf_siglip_image_processor():
    from transformers import SiglipImageProcessor

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),
              rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    hf = SiglipImageProcessor(size={"height": 48, "width": 48})
    want = torch.as_tensor(hf(images=[Image.fromarray(x) for x in images],
                              return_tensors="np")["pixel_values"])
    got = ImageProcessor(48).pixel_values(images)
    assert got.shape == want.shape == (2, 3, 48, 48)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_images_at_the_model_size_pass_unchanged():
    img = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    out = ImageProcessor(48)(img)
    assert np.array_equal(out, img)


@pytest.mark.parametrize("make", [
    lambda: Image.fromarray(np.full((28, 28), 200, np.uint8), "L"),
    lambda: Image.fromarray(np.full((20, 30, 4), 200, np.uint8), "RGBA"),
    lambda: np.full((28, 28), 200, np.uint8),
    lambda: np.full((28, 28, 1), 200, np.uint8),
    lambda: np.full((28, 28, 3), 200 / 255, np.float32),
], ids=["pil-L", "pil-RGBA", "gray-2d", "gray-hw1", "float01"])
def test_modes_become_rgb_uint8(make):
    out = ImageProcessor(16)(make())
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.all(np.abs(out.astype(int) - 200) <= 1)


def test_16_bit_png_is_scaled_not_white(tmp_path):
    arr = np.full((10, 10), 30000, np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        out = to_rgb(im)
    assert out.shape == (10, 10, 3) and int(out[0, 0, 0]) == round(30000 / 257)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="channels last"):
        to_rgb(np.zeros((3, 8, 8, 2)))
    with pytest.raises(ValueError, match="resample"):
        ImageProcessor(8, "cubic")
