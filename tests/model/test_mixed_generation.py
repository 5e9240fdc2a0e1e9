"""Mixed batches: text and image requests decoded together give what each gives alone
(greedy and seeded sampling, with and without guidance), and traces name every token's experts."""

from __future__ import annotations

import numpy as np
import pytest

from utamoe.model.generation import SamplingConfig, generate_images, generate_text
from utamoe.model.mixed_generation import Request, generate_mixed

from .helpers import images, tiny_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def test_a_mixed_batch_equals_each_request_alone(tiny):
    model, _, enc = tiny
    img = images(1)[0]
    reqs = [Request("vqa", "what color is the circle ?", img, SamplingConfig(max_new_tokens=6)),
            Request("t2i", "a red circle at the top left", None, SamplingConfig(temperature=1.0, seed=4,
                                                                                 cfg_scale=2.0)),
            Request("caption", "describe the image .", img, SamplingConfig(temperature=1.0, seed=2,
                                                                             max_new_tokens=5)),
            Request("edit", "make the circle blue", img, SamplingConfig(seed=1))]
    got = generate_mixed(model, enc, reqs)
    for r, g in zip(reqs, got):
        if r.task in ("vqa", "caption"):
            assert g.text == generate_text(model, enc, [r.task], [r.prompt], [img], r.sampling)[0]
        else:
            edits = [img] if r.task == "edit" else None
            want = generate_images(model, enc, [r.prompt], r.sampling, edit_images=edits)[0]
            assert np.array_equal(g.image, want)


def test_trace_gives_each_generated_token_its_group_and_experts(tiny):
    model, _, enc = tiny
    steps = []
    res = generate_mixed(model, enc, [Request("t2i", "a red circle", None, SamplingConfig())],
                         trace=True, on_step=lambda i, e: steps.append(e))
    n = model.config.code_grid ** 2
    assert len(res[0].trace) == n and steps[-1] == ("progress", n)
    layer = res[0].trace[0]["layers"][0]
    assert set(layer) == {"layer", "group", "experts"} and layer["group"] in (0, 1)
    assert len(res[0].trace[0]["layers"]) == 2  # both MoE layers of the tiny model
