"""Linear probes on a model's understanding features: what reaches the backbone per image cell.

For ShapesWorld caption images of a split, fits a linear classifier (Adam, 300 full-batch
steps, 80/20 split) to predict, for each 3x3 grid cell, its object's colour and shape
("none" when empty) from the cell's und-feature tokens, and the same from the cell's raw
pixels as a reference; then, from a single token's feature, the grid cell it lies in
(all tokens, and tokens on an object). Used in benchmarks/RESULTS.md ("More levers tried")
to tell missing image information from a backbone that does not use it.

    python experiments/probe_features.py --model RUN/model --data RUN/data [--images 2000]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from utamoe.data.formats import load_split
from utamoe.infer.predictor import Predictor
from utamoe.vision.processor import pixel_values


def linear_probe(features: list[np.ndarray], labels: list, seed: int = 0) -> float:
    """Held-out accuracy of a linear classifier (standardised inputs, last 20 % held out)."""
    torch.manual_seed(seed)
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    x = torch.tensor(np.array(features))
    order = torch.randperm(len(x))
    x, y = x[order], y[order]
    n = int(len(x) * 0.8)
    x = (x - x[:n].mean(0)) / (x[:n].std(0) + 1e-5)
    lin = torch.nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.Adam(lin.parameters(), 1e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(lin(x[:n]), y[:n])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return round(float((lin(x[n:]).argmax(1) == y[n:]).float().mean()), 3)


def collect(model, samples) -> dict[str, list]:
    """Per-cell feature/pixel rows with their object's colour and shape, per-token rows with
    their cell (and whether the cell holds an object)."""
    grid = int(round(model.und_tokens ** 0.5))
    size = model.config.image_size
    rows: dict[str, list] = {k: [] for k in ("cell_feat", "cell_pix", "color", "shape",
                                             "tok_feat", "tok_cell", "tok_on_object")}
    with torch.no_grad():
        for start in range(0, len(samples), 200):
            chunk = samples[start:start + 200]
            px = pixel_values([s.image for s in chunk])
            feats = model.und_features(px).reshape(len(chunk), grid, grid, -1)
            for b, s in enumerate(chunk):
                objects = {(o["row"], o["col"]): o for o in s.meta["scene"]}
                for r in range(3):
                    for c in range(3):
                        rs, cs = slice(r * grid // 3, (r + 1) * grid // 3), slice(c * grid // 3, (c + 1) * grid // 3)
                        ps, qs = slice(r * size // 3, (r + 1) * size // 3), slice(c * size // 3, (c + 1) * size // 3)
                        rows["cell_feat"].append(feats[b, rs, cs].reshape(-1).numpy())
                        rows["cell_pix"].append(px[b, :, ps, qs].reshape(-1).numpy())
                        o = objects.get((r, c))
                        rows["color"].append(o["color"] if o else "none")
                        rows["shape"].append(o["shape"] if o else "none")
                for i in range(grid):
                    for j in range(grid):
                        cell = (i * 3 // grid, j * 3 // grid)
                        rows["tok_feat"].append(feats[b, i, j].numpy())
                        rows["tok_cell"].append(cell[0] * 3 + cell[1])
                        rows["tok_on_object"].append(cell in objects)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model directory (e.g. RUN/model)")
    ap.add_argument("--data", required=True, help="ShapesWorld dataset directory")
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=2000, help="caption images to probe")
    args = ap.parse_args(argv)
    model = Predictor.load(args.model).model
    samples = [s for s in load_split(f"{args.data}/{args.split}.jsonl")[0] if s.task == "caption"]
    rows = collect(model.eval(), samples[:args.images])
    on = [i for i, v in enumerate(rows["tok_on_object"]) if v]
    result = {
        "cell_color_from_features": linear_probe(rows["cell_feat"], rows["color"]),
        "cell_shape_from_features": linear_probe(rows["cell_feat"], rows["shape"]),
        "cell_color_from_pixels": linear_probe(rows["cell_pix"], rows["color"]),
        "cell_shape_from_pixels": linear_probe(rows["cell_pix"], rows["shape"]),
        "token_cell_all_tokens": linear_probe(rows["tok_feat"], rows["tok_cell"]),
        "token_cell_object_tokens": linear_probe([rows["tok_feat"][i] for i in on],
                                                 [rows["tok_cell"][i] for i in on]),
        "cells": len(rows["color"]), "tokens": len(rows["tok_cell"]),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
