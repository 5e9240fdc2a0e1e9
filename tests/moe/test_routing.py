"""Group supervision learns the task, oracle routing obeys labels, sessions carry labels and losses."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from utamoe.moe import MoEConfig, TaskAwareMoE, route

D = 16


def two_task_tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of task 0 and task 1 drawn around two different means (a learnable problem)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    means = torch.randn(2, D, generator=torch.Generator().manual_seed(99))
    return means[labels] + 0.7 * torch.randn(n, D, generator=g), labels


def test_group_router_learns_task_labels_from_group_loss():
    torch.manual_seed(0)
    layer = TaskAwareMoE(MoEConfig(num_experts=4, top_k=1), D, 32)
    opt = torch.optim.Adam(layer.parameters(), lr=3e-2)
    for step in range(60):
        x, labels = two_task_tokens(256, seed=step)
        with route(layer, task_labels=labels) as session:
            layer(x)
            session.losses()["group"].backward()
        opt.step()
        opt.zero_grad()
    x, labels = two_task_tokens(1024, seed=1000)
    with route(layer, task_labels=labels) as session:
        layer(x)
    stats = session.stats()
    assert stats["group_accuracy"] > 0.97
    # Learned routing follows the router, which now agrees with the labels.
    routed = stats["label_group_tokens"]
    assert routed.diag().sum() / routed.sum() > 0.97


def test_oracle_routing_sends_every_token_to_its_labels_group():
    torch.manual_seed(1)
    layer = TaskAwareMoE(MoEConfig(num_experts=6, top_k=2, group_routing="oracle",
                                   group_names=("und", "gen", "edit")), D, 32)
    x = torch.randn(2, 30, D)
    labels = torch.randint(0, 3, (2, 30))
    labels[0, :5] = -1  # unlabelled tokens fall back to the router
    with route(layer, task_labels=labels, attention_mask=torch.ones(2, 30)) as session:
        layer(x)
    counts = session.stats()["label_group_tokens"]
    assert counts.sum() == (labels >= 0).sum()
    assert torch.equal(counts, torch.diag(counts.diag()))  # only label == group
    per_expert = session.stats()["label_expert_tokens"]  # experts 2g, 2g+1 belong to group g
    for g in range(3):
        outside = [e for e in range(6) if e // 2 != g]
        assert per_expert[g, outside].sum() == 0


def test_oracle_routing_without_labels_says_how_to_pass_them():
    layer = TaskAwareMoE(MoEConfig(group_routing="oracle"), D, 32)
    with pytest.raises(RuntimeError, match="utamoe.moe.route"):
        layer(torch.randn(4, D))


def test_labels_per_sequence_or_per_token_and_shape_errors():
    layer = TaskAwareMoE(MoEConfig(), D, 32)
    x = torch.randn(2, 5, D)
    with route(layer, task_labels=torch.tensor([0, 1])) as per_seq:
        layer(x)
    with route(layer, task_labels=torch.tensor([[0] * 5, [1] * 5])) as per_tok:
        layer(x)
    assert torch.equal(per_seq.stats()["label_group_tokens"].sum(1), torch.tensor([5, 5]))
    assert torch.equal(per_seq.stats()["label_group_tokens"], per_tok.stats()["label_group_tokens"])
    with route(layer, task_labels=torch.zeros(2, 7, dtype=torch.long)), \
            pytest.raises(ValueError, match=r"task_labels has shape \(2, 7\)"):
        layer(x)


def test_sessions_nest_and_nothing_is_recorded_outside_one():
    layer = TaskAwareMoE(MoEConfig(), D, 32)
    x = torch.randn(3, D)
    with route(layer) as outer:
        layer(x)
        with route(layer, task_labels=torch.zeros(3, dtype=torch.long)) as inner:
            layer(x)
        layer(x)
    layer(x)
    assert len(outer.records) == 2 and len(inner.records) == 1
    assert layer.session is None


def test_activation_checkpointing_records_each_layer_once():
    layer = TaskAwareMoE(MoEConfig(), D, 32)
    x = torch.randn(8, D, requires_grad=True)
    with route(layer, task_labels=torch.randint(0, 2, (8,))) as session:
        y = checkpoint(layer, x, use_reentrant=False)
        (y.square().sum() + session.aux_loss()).backward()
    assert len(session.records) == 1
    assert layer.router.group_gate.weight.grad is not None


def test_padding_is_excluded_from_losses_and_stats():
    torch.manual_seed(2)
    layer = TaskAwareMoE(MoEConfig(), D, 32)
    x = torch.randn(1, 10, D)
    labels = torch.tensor([[0, 0, 1, 1, 0, 1, 0, 1, 1, 0]])
    with route(layer, task_labels=labels) as clean:
        layer(x)
    padded_x = torch.cat([x, 50 * torch.randn(1, 6, D)], dim=1)  # wild padding rows
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], dim=1)
    padded_labels = torch.cat([labels, torch.full((1, 6), -1)], dim=1)
    with route(layer, task_labels=padded_labels, attention_mask=mask) as padded:
        layer(padded_x)
    for key, value in clean.losses().items():
        torch.testing.assert_close(padded.losses()[key], value, msg=key)
    assert int(padded.stats()["tokens"]) == 10
    assert torch.equal(padded.stats()["expert_tokens"], clean.stats()["expert_tokens"])
