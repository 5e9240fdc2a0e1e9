"""Routers: which group and which experts each token uses, with what weights.

Task-aware (hierarchical) routing, per token t with hidden state x_t:
1. group router: p(g | x_t) = softmax(W_g x_t); the token goes to argmax_g
   (learned) or to its task label's group (oracle ablation);
2. expert router inside that group: softmax over the group's experts, top-k,
   weights renormalised to sum to 1 (so that identical experts, as right after
   upcycling, reproduce the dense FFN exactly).
Plain top-k (the baseline MoE): softmax over all experts, then top-k, with or
without renormalisation (Mixtral and Qwen3-MoE conventions).

All router arithmetic is fp32 whatever the model dtype: logits in bf16 flip
top-k choices and make the z-loss meaningless.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utamoe.moe.config import MoEConfig


@dataclass
class Routing:
    """One forward's routing decision (T tokens, K slots, G groups, Eg experts per group)."""

    expert_ids_TK: torch.Tensor  # global expert index g * Eg + local, int64
    weights_TK: torch.Tensor  # fp32 combine weights
    local_ids_TK: torch.Tensor  # expert index inside the chosen group
    group_ids_T: torch.Tensor  # chosen group (all zeros in top-k mode)
    expert_logits_TE: torch.Tensor  # fp32 logits over the chosen group's experts (all experts in top-k)
    group_logits_TG: torch.Tensor | None  # fp32; None in top-k mode
    group_scale_T: torch.Tensor | None  # straight-through factor (== 1 in value) or None


class Router(nn.Module):
    """Group router (task-aware mode only) plus expert router."""

    def __init__(self, config: MoEConfig, hidden: int):
        super().__init__()
        self.config = config
        groups = config.num_groups if config.routing == "task_aware" else 0
        self.group_gate = nn.Linear(hidden, groups, bias=False) if groups else None
        self.expert_gate = nn.Linear(hidden, config.num_experts, bias=False)
        # Small init keeps initial routing near uniform, as in Switch / OLMoE.
        for gate in (self.group_gate, self.expert_gate):
            if gate is not None:
                nn.init.normal_(gate.weight, std=0.02)

    def forward(self, x_TD: torch.Tensor, labels_T: torch.Tensor | None = None) -> Routing:
        x32 = x_TD.float()
        expert_logits_all = F.linear(x32, self.expert_gate.weight.float())
        if self.group_gate is None:
            return self._topk(expert_logits_all)
        return self._task_aware(x32, expert_logits_all, labels_T)

    def _select(self, logits_TE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(logits_TE, dim=-1)
        weights, ids = torch.topk(probs, self.config.top_k, dim=-1)
        if self.config.normalize_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, ids

    def _topk(self, logits_TE: torch.Tensor) -> Routing:
        weights, ids = self._select(logits_TE)
        zeros = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        return Routing(ids, weights, ids, zeros, logits_TE, None, None)

    def _task_aware(self, x32, expert_logits_all, labels_T) -> Routing:
        cfg = self.config
        group_logits = F.linear(x32, self.group_gate.weight.float())  # (T, G)
        group_probs = torch.softmax(group_logits, dim=-1)
        group_ids = group_logits.argmax(dim=-1)
        if cfg.group_routing == "oracle":
            if labels_T is None:
                raise RuntimeError(
                    "oracle group routing needs task labels: run the forward inside "
                    "`with utamoe.moe.route(model, task_labels=...)`"
                )
            group_ids = torch.where(labels_T >= 0, labels_T, group_ids)
        T, Eg = x32.shape[0], cfg.experts_per_group
        per_group = expert_logits_all.view(T, cfg.num_groups, Eg)
        expert_logits = per_group.gather(1, group_ids.view(T, 1, 1).expand(T, 1, Eg)).squeeze(1)
        weights, local_ids = self._select(expert_logits)
        scale = None
        if cfg.group_gradient == "straight_through":
            chosen = group_probs.gather(1, group_ids[:, None]).squeeze(1)
            scale = 1.0 + (chosen - chosen.detach())  # exactly 1 forward; d/dp = 1 backward
        global_ids = group_ids[:, None] * Eg + local_ids
        return Routing(global_ids, weights, local_ids, group_ids, expert_logits, group_logits, scale)
