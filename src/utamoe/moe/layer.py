"""TaskAwareMoE: a drop-in replacement for a dense gated MLP (same input and output shape).

    x --router--> group g(t), top-k experts in g, weights w --dispatch--> y_routed
    x --shared experts (every token, averaged)--------------------------> y_shared
    y = alpha * y_routed + (1 - alpha) * y_shared        (y = y_routed with no shared expert)

Dispatch is dropless. Both fast paths sort the T*K (token, expert) pairs by
expert. The grouped path gathers the rows once, runs each projection as one
grouped matmul over all groups and experts, un-permutes and sums the K weighted
outputs per token; the fused path (the CPU default, gated-FFN experts) runs
gather, FFN and weighted combine expert by expert in one autograd Function
(utamoe.moe.fused). The reference path loops over experts and adds each expert's
weighted output into its tokens; tests assert all three agree in values and gradients.

When the layer runs inside `utamoe.moe.route(...)` it reads task labels from the
session (for oracle routing and the group loss) and records its losses and
routing statistics there; otherwise it only routes. A session given an attention
mask also lets the layer skip padding: only real tokens are routed and computed.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from torch import nn

from utamoe.moe.config import MoEConfig
from utamoe.moe.context import RoutedModule
from utamoe.moe.experts import dense_weights, expert_banks
from utamoe.moe.losses import layer_losses, routing_stats
from utamoe.moe.routers import Router, Routing


def dispatch(x_TD, routing: Routing, bank, num_experts: int, mode: str = "auto") -> torch.Tensor:
    """The routed output for MoEConfig.dispatch `mode` ("auto": fused on CPU, grouped elsewhere)."""
    if mode == "loop":
        return loop_dispatch(x_TD, routing, bank, num_experts)
    fused = mode == "fused" or (mode == "auto" and x_TD.device.type == "cpu")
    return sorted_dispatch(x_TD, routing, bank, num_experts, fused=fused)


def sorted_dispatch(x_TD, routing: Routing, bank, num_experts: int, fused: bool = False) -> torch.Tensor:
    """Fast paths: sort by expert; then the bank's fused dispatch when `fused` and it has one,
    else grouped matmuls, un-permute and a weighted sum over the K slots."""
    T, K = routing.expert_ids_TK.shape
    flat_M = routing.expert_ids_TK.reshape(-1)
    order_M = torch.argsort(flat_M, stable=True)
    counts_E = torch.bincount(flat_M, minlength=num_experts)
    if fused:
        weight_M = routing.weights_TK.reshape(-1).index_select(0, order_M)
        y_TD = bank.fused_dispatch(x_TD, order_M // K, weight_M, counts_E.tolist())
        if y_TD is not None:
            return y_TD
    offsets_E = torch.cumsum(counts_E, 0, dtype=torch.int32)
    x_MD = x_TD.index_select(0, order_M // K)
    y_MD = bank.sorted_forward(x_MD, offsets_E)
    inverse_M = torch.empty_like(order_M)
    inverse_M[order_M] = torch.arange(order_M.numel(), device=order_M.device)
    y_TKD = y_MD.index_select(0, inverse_M).view(T, K, -1)
    w_TK = routing.weights_TK.to(y_TKD.dtype)
    return torch.bmm(w_TK.unsqueeze(1), y_TKD).squeeze(1)


def loop_dispatch(x_TD, routing: Routing, bank, num_experts: int) -> torch.Tensor:
    """Reference path: for each expert, its tokens through it, weighted, added back (summed in
    fp32, or in x's dtype when that is wider)."""
    out_TD = x_TD.new_zeros(x_TD.shape, dtype=torch.promote_types(x_TD.dtype, torch.float32))
    for e in range(num_experts):
        tok, slot = torch.where(routing.expert_ids_TK == e)
        if tok.numel() == 0:
            continue
        y = bank.expert_forward(x_TD[tok], e).to(out_TD.dtype)
        out_TD = out_TD.index_add(0, tok, y * routing.weights_TK[tok, slot, None].to(out_TD.dtype))
    return out_TD.to(x_TD.dtype)


class TaskAwareMoE(RoutedModule):
    """TA-MoE layer (or the plain top-k MoE baseline with `routing="topk"`)."""

    def __init__(self, config: MoEConfig, hidden_size: int, intermediate_size: int, act: str = "silu"):
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        inter = config.expert_hidden_size or intermediate_size
        self.intermediate_size = inter
        self.router = Router(config, hidden_size)
        bank = expert_banks()[config.expert_type]
        self.experts = bank.build(config, hidden_size, inter, act, config.num_experts)
        self.shared = (bank.build(config, hidden_size, inter, act, config.num_shared_experts,
                                  shared_with=self.experts)
                       if config.num_shared_experts else None)
        logit = torch.tensor(math.log(config.alpha_init / (1.0 - config.alpha_init)))
        if config.alpha == "learnable":
            self.alpha_logit = nn.Parameter(logit)
        else:
            self.register_buffer("alpha_logit", logit)

    @classmethod
    def from_dense(cls, mlp: nn.Module, config: MoEConfig, act: str, group_mlps=None) -> TaskAwareMoE:
        """Upcycle a dense gated MLP: every expert (and the LoRA base) starts as a copy of it.

        `group_mlps` (one per task group, e.g. the task FFNs of stage 1) initialise the routed
        experts of each group instead; shared experts always copy `mlp`.
        """
        groups = None if group_mlps is None else [dense_weights(m) for m in group_mlps]
        return cls.from_weights(config, act, dense_weights(mlp), groups)

    @classmethod
    def from_weights(cls, config: MoEConfig, act: str, dense, groups=None) -> TaskAwareMoE:
        """Build from FFN weights: `dense` = (w_gate_up (D, 2F), w_down (F, D)) initialises the
        shared experts, the LoRA base, and the routed experts of every group unless `groups`
        gives one (w_gate_up, w_down) pair per task group."""
        w_gate_up, w_down = dense
        layer = cls(config, w_gate_up.shape[0], w_down.shape[0], act)
        layer.to(dtype=w_gate_up.dtype, device=w_gate_up.device)
        layer.router.float()  # router weights stay fp32: routing decisions are precision-sensitive
        for g in range(config.num_groups):
            src = groups[g] if groups is not None else dense
            layer.experts.init_from(*src, experts=config.group_experts(g))
        if layer.shared is not None:
            layer.shared.init_from(w_gate_up, w_down)
        return layer

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha_logit.float())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        x_TD = hidden.reshape(-1, shape[-1])
        labels_T = valid_T = None
        if self.session is not None:
            labels_T, valid_T = self.session.token_view(shape, hidden.device)
        keep_N = None if self.session is None else self.session.real_tokens(valid_T)
        if keep_N is not None:
            # Padding (attention_mask 0) is never attended to and carries no loss: route and
            # run only the real tokens (mixed-task batches are ~30 % padding), zeros elsewhere.
            # (Label -1 alone may mark a real token without a task label: that one is computed.)
            labels_N = None if labels_T is None else labels_T.index_select(0, keep_N)
            y_ND = self._mix(x_TD.index_select(0, keep_N), labels_N, None)
            return x_TD.new_zeros(x_TD.shape, dtype=y_ND.dtype).index_copy(0, keep_N, y_ND).reshape(shape)
        return self._mix(x_TD, labels_T, valid_T).reshape(shape)

    def _mix(self, x_TD: torch.Tensor, labels_T, valid_T) -> torch.Tensor:
        """Route, dispatch and add the shared experts for rows x_TD (and record in a session)."""
        routing = self.router(x_TD, labels_T)
        y_TD = dispatch(x_TD, routing, self.experts, self.config.num_experts, self.config.dispatch)
        if routing.group_scale_T is not None:
            y_TD = y_TD * routing.group_scale_T.to(y_TD.dtype)[:, None]
        if self.shared is not None:
            shared = sum(
                self.shared.expert_forward(x_TD, e) for e in range(self.shared.num_experts)
            ) / self.shared.num_experts
            a = self.alpha.to(y_TD.dtype)
            y_TD = a * y_TD + (1 - a) * shared
        if self.session is not None:
            self._record(routing, labels_T, valid_T, x_TD)
        return y_TD

    def _record(self, routing: Routing, labels_T, valid_T, x_TD) -> None:
        cfg = self.config
        if self.session.trace:
            self.session.traces.append((self.session_name, routing.group_ids_T.detach(),
                                        routing.expert_ids_TK.detach()))
        if valid_T is None:
            valid_T = torch.ones(x_TD.shape[0], dtype=torch.bool, device=x_TD.device)
        losses = layer_losses(routing, labels_T, valid_T, cfg.num_groups)
        # Statistics are only needed when logged: keep a detached copy of the routing and
        # compute them on first read.
        frozen = Routing(**{f.name: None if getattr(routing, f.name) is None
                            else getattr(routing, f.name).detach() for f in dataclasses.fields(routing)})
        stats = functools.partial(routing_stats, frozen, labels_T, valid_T, cfg.num_groups,
                                  cfg.num_experts, len(cfg.group_names))
        coefs = {"group": cfg.group_loss_coef, "balance": cfg.balance_loss_coef, "z": cfg.z_loss_coef}
        self.session.record(self.session_name, dict(vars(losses)), stats, coefs)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"routing={c.routing}, groups={list(c.group_names) if c.routing == 'task_aware' else 1}, "
            f"experts={c.num_experts}, top_k={c.top_k}, shared={c.num_shared_experts}, "
            f"type={c.expert_type}, d={self.hidden_size}, f={self.intermediate_size}"
        )
