"""Inference helpers behind `utamoe generate` and `utamoe answer`: load, validate, run, save.

Each check names what is wrong and what to do: a missing model directory, an
unreadable image, an image of the wrong size, an empty prompt.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from utamoe.data.sequences import Encoder
from utamoe.generation import SamplingConfig, generate_images, generate_text
from utamoe.model.io import load_model_dir
from utamoe.text_tokenizer import SpecialIds


class InputError(ValueError):
    """Bad user input (file, size, prompt); the message says what to do."""


def make_encoder(model, text_tokenizer) -> Encoder:
    """The sequence encoder matching a model (its und slot id and number of und features)."""
    special = dataclasses.replace(SpecialIds.of(text_tokenizer), und_slot=model.config.und_slot_id)

    def image_codes(img: np.ndarray) -> list[int]:
        from utamoe.data.sequences import pixels

        device = model.gen_embed.weight.device
        return model.image_tokenizer.encode(pixels([img]).to(device)).reshape(-1).tolist()

    return Encoder(text_tokenizer, special, model.und_tokens, image_codes)


def load_for_inference(model_dir: str | Path, device: str = "cpu"):
    path = Path(model_dir)
    if not path.is_dir():
        raise InputError(f"model directory {path} does not exist (give the DIR/model that "
                         f"`utamoe demo` or `utamoe train` wrote)")
    model, tok = load_model_dir(path, device)
    if tok is None:
        raise InputError(f"{path} has no text_tokenizer/ directory; re-save the model with its tokenizer")
    if model.image_tokenizer is None:
        raise InputError(f"{path} has no image_tokenizer/ directory; it cannot read or draw images")
    return model, make_encoder(model, tok)


def read_image(path: str | Path, size: int) -> np.ndarray:
    """An RGB uint8 image of exactly size x size pixels."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"cannot read image {path}: {err}") from err
    if img.shape[:2] != (size, size):
        raise InputError(f"image {path} is {img.shape[1]}x{img.shape[0]} but this model takes "
                         f"{size}x{size} images; resize it first")
    return img


def check_prompts(prompts: list[str], what: str = "prompt") -> list[str]:
    if not prompts:
        raise InputError(f"give at least one --{what}")
    for i, p in enumerate(prompts):
        if not p or not p.strip():
            raise InputError(f"--{what} number {i + 1} is empty")
    return [p.strip() for p in prompts]


def output_paths(out: str | Path, n_prompts: int, n_images: int) -> list[list[Path]]:
    """OUT itself for one image; OUT_<prompt>_<image>.png for several."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out} must end in .png")
    if n_prompts * n_images == 1:
        return [[out]]
    return [[out.with_name(f"{out.stem}_{i}_{j}.png") for j in range(n_images)] for i in range(n_prompts)]


def run_generate(model, encoder, prompts, out, n_images=1, sampling=None, edit_image=None):
    from PIL import Image

    prompts = check_prompts(prompts)
    paths = output_paths(out, len(prompts), n_images)
    sampling = sampling or SamplingConfig(temperature=1.0, top_k=0, cfg_scale=3.0)
    edits = None if edit_image is None else [edit_image] * len(prompts)
    written = []
    for j in range(n_images):
        cfg = dataclasses.replace(sampling, seed=sampling.seed + j)
        images = generate_images(model, encoder, prompts, cfg, edit_images=edits)
        for i, img in enumerate(images):
            paths[i][j].parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(paths[i][j])
            written.append(paths[i][j])
    return written


def run_answer(model, encoder, image: np.ndarray, questions: list[str], task: str = "vqa",
               sampling: SamplingConfig | None = None) -> list[str]:
    questions = check_prompts(questions, "question")
    with torch.no_grad():
        return generate_text(model, encoder, [task] * len(questions), questions,
                             [image] * len(questions), sampling)
