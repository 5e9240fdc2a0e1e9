"""Router losses and routing statistics of one TA-MoE layer, computed from a `Routing`.

All three losses ignore padding (`valid_T` False) and are plain tensors the
caller adds to its objective; nothing is stored globally.
- group supervision: cross-entropy of the group router against the task label
  (tokens with label -1 carry no loss);
- load balance (Switch Transformer, Fedus et al. 2021) *inside each group*, over
  all the batch's tokens routed to that group: Eg * sum_e f_e * P_e, where f_e is
  the fraction of the group's routing assignments (top-k slots) that went to
  expert e and P_e the mean router probability of e. Equal to 1.0 at perfect
  balance whatever k is (the Hugging Face variant sums over slots and gives k),
  then averaged over the groups that received tokens;
- router z-loss (ST-MoE, Zoph et al. 2022): mean logsumexp(logits)^2 of the
  expert router, plus that of the group router in task-aware mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utamoe.moe.routers import Routing


@dataclass
class LayerLosses:
    group: torch.Tensor
    balance: torch.Tensor
    z: torch.Tensor


def group_supervision_loss(routing: Routing, labels_T, valid_T) -> torch.Tensor:
    logits = routing.group_logits_TG
    if logits is None or labels_T is None:
        return routing.expert_logits_TE.new_zeros(())
    keep = valid_T & (labels_T >= 0)
    if not bool(keep.any()):
        return logits.new_zeros(())
    return F.cross_entropy(logits[keep], labels_T[keep])


def balance_loss(routing: Routing, valid_T: torch.Tensor, num_groups: int) -> torch.Tensor:
    probs = torch.softmax(routing.expert_logits_TE[valid_T], dim=-1)  # (N, Eg)
    groups = routing.group_ids_T[valid_T]
    local = routing.local_ids_TK[valid_T]  # (N, K)
    n, eg = probs.shape
    k = local.shape[1]
    if n == 0:
        return probs.new_zeros(())
    assigned_GE = probs.new_zeros(num_groups * eg)
    assigned_GE.index_add_(0, (groups[:, None] * eg + local).reshape(-1), probs.new_ones(n * k))
    tokens_G = torch.bincount(groups, minlength=num_groups).to(probs.dtype)
    prob_sum_GE = probs.new_zeros(num_groups, eg).index_add_(0, groups, probs)
    denom = tokens_G.clamp(min=1)[:, None]
    frac_GE = assigned_GE.view(num_groups, eg) / (denom * k)
    per_group = eg * (frac_GE * prob_sum_GE / denom).sum(dim=-1)
    present = tokens_G > 0
    return per_group[present].mean()


def z_loss(routing: Routing, valid_T: torch.Tensor) -> torch.Tensor:
    loss = torch.logsumexp(routing.expert_logits_TE[valid_T], dim=-1).pow(2).mean()
    if routing.group_logits_TG is not None:
        loss = loss + torch.logsumexp(routing.group_logits_TG[valid_T], dim=-1).pow(2).mean()
    return torch.nan_to_num(loss)  # an all-padding batch gives mean([]) = nan


def layer_losses(routing: Routing, labels_T, valid_T, num_groups: int) -> LayerLosses:
    return LayerLosses(
        group=group_supervision_loss(routing, labels_T, valid_T),
        balance=balance_loss(routing, valid_T, num_groups),
        z=z_loss(routing, valid_T),
    )


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean() if logits.shape[0] else logits.new_zeros(())


@torch.no_grad()
def routing_stats(
    routing: Routing, labels_T, valid_T, num_groups: int, num_experts: int, num_labels: int
) -> dict:
    """Detached counts and scores for analysis (summed over layers and batches by the caller).

    expert_tokens (E,): routing assignments per expert; group_tokens (G,): tokens per group;
    label_expert_tokens (L, E) / label_group_tokens (L, G): the same split by task label
    (L = number of task groups named in the config; present only with labels); group_correct / group_labelled: the
    group router's accuracy against labels (counts); entropies: mean router entropy (nats).
    """
    ids = routing.expert_ids_TK[valid_T]
    groups = routing.group_ids_T[valid_T]
    stats = {
        "expert_tokens": torch.bincount(ids.reshape(-1), minlength=num_experts),
        "group_tokens": torch.bincount(groups, minlength=num_groups),
        "expert_entropy": _entropy(routing.expert_logits_TE[valid_T]),
        "tokens": valid_T.sum(),
    }
    if routing.group_logits_TG is not None:
        stats["group_entropy"] = _entropy(routing.group_logits_TG[valid_T])
    if labels_T is not None:
        labels = labels_T[valid_T]
        known = labels >= 0
        lab = labels[known]
        pair = lab[:, None] * num_experts + ids[known]
        stats["label_expert_tokens"] = torch.bincount(
            pair.reshape(-1), minlength=num_labels * num_experts
        ).view(num_labels, num_experts)
        stats["label_group_tokens"] = torch.bincount(
            lab * num_groups + groups[known], minlength=num_labels * num_groups
        ).view(num_labels, num_groups)
        if routing.group_logits_TG is not None:
            pred = routing.group_logits_TG[valid_T][known].argmax(-1)
            stats["group_correct"] = (pred == lab).sum()
            stats["group_labelled"] = known.sum()
    return stats
