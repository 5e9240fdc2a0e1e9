"""The routing session protocol: any RoutedModule joins a session, reports its own losses
(added to aux_loss with its own coefficients) and statistics, next to the TA-MoE layers, and
reads what the caller bound (task labels, per-sequence instruction embeddings)."""

from __future__ import annotations

import torch

from utamoe.moe import MoEConfig, RoutedModule, TaskAwareMoE, route


class ToyVisionRouter(RoutedModule):
    """Soft weights over 3 'encoders' from a mean-pooled input, with an entropy loss."""

    def __init__(self, d: int):
        super().__init__()
        self.gate = torch.nn.Linear(d, 3)

    def forward(self, x):
        w = torch.softmax(self.gate(x.mean(1)), dim=-1)
        if self.session is not None:
            entropy = -(w * w.log()).sum(-1).mean()
            self.session.record(self.session_name, {"router_entropy": entropy},
                                lambda: {"encoder_weight": w.detach().mean(0)},
                                {"router_entropy": 0.5})
        return x * w[:, :1, None]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.vision = ToyVisionRouter(16)
        self.moe = TaskAwareMoE(MoEConfig(num_experts=4, top_k=1), 16, 32)

    def forward(self, x):
        return self.moe(self.vision(x))


def test_a_new_router_joins_the_session_with_its_losses_and_stats():
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(2, 5, 16)
    with route(net, task_labels=torch.tensor([0, 1])) as session:
        net(x).sum()
    names = [r.name for r in session.records]
    assert names == ["vision", "moe"]
    losses = session.losses()
    assert set(losses) == {"router_entropy", "group", "balance", "z"}
    rec_v, rec_m = session.records
    # Each loss name is averaged over the modules that report it (one each here): the vision
    # router's loss is not halved by the MoE layer's presence, nor the MoE's by the router's.
    expected = (0.5 * rec_v.losses["router_entropy"]
                + sum(rec_m.coefs[k] * v for k, v in rec_m.losses.items()))
    torch.testing.assert_close(session.aux_loss(), expected)
    assert set(session.layer_stats()["vision"]) == {"encoder_weight"}
    assert net.vision.session is None and net.moe.session is None  # unbound after the block


class InstanceReader(RoutedModule):
    """Scales each sequence by the first entry of its instruction embedding from the session."""

    def forward(self, x):
        return x * self.session.instances[:, :1, None]


def test_route_binds_instances_and_restores_the_outer_session():
    net = torch.nn.Sequential(InstanceReader())
    x = torch.ones(2, 3, 4)
    outer, inner = torch.tensor([[2.0, 0.0], [3.0, 0.0]]), torch.tensor([[5.0, 0.0], [7.0, 0.0]])
    with route(net, instances=outer) as s_outer:
        assert s_outer.instances is outer and s_outer.task_labels is None
        with route(net, task_labels=torch.tensor([0, 1]), instances=inner) as s_inner:
            assert net[0].session is s_inner and net[0].session_name == "0"
            torch.testing.assert_close(net(x)[:, 0, 0], torch.tensor([5.0, 7.0]))
        assert net[0].session is s_outer  # the outer binding is back
        torch.testing.assert_close(net(x)[:, 0, 0], torch.tensor([2.0, 3.0]))
    assert net[0].session is None
