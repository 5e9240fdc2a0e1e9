"""Router losses on hand-built routings whose values are known."""

from __future__ import annotations

import math

import pytest
import torch

from utamoe.moe import MoEConfig, TaskAwareMoE
from utamoe.moe.losses import balance_loss, group_supervision_loss, routing_stats, z_loss
from utamoe.moe.routers import Routing


def routing(local_TK, groups_T, expert_logits, group_logits=None, eg=2):
    ids = groups_T[:, None] * eg + local_TK
    return Routing(ids, torch.ones_like(local_TK, dtype=torch.float), local_TK, groups_T,
                   expert_logits, group_logits, None)


def test_balance_loss_is_one_when_balanced_and_higher_when_collapsed():
    T = 8
    valid = torch.ones(T, dtype=torch.bool)
    uniform = torch.zeros(T, 2)
    balanced = routing(torch.arange(T)[:, None] % 2, torch.arange(T) // 4, uniform)
    assert balance_loss(balanced, valid, 2).item() == pytest.approx(1.0)
    # Every token to local expert 0 with probability 0.9: Eg * (1 * 0.9) = 1.8 in each group.
    logits = torch.log(torch.tensor([[0.9, 0.1]])).expand(T, 2)
    collapsed = routing(torch.zeros(T, 1, dtype=torch.long), torch.arange(T) // 4, logits)
    assert balance_loss(collapsed, valid, 2).item() == pytest.approx(1.8, rel=1e-5)
    # A group that received no token does not dilute the mean.
    only_group0 = routing(torch.zeros(T, 1, dtype=torch.long), torch.zeros(T, dtype=torch.long), logits)
    assert balance_loss(only_group0, valid, 2).item() == pytest.approx(1.8, rel=1e-5)


def test_balance_loss_is_k_independent_and_ignores_padding():
    T = 6
    two_slots = routing(torch.tensor([[0, 1]] * T), torch.zeros(T, dtype=torch.long), torch.zeros(T, 2))
    assert balance_loss(two_slots, torch.ones(T, dtype=torch.bool), 2).item() == pytest.approx(1.0)
    valid = torch.tensor([True, True, False, False, False, False])
    local = torch.tensor([[0], [1], [0], [0], [0], [0]])
    r = routing(local, torch.zeros(T, dtype=torch.long), torch.zeros(T, 2))
    assert balance_loss(r, valid, 2).item() == pytest.approx(1.0)  # padding all at expert 0


def test_z_loss_and_group_loss_values():
    T = 4
    r = routing(torch.zeros(T, 1, dtype=torch.long), torch.zeros(T, dtype=torch.long),
                torch.zeros(T, 4), group_logits=torch.zeros(T, 2), eg=4)
    valid = torch.ones(T, dtype=torch.bool)
    assert z_loss(r, valid).item() == pytest.approx(math.log(4) ** 2 + math.log(2) ** 2)
    labels = torch.tensor([0, 1, -1, 1])
    assert group_supervision_loss(r, labels, valid).item() == pytest.approx(math.log(2))
    confident = routing(torch.zeros(T, 1, dtype=torch.long), torch.zeros(T, dtype=torch.long),
                        torch.zeros(T, 4), group_logits=torch.tensor([[9.0, -9.0]] * T), eg=4)
    assert group_supervision_loss(confident, torch.tensor([0, 0, -1, -1]), valid).item() < 1e-6


def test_routing_stats_on_forced_routing():
    local = torch.tensor([[0], [1], [1], [0]])
    groups = torch.tensor([0, 0, 1, 1])
    r = routing(local, groups, torch.zeros(4, 2), group_logits=torch.tensor(
        [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    labels = torch.tensor([0, 0, 1, 1])
    s = routing_stats(r, labels, torch.ones(4, dtype=torch.bool), 2, 4, 2)
    assert s["expert_tokens"].tolist() == [1, 1, 1, 1]
    assert s["group_tokens"].tolist() == [2, 2]
    assert s["label_expert_tokens"].tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]
    assert int(s["group_correct"]) == 3 and int(s["group_labelled"]) == 4
    assert float(s["expert_entropy"]) == pytest.approx(math.log(2))


def test_layer_is_a_drop_in_shape_wise_and_alpha_modes():
    for shape in [(5, 16), (2, 3, 16)]:
        assert TaskAwareMoE(MoEConfig(), 16, 32)(torch.randn(*shape)).shape == shape
    fixed = TaskAwareMoE(MoEConfig(alpha="fixed", alpha_init=0.25), 16, 32)
    assert "alpha_logit" not in dict(fixed.named_parameters())
    assert fixed.alpha.item() == pytest.approx(0.25)
