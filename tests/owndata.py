"""A small dataset that is not ShapesWorld, written in the utamoe format: digits drawn with
PIL's built-in font (grayscale 28x28 by default, or RGB of any size), with caption, vqa, pope
and t2i records. Used by the tests that train and evaluate on "a user's own data"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_image(d: int, rng: np.random.Generator, size=(28, 28), mode: str = "L") -> Image.Image:
    w, h = size
    im = Image.new(mode, (w, h), 0 if mode == "L" else (0, 0, 0))
    draw = ImageDraw.Draw(im)
    x, y = int(rng.integers(2, max(3, w - 10))), int(rng.integers(2, max(3, h - 14)))
    fill = int(rng.integers(180, 256))
    draw.text((x, y), str(d), fill=fill if mode == "L" else (fill, int(rng.integers(0, 256)), 90))
    return im


def write_digits(root: Path, n_per_task: dict[str, int], size=(28, 28), mode: str = "L",
                 seed: int = 0) -> Path:
    """`root` with one <split>.jsonl per entry of `n_per_task` (samples per task)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, n in n_per_task.items():
        lines = []
        for i in range(n):
            d = int(rng.integers(10))
            rel = f"images/{split}_{i}.png"
            digit_image(d, rng, size, mode).save(root / rel)
            other = WORDS[(d + 1 + int(rng.integers(9))) % 10]
            probe = WORDS[d] if i % 2 == 0 else other
            lines += [
                {"id": f"{split}-cap-{i}", "task": "caption", "group": "und",
                 "prompt": "describe the image", "image": rel, "target": f"a handwritten {WORDS[d]}"},
                {"id": f"{split}-vqa-{i}", "task": "vqa", "group": "und",
                 "prompt": "what digit is this?", "image": rel, "target": WORDS[d]},
                {"id": f"{split}-pope-{i}", "task": "pope", "group": "und",
                 "prompt": f"is there a {probe}?", "image": rel,
                 "target": "yes" if probe == WORDS[d] else "no"},
                {"id": f"{split}-t2i-{i}", "task": "t2i", "group": "gen",
                 "prompt": f"a handwritten {WORDS[d]}", "target_image": rel},
            ]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def write_llava(root: Path, n: int, size=(32, 32), seed: int = 0) -> Path:
    """A folder in LLaVA's layout: `images/` and `llava_instruct.json`, a JSON array of records
    with one or two exchanges about a drawn digit (and every fifth without an image)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        d = int(rng.integers(10))
        if i % 5 == 4:
            records.append({"id": f"text-{i}", "conversations": [
                {"from": "human", "value": f"What comes after {WORDS[d]}?"},
                {"from": "gpt", "value": WORDS[(d + 1) % 10]}]})
            continue
        digit_image(d, rng, size, "RGB").save(root / "images" / f"{i:05d}.jpg")
        turns = [{"from": "human", "value": "<image>\nWhich digit is drawn?"},
                 {"from": "gpt", "value": WORDS[d]}]
        if i % 3 == 0:
            turns += [{"from": "human", "value": "Is it even?"},
                      {"from": "gpt", "value": "yes" if d % 2 == 0 else "no"}]
        records.append({"id": f"{i:05d}", "image": f"{i:05d}.jpg", "conversations": turns})
    (root / "llava_instruct.json").write_text(json.dumps(records, indent=1))
    return root
