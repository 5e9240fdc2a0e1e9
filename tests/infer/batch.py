"""One caller's batch through the engine (shared sampling, as Predictor calls are): the text
answers, code grids and images of a list of prompts, for tests that compare decoding paths."""

from __future__ import annotations

import torch

from utamoe.infer import Engine, Request, SamplingConfig


def answers(model, enc, tasks, prompts, images, cfg=None, use_cache=True) -> list[str]:
    cfg = cfg or SamplingConfig()
    reqs = [Request(t, p, img, cfg) for t, p, img in zip(tasks, prompts, images)]
    return [r.text for r in Engine(model, enc, use_cache).generate(reqs, shared_sampling=True)]


def _image_requests(prompts, cfg, edit_images, task):
    cfg = cfg or SamplingConfig()
    task = task or ("t2i" if edit_images is None else "edit")
    images = edit_images or [None] * len(prompts)
    return [Request(task, p, img, cfg) for p, img in zip(prompts, images)]


def codes(model, enc, prompts, cfg=None, edit_images=None, use_cache=True, task=None) -> torch.Tensor:
    """(B, N) code grids, as the old generate_codes returned them."""
    reqs = _image_requests(prompts, cfg, edit_images, task)
    got = Engine(model, enc, use_cache).generate(reqs, shared_sampling=True, pixels=False)
    return torch.tensor([r.codes for r in got])


def pictures(model, enc, prompts, cfg=None, edit_images=None, use_cache=True, task=None):
    reqs = _image_requests(prompts, cfg, edit_images, task)
    return [r.image for r in Engine(model, enc, use_cache).generate(reqs, shared_sampling=True)]
