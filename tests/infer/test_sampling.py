"""Nucleus (top-p) sampling: which tokens it keeps, that it is checked, and that 1 is no filter."""

from __future__ import annotations

import pytest
import torch

from utamoe.infer.checks import InputError, check_sampling
from utamoe.infer.sampling import SamplingConfig, nucleus, pick


def test_nucleus_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    assert torch.allclose(nucleus(probs, 0.7), torch.tensor([[0.0, 0.625, 0.0, 0.375]]))
    assert torch.allclose(nucleus(probs, 0.5), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(nucleus(probs, 0.01), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))  # top stays
    assert torch.allclose(nucleus(probs, 1.0), probs)


def test_top_p_draws_only_from_the_nucleus_and_one_is_plain_sampling():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]])).repeat(400, 1)
    drawn = pick(logits, SamplingConfig(temperature=1.0, top_p=0.7), torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {1, 3}
    plain = pick(logits, SamplingConfig(temperature=1.0), torch.Generator().manual_seed(0))
    same = pick(logits, SamplingConfig(temperature=1.0, top_p=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(plain, same) and set(plain.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("top_p", [0.0, -0.1, 1.5, float("nan")])
def test_a_top_p_outside_zero_one_is_an_input_error(top_p):
    with pytest.raises(InputError, match="top-p"):
        check_sampling(SamplingConfig(top_p=top_p))
