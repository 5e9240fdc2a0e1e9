"""Routing analysis: where each task's tokens go, layer by layer (the routing figures).

`routing_analysis(model, batches_by_task)` runs forward passes without grad on
batches that each hold samples of one task, and sums the TA-MoE layers' routing
statistics (utamoe.moe.losses.routing_stats) per layer and task:

- expert share: the fraction of the task's *routing assignments* that went to each
  expert. With top-k routing every token makes k assignments, so a row sums to 1
  over experts and an expert chosen by every token has share 1/k;
- group share: the fraction of the task's tokens the group router sent to each
  expert group (with oracle group routing this is the label's group, by force);
- group-router accuracy: the share of tokens whose group-router argmax equals the
  task's group (also reported under oracle routing: what the router would choose);
- router entropies (nats, token means): of the group router over groups (max ln G)
  and of the expert router over the chosen group's experts (max ln(E/G)).

Counts cover every non-padding token of a sequence (prompt, image slots and
target). The group rows sum the tasks of each task group. A dense model has no
routing: the analysis says so (`dense=True`) and holds no numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from utamoe.moe import moe_layers
from utamoe.tasks import GROUPS, get_task, is_task, task_names


@dataclass
class RoutingCell:
    """Routing counts of one task (or task group) at one layer."""

    tokens: int = 0
    expert_counts: list[int] = field(default_factory=list)  # assignments per expert (E,)
    group_counts: list[int] = field(default_factory=list)  # tokens per expert group (G,)
    correct: int = 0
    labelled: int = 0
    expert_entropy_sum: float = 0.0  # token-weighted sums (means are derived)
    group_entropy_sum: float | None = None

    @property
    def assignments(self) -> int:
        return int(sum(self.expert_counts))

    @property
    def expert_share(self) -> list[float]:
        n = self.assignments
        return [c / n if n else 0.0 for c in self.expert_counts]

    @property
    def group_share(self) -> list[float]:
        n = sum(self.group_counts)
        return [c / n if n else 0.0 for c in self.group_counts]

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def expert_entropy(self) -> float | None:
        return self.expert_entropy_sum / self.tokens if self.tokens else None

    @property
    def group_entropy(self) -> float | None:
        if self.group_entropy_sum is None or not self.tokens:
            return None
        return self.group_entropy_sum / self.tokens

    def add(self, other: RoutingCell) -> None:
        self.tokens += other.tokens
        self.expert_counts = _vec_add(self.expert_counts, other.expert_counts)
        self.group_counts = _vec_add(self.group_counts, other.group_counts)
        self.correct += other.correct
        self.labelled += other.labelled
        self.expert_entropy_sum += other.expert_entropy_sum
        if other.group_entropy_sum is not None:
            self.group_entropy_sum = (self.group_entropy_sum or 0.0) + other.group_entropy_sum

    def to_dict(self) -> dict[str, Any]:
        r = _round
        return {"tokens": self.tokens, "assignments": self.assignments,
                "expert_share": [r(x) for x in self.expert_share],
                "group_share": [r(x) for x in self.group_share],
                "expert_counts": self.expert_counts, "group_counts": self.group_counts,
                "group_accuracy": r(self.accuracy), "expert_entropy": r(self.expert_entropy),
                "group_entropy": r(self.group_entropy)}


def _vec_add(a: list[int], b: list[int]) -> list[int]:
    if not a:
        return list(b)
    return [x + y for x, y in zip(a, b)]


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


@dataclass
class RoutingAnalysis:
    """Per layer, per task (and per task group): see the module docstring."""

    layers: list[str] = field(default_factory=list)  # MoE module names, in depth order
    tasks: list[str] = field(default_factory=list)
    task_groups: dict[str, str] = field(default_factory=dict)  # task -> its task group
    expert_groups: list[str] = field(default_factory=list)  # group names ('all' for top-k)
    num_experts: int = 0
    top_k: int = 0
    routing: str = ""  # task_aware | topk
    group_routing: str = ""  # learned | oracle
    cells: dict[str, dict[str, RoutingCell]] = field(default_factory=dict)  # layer -> task ->
    groups: dict[str, dict[str, RoutingCell]] = field(default_factory=dict)  # layer -> group ->
    dense: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def experts_per_group(self) -> int:
        return self.num_experts // max(len(self.expert_groups), 1)

    def expert_group_of(self, expert: int) -> str:
        return self.expert_groups[expert // self.experts_per_group]

    def in_group_share(self, layer: str, task: str) -> float | None:
        """Share of the task's assignments that went to its own group's experts."""
        if self.routing != "task_aware" or self.task_groups[task] not in self.expert_groups:
            return None
        g = self.expert_groups.index(self.task_groups[task])
        eg = self.experts_per_group
        return sum(self.cells[layer][task].expert_share[g * eg:(g + 1) * eg])

    def to_dict(self) -> dict[str, Any]:
        return {"dense": self.dense, "notes": self.notes, "routing": self.routing,
                "group_routing": self.group_routing, "num_experts": self.num_experts,
                "top_k": self.top_k, "expert_groups": self.expert_groups,
                "experts_per_group": self.experts_per_group, "tasks": self.tasks,
                "task_groups": self.task_groups, "layers": self.layers,
                "per_task": {lay: {t: c.to_dict() for t, c in v.items()}
                             for lay, v in self.cells.items()},
                "per_group": {lay: {g: c.to_dict() for g, c in v.items()}
                              for lay, v in self.groups.items()}}


def _cell_from_stats(stats: dict) -> RoutingCell:
    tokens = int(stats["tokens"])
    cell = RoutingCell(tokens=tokens,
                       expert_counts=[int(x) for x in stats["expert_tokens"].tolist()],
                       group_counts=[int(x) for x in stats["group_tokens"].tolist()],
                       correct=int(stats.get("group_correct", 0)),
                       labelled=int(stats.get("group_labelled", 0)),
                       expert_entropy_sum=float(stats["expert_entropy"]) * tokens)
    if "group_entropy" in stats:
        cell.group_entropy_sum = float(stats["group_entropy"]) * tokens
    return cell


def _check_single_task(batch, task: str) -> None:
    tasks = set(batch.tasks)
    if tasks != {task}:
        raise ValueError(f"a batch given for task '{task}' holds tasks {sorted(tasks)}; "
                         f"routing_analysis needs one task per batch")


def routing_analysis(model: nn.Module, batches_by_task: Mapping[str, Sequence],
                     progress: Callable[[int], None] | None = None) -> RoutingAnalysis:
    """Forward every batch (no grad, eval mode) and sum routing statistics per layer and task.

    `model` is a UnifiedModel (anything whose `model(batch).session` is a RoutingSession).
    `progress(1)` is called after each batch.
    """
    layers = moe_layers(model)
    if not layers:
        return RoutingAnalysis(dense=True, notes=[
            "the model is dense (no MoE layers): every token goes through the same MLP, "
            "so there is no routing to analyse"])
    cfg = layers[0].config
    analysis = RoutingAnalysis(
        tasks=[t for t in task_names() if t in batches_by_task] + [t for t in batches_by_task
                                                                   if not is_task(t)],
        expert_groups=list(cfg.group_names) if cfg.routing == "task_aware" else ["all"],
        num_experts=cfg.num_experts, top_k=cfg.top_k, routing=cfg.routing,
        group_routing=cfg.group_routing if cfg.routing == "task_aware" else "-")
    analysis.task_groups = {t: get_task(t).group if is_task(t) else "?" for t in analysis.tasks}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for task in analysis.tasks:
                for batch in batches_by_task[task]:
                    _check_single_task(batch, task)
                    _accumulate(analysis, task, model(batch.to(device)).session)
                    if progress is not None:
                        progress(1)
    finally:
        model.train(was_training)
    _group_rows(analysis)
    if analysis.group_routing == "oracle":
        analysis.notes.append("group routing is 'oracle': tokens go to their task label's "
                              "group by force; the accuracy is what the group router would "
                              "have chosen")
    if analysis.routing == "topk":
        analysis.notes.append("plain top-k MoE (no expert groups): group shares and "
                              "accuracy do not apply")
    return analysis


def _accumulate(analysis: RoutingAnalysis, task: str, session) -> None:
    for name, stats in session.layer_stats().items():
        if "expert_tokens" not in stats:  # a MoVE or MoLE router (utamoe.analysis.mome)
            continue
        name = name.removeprefix("lm.")  # the model binds its whole self; layers are the lm's
        if name not in analysis.cells:
            analysis.layers.append(name)
            analysis.cells[name] = {}
        cell = analysis.cells[name].setdefault(task, RoutingCell())
        cell.add(_cell_from_stats(stats))


def _group_rows(analysis: RoutingAnalysis) -> None:
    """Per-layer rows summing the tasks of each task group (und, gen)."""
    order = [g for g in GROUPS if g in analysis.task_groups.values()]
    for layer, per_task in analysis.cells.items():
        rows: dict[str, RoutingCell] = {}
        for group in order:
            for task, cell in per_task.items():
                if analysis.task_groups[task] == group:
                    rows.setdefault(group, RoutingCell()).add(cell)
        analysis.groups[layer] = rows


def max_entropies(analysis: RoutingAnalysis) -> tuple[float, float]:
    """(ln G, ln(E/G)): the entropies of uniform group and expert routers."""
    return math.log(max(len(analysis.expert_groups), 1)), math.log(max(analysis.experts_per_group, 1))
