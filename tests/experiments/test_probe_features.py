"""experiments/probe_features.py: the probe learns what is linearly there, and rows line up with cells."""

from __future__ import annotations

import numpy as np
import probe_features as pf

from tests.model.helpers import tiny_model
from utamoe.shapes import ShapesWorldConfig, generate_dataset


def test_linear_probe_finds_a_linear_label_and_not_a_random_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    assert pf.linear_probe(list(x), list(x[:, 0] > 0)) >= 0.95
    assert pf.linear_probe(list(x), list(rng.integers(0, 4, 400))) < 0.5


def test_collect_gives_one_row_per_cell_and_per_token():
    model, _, _ = tiny_model()
    samples = [s for s in generate_dataset(ShapesWorldConfig(sizes={"test": 6}))["test"] if s.task == "caption"]
    rows = pf.collect(model.eval(), samples)
    grid = int(round(model.und_tokens ** 0.5))
    assert len(rows["color"]) == len(rows["cell_feat"]) == len(rows["cell_pix"]) == 9 * len(samples)
    assert len(rows["tok_cell"]) == grid * grid * len(samples)
    objects = sum(len(s.meta["scene"]) for s in samples)
    assert sum(c != "none" for c in rows["color"]) == objects
