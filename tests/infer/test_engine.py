"""The decoding engine (utamoe.infer.engine): cached equals uncached, seeded sampling repeats, a
mixed batch gives each request what it gets alone, traces name every token's experts, and a
cell constraint with every cell free is the unconstrained request, draw for draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from utamoe.infer import CellConstraint, Engine, Request, SamplingConfig
from utamoe.moe import MoEConfig

from ..model.helpers import images, mixed_batch, tiny_model
from .batch import answers, codes, pictures


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.mark.parametrize("moe", [None, MoEConfig()], ids=["dense", "ta_moe"])
def test_cached_generation_equals_uncached(moe):
    model, tok, enc = tiny_model(moe=moe)
    model.eval()
    imgs = images(3)
    tasks, prompts = ["vqa", "caption", "grounding"], ["what color is the circle ?", "describe", "where ?"]
    greedy = SamplingConfig(max_new_tokens=6)
    assert answers(model, enc, tasks, prompts, imgs, greedy, use_cache=True) == \
        answers(model, enc, tasks, prompts, imgs, greedy, use_cache=False)
    for cfg in (SamplingConfig(), SamplingConfig(cfg_scale=3.0),
                SamplingConfig(temperature=1.0, top_k=5, cfg_scale=2.0, seed=3)):
        prompts = ["a red circle at the top left", "a blue square"]
        a = codes(model, enc, prompts, cfg, use_cache=True)
        b = codes(model, enc, prompts, cfg, use_cache=False)
        assert a.shape == (2, model.config.code_grid**2) and torch.equal(a, b)
    edited = codes(model, enc, ["make the circle blue"], SamplingConfig(cfg_scale=2.0),
                            edit_images=imgs[:1])
    assert edited.shape == (1, model.config.code_grid**2)
    out = pictures(model, enc, ["a red circle"], SamplingConfig())
    assert out[0].shape == (48, 48, 3) and out[0].dtype == np.uint8


def test_sampling_is_reproducible_by_seed():
    model, tok, enc = tiny_model(moe=None)
    model.eval()
    cfg = SamplingConfig(temperature=1.0, seed=7)
    a = codes(model, enc, ["a red circle"], cfg)
    assert torch.equal(a, codes(model, enc, ["a red circle"], cfg))


def test_generation_raises_no_deprecation_warning_of_ours(capfd, caplog):
    """The decoder's cache argument is passed (and read back) under the name this transformers
    version takes: no FutureWarning, no deprecation line from transformers' logger."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.enable_default_handler()
    hf_logging.enable_propagation()
    model, tok, enc = tiny_model()
    with warnings.catch_warnings(), caplog.at_level("WARNING"):
        warnings.simplefilter("error", FutureWarning)
        answers(model, enc, ["vqa"], ["what color is the circle ?"], images(1))
        codes(model, enc, ["a red circle at the top left"], SamplingConfig(cfg_scale=2.0))
        model(mixed_batch(enc)[0])  # the training forward (no cache) too
    hf_logging.disable_propagation()
    assert "deprecated" not in capfd.readouterr().err + caplog.text


def test_a_mixed_batch_equals_each_request_alone(tiny):
    model, _, enc = tiny
    img = images(1)[0]
    reqs = [Request("vqa", "what color is the circle ?", img, SamplingConfig(max_new_tokens=6)),
            Request("t2i", "a red circle at the top left", None, SamplingConfig(temperature=1.0, seed=4,
                                                                                 cfg_scale=2.0)),
            Request("caption", "describe the image .", img, SamplingConfig(temperature=1.0, seed=2,
                                                                             max_new_tokens=5)),
            Request("edit", "make the circle blue", img, SamplingConfig(seed=1))]
    got = Engine(model, enc).generate(reqs)
    for r, g in zip(reqs, got):
        if r.task in ("vqa", "caption"):
            assert g.text == answers(model, enc, [r.task], [r.prompt], [img], r.sampling)[0]
        else:
            edits = [img] if r.task == "edit" else None
            want = pictures(model, enc, [r.prompt], r.sampling, edit_images=edits)[0]
            assert np.array_equal(g.image, want)


def test_trace_gives_each_generated_token_its_group_and_experts(tiny):
    model, _, enc = tiny
    steps = []
    res = Engine(model, enc).generate([Request("t2i", "a red circle", None, SamplingConfig())],
                                      trace=True, on_step=lambda i, e: steps.append(e))
    n = model.config.code_grid ** 2
    assert len(res[0].trace) == n and steps[-1] == ("progress", n)
    layer = res[0].trace[0]["layers"][0]
    assert set(layer) == {"layer", "group", "experts"} and layer["group"] in (0, 1)
    assert len(res[0].trace[0]["layers"]) == 2  # both MoE layers of the tiny model


class _Always(nn.Module):
    """A generation head that always prefers one code."""

    def __init__(self, n_codes: int, code: int):
        super().__init__()
        self.n_codes, self.code = n_codes, code

    def forward(self, h):
        logits = torch.zeros(*h.shape[:-1], self.n_codes)
        logits[..., self.code] = 10.0
        return logits


@pytest.mark.parametrize("cfg", [SamplingConfig(temperature=1.0, seed=3),
                                 SamplingConfig(temperature=1.0, top_k=5, cfg_scale=2.0, seed=4)])
def test_a_constraint_with_every_cell_free_is_the_models_own_edit(tiny, cfg):
    """The box-grounded editor's constraint changes nothing where every cell is free: the same
    draws from the same seeded generator as the unconstrained edit (cached or not)."""
    model, _, enc = tiny
    image = model.processor(np.random.default_rng(1).integers(0, 255, (48, 48, 3), np.uint8))
    want = codes(model, enc, ["make the circle blue"], cfg, [image], task="edit")[0]
    codes_in = enc.image_codes(image)
    free = torch.ones(model.config.code_grid ** 2, dtype=torch.bool)
    req = Request("edit", "make the circle blue", image, cfg, input_codes=codes_in,
                  constraint=CellConstraint(free, codes_in))
    for cache in (True, False):
        (got,) = Engine(model, enc, use_cache=cache).generate([req], pixels=False)
        assert got.codes == want.tolist()


def test_only_the_free_cells_are_sampled(tiny, monkeypatch):
    model, _, enc = tiny
    image = model.processor(np.random.default_rng(2).integers(0, 255, (48, 48, 3), np.uint8))
    codes_in = torch.tensor(enc.image_codes(image))
    target = int((codes_in.max() + 1) % model.config.num_codes)  # a code the input may lack
    monkeypatch.setattr(model, "gen_head", _Always(model.config.num_codes, target))
    free = torch.zeros(model.config.code_grid ** 2, dtype=torch.bool)
    free[3:7] = True
    req = Request("edit", "make the circle blue", image, input_codes=codes_in.tolist(),
                  constraint=CellConstraint(free, codes_in.tolist()))
    (got,) = Engine(model, enc).generate([req], pixels=False)
    got = torch.tensor(got.codes)
    assert (got[free] == target).all()
    assert torch.equal(got[~free], codes_in[~free])
