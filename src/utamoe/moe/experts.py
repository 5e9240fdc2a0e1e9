"""Expert banks: the weights of E experts and the two ways to run them.

Every bank offers the same two calls, so the layer and the dispatch code do not
care which expert type is inside:
- `sorted_forward(x_MD, offsets_E, base)`: rows already sorted by expert, one
  grouped matmul per projection for all experts at once (the fast path);
- `expert_forward(x_ND, e, base)`: expert e alone on some rows (the per-expert
  reference path, and how shared experts run on every token).

Types:
- `FFNExperts`: full gated FFN per expert (SwiGLU / GeGLU), weights stored
  expert-major as w_gate_up (E, D, 2F) and w_down (E, F, D) so that grouped_mm
  reads them without a transpose.
- `LoRAExperts`: expert e = the frozen base FFN with low-rank deltas on its
  gate/up and down projections (LoRA-MoE / MoLE). B starts at zero, so a fresh
  LoRA expert computes exactly the base FFN.
An adapter expert type (MoLE's bottleneck adapters) fits the same two calls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utamoe.moe.grouped import grouped_matmul

ACTIVATIONS = {
    "silu": F.silu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown expert activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class GatedFFN(nn.Module):
    """One dense gated FFN, act(x Wg) * (x Wu) Wd; the frozen base of LoRA experts."""

    def __init__(self, hidden: int, inter: int, act: str = "silu", trainable: bool = False):
        super().__init__()
        self.act_name = act
        self.w_gate_up = nn.Parameter(torch.empty(hidden, 2 * inter), requires_grad=trainable)
        self.w_down = nn.Parameter(torch.empty(inter, hidden), requires_grad=trainable)
        nn.init.normal_(self.w_gate_up, std=hidden**-0.5)
        nn.init.normal_(self.w_down, std=inter**-0.5)

    def gate_up(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w_gate_up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return glu(self.gate_up(x), self.act_name) @ self.w_down


def glu(gate_up: torch.Tensor, act: str) -> torch.Tensor:
    """act(gate) * up, with [gate | up] concatenated on the last dim."""
    gate, up = gate_up.chunk(2, dim=-1)
    return activation(act)(gate) * up


def dense_weights(mlp: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_gate_up (D, 2F), w_down (F, D)) of a Hugging Face gated MLP (gate_proj/up_proj/down_proj)."""
    w_gate_up = torch.cat([mlp.gate_proj.weight.T, mlp.up_proj.weight.T], dim=1)
    return w_gate_up.detach(), mlp.down_proj.weight.T.detach()


class FFNExperts(nn.Module):
    """E independent gated FFN experts."""

    def __init__(self, num_experts: int, hidden: int, inter: int, act: str = "silu"):
        super().__init__()
        self.num_experts, self.act_name = num_experts, act
        self.w_gate_up = nn.Parameter(torch.empty(num_experts, hidden, 2 * inter))  # (E, D, 2F)
        self.w_down = nn.Parameter(torch.empty(num_experts, inter, hidden))  # (E, F, D)
        nn.init.normal_(self.w_gate_up, std=hidden**-0.5)
        nn.init.normal_(self.w_down, std=inter**-0.5)

    @torch.no_grad()
    def copy_from(self, w_gate_up_DH: torch.Tensor, w_down_FD: torch.Tensor, experts=None) -> None:
        """Set the chosen experts (default all) to one dense FFN's weights (upcycling)."""
        for e in range(self.num_experts) if experts is None else experts:
            self.w_gate_up[e].copy_(w_gate_up_DH)
            self.w_down[e].copy_(w_down_FD)

    def sorted_forward(self, x_MD, offsets_E, base=None):
        h_MF = glu(grouped_matmul(x_MD, self.w_gate_up, offsets_E), self.act_name)
        return grouped_matmul(h_MF, self.w_down, offsets_E)

    def expert_forward(self, x_ND, e, base=None):
        return glu(x_ND @ self.w_gate_up[e], self.act_name) @ self.w_down[e]


class LoRAExperts(nn.Module):
    """E low-rank deltas on a shared frozen base FFN (passed in as `base`)."""

    def __init__(self, num_experts: int, hidden: int, inter: int, rank: int, lora_alpha: float):
        super().__init__()
        self.num_experts, self.scale = num_experts, lora_alpha / rank
        self.a_in = nn.Parameter(torch.empty(num_experts, hidden, rank))  # (E, D, r)
        self.b_in = nn.Parameter(torch.zeros(num_experts, rank, 2 * inter))  # (E, r, 2F)
        self.a_out = nn.Parameter(torch.empty(num_experts, inter, rank))  # (E, F, r)
        self.b_out = nn.Parameter(torch.zeros(num_experts, rank, hidden))  # (E, r, D)
        # PEFT's LoRA init: A Kaiming-uniform (a=sqrt(5)), B zero -> the delta starts at exactly 0.
        for a in (self.a_in, self.a_out):
            bound = 1.0 / math.sqrt(a.shape[1])
            nn.init.uniform_(a, -bound, bound)

    def sorted_forward(self, x_MD, offsets_E, base: GatedFFN):
        delta_in = grouped_matmul(grouped_matmul(x_MD, self.a_in, offsets_E), self.b_in, offsets_E)
        h_MF = glu(base.gate_up(x_MD) + self.scale * delta_in, base.act_name)
        delta_out = grouped_matmul(grouped_matmul(h_MF, self.a_out, offsets_E), self.b_out, offsets_E)
        return h_MF @ base.w_down + self.scale * delta_out

    def expert_forward(self, x_ND, e, base: GatedFFN):
        gate_up = base.gate_up(x_ND) + self.scale * (x_ND @ self.a_in[e] @ self.b_in[e])
        h_NF = glu(gate_up, base.act_name)
        return h_NF @ base.w_down + self.scale * (h_NF @ self.a_out[e] @ self.b_out[e])
