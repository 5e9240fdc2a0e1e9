"""Routing analysis: exact shares on one TA-MoE layer with forced routing, then the UnifiedModel."""

import json
import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.model.helpers import mixed_samples, tiny_model
from utamoe.analysis.report import plot_routing, routing_markdown
from utamoe.analysis.routing import routing_analysis
from utamoe.data.sequences import collate
from utamoe.moe import MoEConfig, TaskAwareMoE, route
from utamoe.tasks import GROUPS, group_of

D = 4


@dataclass
class FakeBatch:
    """What routing_analysis needs from a batch: hidden states, a mask and the task."""

    x: torch.Tensor  # (B, S, D)
    attention_mask: torch.Tensor  # (B, S)
    task: str

    @property
    def tasks(self):
        return [self.task] * self.x.shape[0]

    def to(self, device):
        return self


class OneLayer(nn.Module):
    """A TA-MoE layer called the way UnifiedModel calls its layers (labels = the task group)."""

    def __init__(self, config: MoEConfig):
        super().__init__()
        self.moe = TaskAwareMoE(config, D, 8)
        g = self.moe.router
        with torch.no_grad():
            # group router: x0 > 0 -> und (0), x0 < 0 -> gen (1)
            if g.group_gate is not None:
                g.group_gate.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
            # expert router: x1 > 0 -> expert 1 in und, expert 2 in gen; x1 < 0 -> experts 0 / 3
            w = torch.zeros(4, D)
            w[1, 1] = w[2, 1] = 5.0
            g.expert_gate.weight.copy_(w)

    def forward(self, batch: FakeBatch):
        label = GROUPS.index(group_of(batch.task))
        labels = torch.full(batch.attention_mask.shape, label).masked_fill(
            batch.attention_mask == 0, -1)
        with route(self, task_labels=labels, attention_mask=batch.attention_mask) as session:
            self.moe(batch.x)
        return SimpleNamespace(session=session)


def fake_batch(task: str, x0: float, n: int = 3, pad: int = 2) -> FakeBatch:
    """n real tokens (x0, x1=+1) and `pad` padding tokens that would route elsewhere (x1=-1)."""
    x = torch.zeros(1, n + pad, D)
    x[0, :n, 0], x[0, :n, 1] = x0, 1.0
    x[0, n:, 0], x[0, n:, 1] = -x0, -1.0
    mask = torch.zeros(1, n + pad, dtype=torch.long)
    mask[0, :n] = 1
    return FakeBatch(x, mask, task)


def analyse(group_routing: str, top_k: int = 1):
    cfg = MoEConfig(num_experts=4, top_k=top_k, group_routing=group_routing)
    layer = OneLayer(cfg)
    # every token's hidden state says "und" (x0 > 0): right for vqa, wrong for t2i
    batches = {"vqa": [fake_batch("vqa", 1.0), fake_batch("vqa", 1.0, n=2)],
               "t2i": [fake_batch("t2i", 1.0)]}
    return routing_analysis(layer, batches)


def test_oracle_routing_keeps_tasks_in_their_group():
    r = analyse("oracle")
    assert r.layers == ["moe"] and r.tasks == ["vqa", "t2i"] and r.group_routing == "oracle"
    vqa, t2i = r.cells["moe"]["vqa"], r.cells["moe"]["t2i"]
    assert vqa.tokens == 5 and t2i.tokens == 3  # padding excluded
    assert vqa.expert_share == [0.0, 1.0, 0.0, 0.0]
    assert t2i.expert_share == [0.0, 0.0, 1.0, 0.0]  # forced into the gen group
    assert vqa.group_share == [1.0, 0.0] and t2i.group_share == [0.0, 1.0]
    assert r.in_group_share("moe", "vqa") == 1.0 and r.in_group_share("moe", "t2i") == 1.0
    # the router would have sent t2i to und: accuracy measures the router, not the forcing
    assert vqa.accuracy == 1.0 and t2i.accuracy == 0.0
    p = torch.softmax(torch.tensor([1.0, -1.0]), 0)
    assert vqa.group_entropy == pytest.approx(float(-(p * p.log()).sum()), abs=1e-6)
    assert r.groups["moe"]["und"].tokens == 5 and r.groups["moe"]["gen"].tokens == 3


def test_learned_routing_follows_the_router():
    r = analyse("learned")
    t2i = r.cells["moe"]["t2i"]
    assert t2i.expert_share == [0.0, 1.0, 0.0, 0.0] and t2i.group_share == [1.0, 0.0]
    assert t2i.accuracy == 0.0 and r.in_group_share("moe", "t2i") == 0.0


def test_topk_shares_count_assignments():
    r = analyse("oracle", top_k=2)
    vqa = r.cells["moe"]["vqa"]
    assert vqa.assignments == 10 and vqa.expert_counts == [5, 5, 0, 0]
    assert vqa.expert_share == [0.5, 0.5, 0.0, 0.0]
    d = r.to_dict()["per_task"]["moe"]["vqa"]
    assert d["expert_share"] == [0.5, 0.5, 0.0, 0.0] and d["group_accuracy"] == 1.0


def test_plain_topk_moe_has_no_groups():
    layer = OneLayer(MoEConfig(routing="topk", num_experts=4, top_k=1))
    r = routing_analysis(layer, {"vqa": [fake_batch("vqa", 1.0)]})
    assert r.expert_groups == ["all"] and r.cells["moe"]["vqa"].accuracy is None
    assert sum(r.cells["moe"]["vqa"].expert_share) == pytest.approx(1.0)
    assert any("top-k" in n for n in r.notes)


def test_unified_model_per_task(tmp_path):
    model, _, encoder = tiny_model()
    by_task = {}
    for s in mixed_samples():
        by_task.setdefault(s.task, []).append(collate([encoder.sample(s)], encoder.special.pad))
    r = routing_analysis(model, by_task)
    assert r.layers == ["layers.0.mlp", "layers.1.mlp"] and r.num_experts == 8
    for layer in r.layers:
        for task, cell in r.cells[layer].items():
            assert cell.tokens == int(by_task[task][0].attention_mask.sum())
            assert sum(cell.expert_share) == pytest.approx(1.0)
            assert cell.assignments == 2 * cell.tokens  # top-2
            assert 0 <= cell.accuracy <= 1
            assert 0 <= cell.expert_entropy <= math.log(4) + 1e-6
        und = r.groups[layer]["und"]
        assert und.tokens == sum(r.cells[layer][t].tokens for t in ("caption", "vqa", "grounding"))
    json.dumps(r.to_dict())
    assert plot_routing(r, tmp_path / "routing.png") and (tmp_path / "routing.png").stat().st_size
    mixed = collate([encoder.sample(s) for s in mixed_samples()[:2]], encoder.special.pad)
    with pytest.raises(ValueError, match="one task per batch"):
        routing_analysis(model, {"vqa": [mixed]})


def test_dense_model_is_skipped_cleanly(tmp_path):
    model, _, _ = tiny_model(moe=None)
    r = routing_analysis(model, {"vqa": []})
    assert r.dense and "dense" in r.notes[0] and r.layers == []
    assert not plot_routing(r, tmp_path / "r.png") and not (tmp_path / "r.png").exists()
    assert r.to_dict()["dense"] is True
    assert "no routing to analyse" in "\n".join(routing_markdown(r))
