"""Stage surgery and MoE group order: a recipe may list group_names in any order, and the
groups keep their meaning (task labels, the experts started from stage 1's task FFNs)."""

from __future__ import annotations

import pytest
import torch

from utamoe.config import ConfigError
from utamoe.moe import MoEConfig, moe_layers
from utamoe.train.stages import split_ffn, upcycle_stage

from ..model.helpers import mixed_batch, tiny_model


def _split_model():
    model, tok, enc = tiny_model(moe=None)
    split_ffn(model)
    with torch.no_grad():  # make the two task FFNs differ visibly
        for layer in moe_layers(model.lm):
            layer.experts.w_down[1].mul_(3.0)
    return model, enc


@pytest.mark.parametrize("names", [("und", "gen"), ("gen", "und")])
def test_upcycle_starts_each_group_from_its_task_ffn_whatever_the_order(names):
    model, enc = _split_model()
    split = [layer.experts.w_down.detach().clone() for layer in moe_layers(model.lm)]
    moe = MoEConfig(group_names=names, num_experts=4, top_k=1, group_routing="oracle")
    upcycle_stage(model, moe)
    for before, layer in zip(split, moe_layers(model.lm)):
        for g, name in enumerate(names):
            src = before[("und", "gen").index(name)]
            for e in layer.config.group_experts(g):
                torch.testing.assert_close(layer.experts.w_down[e], src)


def test_swapped_group_names_compute_the_same_losses():
    outs = []
    for names in (("und", "gen"), ("gen", "und")):
        model, enc = _split_model()
        upcycle_stage(model, MoEConfig(group_names=names, num_experts=4, top_k=1,
                                       group_routing="oracle", num_shared_experts=0))
        batch, _ = mixed_batch(enc)
        outs.append(model(batch))
    torch.testing.assert_close(outs[0].group_losses["und"], outs[1].group_losses["und"])
    torch.testing.assert_close(outs[0].group_losses["gen"], outs[1].group_losses["gen"])


def test_group_names_that_are_not_task_groups_are_rejected():
    model, _ = _split_model()
    with pytest.raises(ConfigError, match="task registry's groups"):
        upcycle_stage(model, MoEConfig(group_names=("und", "img")))
