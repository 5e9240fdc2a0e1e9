"""The box-grounded editor: regenerate only the image codes inside a box, keep the rest.

`<edit>make it blue<box>[0.35,0.02,0.65,0.31]</box></edit>` asks for a change inside the box
and none outside. The unified model edits by generating a new code grid in raster order
after the edit prefix `<bos> <edit> <img> input codes </img> instruction <img>`
(utamoe.data.sequences). Here that loop runs with the same prefix, KV cache and
classifier-free guidance as `utamoe.model.generation.generate_codes`, except that a grid
cell outside every box is not sampled: its code is forced to the input image's code and
fed back, so the model conditions on the unchanged surroundings when it fills the box.
Decoding the grid still changes pixels outside the box a little (the decoder mixes
neighbouring cells, and the input was resized to the model's resolution), so the edited
pixels are composited into the input image: every pixel outside the boxes is the input's
own pixel, bit for bit, at the input's own size.

With no box in the span the editor is the model's whole-image edit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch

from utamoe.model import generation
from utamoe.model.generation import SamplingConfig, pick
from utamoe.tasks_exec.executors import ExecContext, ExecRequest, ExecResult, need_predictor
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


@torch.no_grad()
def constrained_codes(model, encoder, prompt: str, input_codes: Sequence[int], free: torch.Tensor,
                      cfg: SamplingConfig | None = None, task: str = "edit",
                      use_cache: bool = True) -> torch.Tensor:
    """Codes (N,) for one edit: sampled where `free` (bool (N,)) is True, the input's code
    elsewhere, with the task's edit prefix and the model's own sampling and guidance.

    With every cell free this is exactly `generate_codes(model, encoder, [prompt], cfg,
    [image], task=task)[0]` (the same draws from the same seeded generator)."""
    cfg = cfg or SamplingConfig()
    codes_in = [int(c) for c in input_codes]
    n_codes = model.config.code_grid ** 2
    if len(codes_in) != n_codes or free.numel() != n_codes:
        raise ValueError(f"expected {n_codes} input codes and cells, got {len(codes_in)} and "
                         f"{free.numel()}")
    guided = cfg.cfg_scale != 1.0
    seqs = [encoder.prefix(task, prompt, input_codes=codes_in)]
    if guided:
        seqs.append(encoder.prefix(task, prompt, input_codes=codes_in, null_prompt=True))
    device = model.gen_embed.weight.device
    forced = torch.tensor(codes_in, device=device)
    free_list = free.tolist()
    gen = torch.Generator().manual_seed(cfg.seed)
    out = []
    with generation.decoding(model, seqs, encoder.special.pad, use_cache) as (_, stepper):
        for i in range(n_codes):
            if free_list[i]:
                logits = model.gen_head(stepper.last()).float()
                if guided:
                    logits = logits[1:] + cfg.cfg_scale * (logits[:1] - logits[1:])
                nxt = pick(logits[:1], cfg, gen)
            else:
                nxt = forced[i:i + 1]
            out.append(nxt)
            if i + 1 < n_codes:
                feed = nxt.repeat(len(seqs))
                stepper.step(model.code_embeddings(feed[:, None]))
    return torch.cat(out)


class BoxEditor:
    """The unified model's edit, confined to the span's boxes (see the module docstring)."""

    name = "box_edit"
    task = "edit"

    def __init__(self, predictor, sampling: SamplingConfig | None = None, task: str = "edit"):
        self.predictor, self.sampling, self.edit_task = predictor, sampling or SamplingConfig(), task

    def __call__(self, request: ExecRequest) -> ExecResult:
        image = request.need_image()
        if not request.text:
            raise ValueError(f"<{request.task}> needs an instruction (text) to edit the box with")
        if not request.boxes:
            edited = self.predictor.generate([request.text], self.sampling, images=image,
                                             task=self.edit_task)[0]
            return ExecResult(images=[edited], info={"grounded": False})
        p = self.predictor
        model, encoder = p.model, p.encoder
        free = box_cells(request.boxes, model.config.code_grid)
        with _lock(p), torch.no_grad():
            codes_in = encoder.image_codes(encoder.process(image))
            codes = constrained_codes(model, encoder, request.text, codes_in, free, self.sampling,
                                      self.edit_task)
            g = model.config.code_grid
            pixels = model.image_tokenizer.decode(codes.view(1, g, g))
        decoded = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)[0]
        out = composite(image, decoded.cpu().numpy(), request.boxes)
        changed = [i for i, (a, b) in enumerate(zip(codes.tolist(), codes_in)) if a != b]
        return ExecResult(images=[out], info={
            "grounded": True, "regenerated_cells": int(free.sum()), "changed_cells": changed,
            "codes": codes.tolist(), "input_codes": list(codes_in)})


def _lock(predictor):
    """The predictor's call lock, so the editor is as thread-safe as a Predictor call."""
    return getattr(predictor, "lock", None) or contextlib.nullcontext()


def box_edit(context: ExecContext, sampling: dict | None = None, task: str = "edit") -> BoxEditor:
    """Factory: the box-grounded editor on the context's predictor; `sampling` holds
    SamplingConfig fields (temperature, top_k, cfg_scale, seed)."""
    from utamoe.tasks_exec.builtin import sampling_config

    return BoxEditor(need_predictor(context, "box_edit"), sampling_config(sampling, "box_edit"), task)
