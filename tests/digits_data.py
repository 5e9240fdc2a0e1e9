"""A synthetic MNIST-like dataset in the utamoe format (no download needed).

Handwritten-looking digits: a digit drawn with PIL's default font, randomly
rotated, sheared, scaled and shifted, blurred, white on black, grayscale 28x28 --
then upscaled to `size` (48 by default, what the ShapesWorld recipes expect) and
saved as grayscale PNG. Records: vqa ("what digit is this?"), caption ("a
handwritten two"), pope ("is there a seven in the image?") and t2i ("draw a
handwritten two") per image.

Used by the test of the denormal-float guard (tests/train/test_numerics.py) and,
as a script, to build the user-data reproduction of the slow-training report:

    python tests/digits_data.py OUT [--n 5000] [--size 48] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def render_digit(digit: int, rng: random.Random, size: int = 48) -> np.ndarray:
    """One grayscale digit, HxWx3 uint8 (the three channels equal), MNIST-like at 28x28
    then resized to `size` (bilinear) unless `size` is 28."""
    font = ImageFont.load_default()
    glyph = Image.new("L", (16, 16), 0)
    ImageDraw.Draw(glyph).text((4, 1), str(digit), fill=255, font=font)
    box = glyph.getbbox() or (0, 0, 16, 16)
    glyph = glyph.crop(box)
    scale = rng.uniform(14, 20) / glyph.height
    glyph = glyph.resize((max(1, round(glyph.width * scale * rng.uniform(0.8, 1.3))),
                          max(1, round(glyph.height * scale))), Image.BILINEAR)
    # stroke thickness like a pen, then an affine (rotation + shear) about the centre
    glyph = glyph.filter(ImageFilter.MaxFilter(3))
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(glyph, ((28 - glyph.width) // 2 + rng.randint(-2, 2),
                         (28 - glyph.height) // 2 + rng.randint(-2, 2)))
    angle = math.radians(rng.uniform(-15, 15))
    shear = rng.uniform(-0.3, 0.3)
    a, b = math.cos(angle), math.sin(angle) + shear
    c, d = -math.sin(angle), math.cos(angle)
    cx = cy = 14
    canvas = canvas.transform((28, 28), Image.AFFINE,
                              (a, b, cx - a * cx - b * cy, c, d, cy - c * cx - d * cy),
                              resample=Image.BILINEAR)
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9)))
    if size != 28:
        canvas = canvas.resize((size, size), Image.BILINEAR)
    arr = np.asarray(canvas, dtype=np.uint8)
    return np.repeat(arr[:, :, None], 3, axis=2)


def digit_samples(n: int, seed: int = 0, size: int = 48, split: str = "train"):
    """`n` images, each used by a vqa, caption, pope and t2i record (4n samples)."""
    from utamoe.data.formats import Sample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        digit = rng.randrange(10)
        img = render_digit(digit, rng, size)
        word = WORDS[digit]
        other = rng.randrange(10)
        out.append(Sample(id=f"{split}-vqa-{i:06d}", task="vqa", prompt="what digit is this?",
                          image=img, target=word, meta={"digit": digit}))
        out.append(Sample(id=f"{split}-caption-{i:06d}", task="caption",
                          prompt="describe the image", image=img,
                          target=f"a handwritten {word}"))
        out.append(Sample(id=f"{split}-pope-{i:06d}", task="pope",
                          prompt=f"is there a {WORDS[other]} in the image?", image=img,
                          target="yes" if other == digit else "no"))
        out.append(Sample(id=f"{split}-t2i-{i:06d}", task="t2i",
                          prompt=f"draw a handwritten {word}", target_image=img))
    return out


def write_digits(out: str | Path, n: int = 5000, seed: int = 0, size: int = 48,
                 n_test: int | None = None) -> Path:
    """Write the dataset: `train` (n images) and `test` (n_test, default n // 10)."""
    from utamoe.data.formats import write_manifest, write_split

    out = Path(out)
    n_test = max(1, n // 10) if n_test is None else n_test
    write_split(out, "train", digit_samples(n, seed, size, "train"))
    write_split(out, "test", digit_samples(n_test, seed + 1, size, "test"))
    write_manifest(out, "synthetic-digits", {"generator": "tests/digits_data.py",
                                             "config": {"n": n, "seed": seed, "size": size}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    write_digits(args.out, args.n, args.seed, args.size)


if __name__ == "__main__":
    main()
