"""MoEConfig: every switch of a TA-MoE layer, validated at construction.

The defaults are the UTAMoE layer as we read the paper: two task groups
(understanding, generation), experts split evenly between them, top-2 routing
inside the chosen group, one shared expert (2 active specific : 1 shared, the
paper's best ratio), and a learnable alpha that mixes specific and shared output.
`routing="topk"` turns the same layer into the plain top-k MoE baseline (one
pool of experts, no group router), with the peers' router conventions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from utamoe.config import ConfigError
from utamoe.moe.experts import expert_banks

DispatchMode = Literal["auto", "fused", "grouped", "loop"]
DISPATCH_MODES = get_args(DispatchMode)


@dataclass
class MoEConfig:
    # "task_aware": group router then expert router inside the group; "topk": plain top-k baseline.
    routing: Literal["task_aware", "topk"] = "task_aware"
    # Task groups; labels given to the layers are indices into this list (-1 = no label/padding).
    group_names: tuple[str, ...] = ("und", "gen")
    # Routed (specific) experts in total; split evenly between groups in task-aware mode.
    num_experts: int = 8
    # Experts each token uses (inside its group in task-aware mode).
    top_k: int = 2
    # Experts every token uses; their outputs are averaged, then mixed with the routed output by alpha.
    num_shared_experts: int = 1
    # "ffn": full gated-FFN experts; "lora": low-rank deltas on one frozen base FFN (LoRA-MoE / MoLE).
    expert_type: str = "ffn"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    # Hidden size of each expert; None = the dense MLP's (required for upcycling by copy).
    expert_hidden_size: int | None = None
    # y = alpha * routed + (1 - alpha) * shared, alpha = sigmoid(parameter) when learnable.
    alpha: Literal["learnable", "fixed"] = "learnable"
    alpha_init: float = 0.5
    # "learned": the group router decides; "oracle": the token's task label decides (ablation).
    group_routing: Literal["learned", "oracle"] = "learned"
    # "straight_through": the routed output is scaled by 1 + (p - stopgrad(p)) of the chosen group,
    # exactly 1 in the forward pass, so the group router also learns from the task loss.
    group_gradient: Literal["straight_through", "none"] = "straight_through"
    # Renormalise the top-k router weights to sum to 1 (Mixtral; Qwen3-MoE's norm_topk_prob).
    normalize_topk: bool = True
    # How routed rows reach the experts (utamoe.moe.layer.dispatch): "fused": expert by expert,
    # gather + FFN + weighted combine in one autograd Function (utamoe.moe.fused; gated-FFN
    # experts); "grouped": sort, one grouped matmul per projection, un-permute; "loop": the
    # per-expert reference; "auto": fused on CPU where the bank offers it, grouped elsewhere.
    dispatch: DispatchMode = "auto"
    # Coefficients used by RoutingSession.aux_loss().
    group_loss_coef: float = 0.1
    balance_loss_coef: float = 0.01
    z_loss_coef: float = 0.001
    # Decoder layers to upcycle (indices); None = all.
    layers: list[int] | None = field(default=None)

    def __post_init__(self) -> None:
        self.group_names = tuple(self.group_names)
        self.validate()

    @property
    def num_groups(self) -> int:
        return len(self.group_names) if self.routing == "task_aware" else 1

    @property
    def experts_per_group(self) -> int:
        return self.num_experts // self.num_groups

    # The expert/group index arithmetic, in one place: group g owns the routed experts
    # g * experts_per_group ... (g + 1) * experts_per_group - 1.
    def group_experts(self, g: int) -> range:
        eg = self.experts_per_group
        return range(g * eg, (g + 1) * eg)

    def expert_group(self, e: int) -> int:
        return e // self.experts_per_group

    def validate(self) -> None:
        def bad(key: str, msg: str) -> None:
            raise ConfigError(f"MoEConfig.{key}: {msg}")

        if self.routing not in ("task_aware", "topk"):
            bad("routing", f"must be 'task_aware' or 'topk', got {self.routing!r}")
        if self.dispatch not in DISPATCH_MODES:
            bad("dispatch", f"must be one of {', '.join(DISPATCH_MODES)}, got {self.dispatch!r}")
        if len(self.group_names) == 0:
            bad("group_names", "needs at least one task group (e.g. ['und', 'gen'])")
        if len(set(self.group_names)) != len(self.group_names):
            bad("group_names", f"names must be unique, got {list(self.group_names)}")
        if self.num_experts < 1:
            bad("num_experts", f"must be >= 1, got {self.num_experts}")
        if self.num_experts % self.num_groups:
            bad(
                "num_experts",
                f"{self.num_experts} experts do not split evenly into {self.num_groups} groups; "
                f"use a multiple of {self.num_groups}",
            )
        if not 1 <= self.top_k <= self.experts_per_group:
            where = "in each group" if self.routing == "task_aware" else "in total"
            bad(
                "top_k",
                f"top_k={self.top_k} but there are {self.experts_per_group} experts {where}; "
                f"choose 1..{self.experts_per_group} or add experts",
            )
        if self.num_shared_experts < 0:
            bad("num_shared_experts", f"must be >= 0, got {self.num_shared_experts}")
        if self.expert_type not in expert_banks():
            bad("expert_type", f"unknown expert type {self.expert_type!r}; known: "
                f"{', '.join(expert_banks())} (add one with utamoe.moe.experts.register_expert_bank "
                "or a 'utamoe.expert_banks' entry point)")
        if self.lora_rank < 1:
            bad("lora_rank", f"must be >= 1, got {self.lora_rank}")
        if self.expert_hidden_size is not None and self.expert_hidden_size < 1:
            bad("expert_hidden_size", f"must be >= 1 or None, got {self.expert_hidden_size}")
        if not 0.0 < self.alpha_init < 1.0:
            bad("alpha_init", f"must be strictly between 0 and 1, got {self.alpha_init}")
        if self.group_routing == "oracle" and self.routing != "task_aware":
            bad("group_routing", "'oracle' needs routing='task_aware' (plain top-k has no groups)")
        for key in ("group_loss_coef", "balance_loss_coef", "z_loss_coef"):
            if getattr(self, key) < 0:
                bad(key, f"must be >= 0, got {getattr(self, key)}")
        if self.layers is not None and any(i < 0 for i in self.layers):
            bad("layers", f"layer indices must be >= 0, got {self.layers}")
