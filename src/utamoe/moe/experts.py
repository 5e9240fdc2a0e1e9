"""Expert banks: the weights of E experts and the two ways to run them, behind one protocol.

Every bank (an `ExpertBank`) offers the same calls, so the layer and the dispatch
code do not care which expert type is inside:
- `build(config, hidden, inter, act, num_experts, shared_with=None)`: a bank of the
  type for a MoEConfig (`shared_with`: the layer's routed bank, for the shared
  experts, which reuse its frozen base if it has one);
- `init_from(w_gate_up, w_down, experts=None)`: start (some) experts from one dense
  FFN's weights (upcycling);
- `sorted_forward(x_MD, offsets_E)`: rows already sorted by expert, one grouped
  matmul per projection for all experts at once (the fast path);
- `expert_forward(x_ND, e)`: expert e alone on some rows (the per-expert reference
  path, and how shared experts run on every token);
- `fused_dispatch(x_TD, token_M, weight_M, counts_E)` (optional): gather, experts and
  weighted combine in one step, returning the (T, D) output, or None where the bank
  has no such path (the default); `utamoe.moe.layer.dispatch` then takes `sorted_forward`.

Types, registered by name in `EXPERT_BANKS` (MoEConfig.expert_type picks one;
`register_expert_bank` adds another, and so does an installed package with an entry point of
the group `utamoe.expert_banks`, found by `expert_banks()` in a fresh process too):
- `FFNExperts` ("ffn"): full gated FFN per expert (SwiGLU / GeGLU), weights stored
  expert-major as w_gate_up (E, D, 2F) and w_down (E, F, D) so that grouped_mm
  reads them without a transpose; its fused dispatch is `utamoe.moe.fused`.
- `LoRAExperts` ("lora"): expert e = a frozen base FFN, which the bank owns
  (`base`), with low-rank deltas on its gate/up and down projections (LoRA-MoE /
  MoLE). B starts at zero, so a fresh LoRA expert computes exactly the base FFN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utamoe import plugins
from utamoe.moe.fused import fused_expert_ffn, fused_supported
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


class ExpertBank(nn.Module):
    """The protocol every expert type implements (see the module docstring)."""

    num_experts: int

    @classmethod
    def build(cls, config, hidden: int, inter: int, act: str, num_experts: int,
              shared_with: ExpertBank | None = None) -> ExpertBank:
        raise NotImplementedError

    def init_from(self, w_gate_up_DH: torch.Tensor, w_down_FD: torch.Tensor, experts=None) -> None:
        raise NotImplementedError

    def sorted_forward(self, x_MD: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def expert_forward(self, x_ND: torch.Tensor, e: int) -> torch.Tensor:
        raise NotImplementedError

    def fused_dispatch(self, x_TD: torch.Tensor, token_M: torch.Tensor, weight_M: torch.Tensor,
                       counts_E: list[int]) -> torch.Tensor | None:
        return None


class FFNExperts(ExpertBank):
    """E independent gated FFN experts."""

    @classmethod
    def build(cls, config, hidden, inter, act, num_experts, shared_with=None) -> FFNExperts:
        return cls(num_experts, hidden, inter, act)

    def __init__(self, num_experts: int, hidden: int, inter: int, act: str = "silu"):
        super().__init__()
        self.num_experts, self.act_name = num_experts, act
        self.w_gate_up = nn.Parameter(torch.empty(num_experts, hidden, 2 * inter))  # (E, D, 2F)
        self.w_down = nn.Parameter(torch.empty(num_experts, inter, hidden))  # (E, F, D)
        nn.init.normal_(self.w_gate_up, std=hidden**-0.5)
        nn.init.normal_(self.w_down, std=inter**-0.5)

    @torch.no_grad()
    def init_from(self, w_gate_up_DH: torch.Tensor, w_down_FD: torch.Tensor, experts=None) -> None:
        """Set the chosen experts (default all) to one dense FFN's weights (upcycling)."""
        for e in range(self.num_experts) if experts is None else experts:
            self.w_gate_up[e].copy_(w_gate_up_DH)
            self.w_down[e].copy_(w_down_FD)

    def sorted_forward(self, x_MD, offsets_E):
        h_MF = glu(grouped_matmul(x_MD, self.w_gate_up, offsets_E), self.act_name)
        return grouped_matmul(h_MF, self.w_down, offsets_E)

    def expert_forward(self, x_ND, e):
        return glu(x_ND @ self.w_gate_up[e], self.act_name) @ self.w_down[e]

    def fused_dispatch(self, x_TD, token_M, weight_M, counts_E):
        if not fused_supported(self.act_name):
            return None
        return fused_expert_ffn(x_TD, self.w_gate_up, self.w_down, token_M, weight_M, counts_E,
                                self.act_name)


class LoRAExperts(ExpertBank):
    """E low-rank deltas on a frozen base FFN that the bank owns (`base`), or borrows from
    the layer's routed bank (the shared experts: one frozen copy per layer)."""

    @classmethod
    def build(cls, config, hidden, inter, act, num_experts, shared_with=None) -> LoRAExperts:
        return cls(num_experts, hidden, inter, config.lora_rank, config.lora_alpha, act,
                   base_from=shared_with)

    def __init__(self, num_experts: int, hidden: int, inter: int, rank: int, lora_alpha: float,
                 act: str = "silu", base_from: LoRAExperts | None = None):
        super().__init__()
        if base_from is None:
            self.base = GatedFFN(hidden, inter, act, trainable=False)
        else:  # borrowed, not registered: its weights are saved once, with their owner
            object.__setattr__(self, "_base_owner", base_from)
        self.num_experts, self.scale = num_experts, lora_alpha / rank
        self.a_in = nn.Parameter(torch.empty(num_experts, hidden, rank))  # (E, D, r)
        self.b_in = nn.Parameter(torch.zeros(num_experts, rank, 2 * inter))  # (E, r, 2F)
        self.a_out = nn.Parameter(torch.empty(num_experts, inter, rank))  # (E, F, r)
        self.b_out = nn.Parameter(torch.zeros(num_experts, rank, hidden))  # (E, r, D)
        # PEFT's LoRA init: A Kaiming-uniform (a=sqrt(5)), B zero -> the delta starts at exactly 0.
        for a in (self.a_in, self.a_out):
            bound = 1.0 / math.sqrt(a.shape[1])
            nn.init.uniform_(a, -bound, bound)

    def __getattr__(self, name: str):
        if name == "base" and "_base_owner" in self.__dict__:
            return self.__dict__["_base_owner"].base
        return super().__getattr__(name)

    @torch.no_grad()
    def init_from(self, w_gate_up_DH: torch.Tensor, w_down_FD: torch.Tensor, experts=None) -> None:
        """The base FFN becomes the dense FFN (the deltas stay zero: every expert equals it)."""
        if "_base_owner" not in self.__dict__:
            self.base.w_gate_up.copy_(w_gate_up_DH)
            self.base.w_down.copy_(w_down_FD)

    def sorted_forward(self, x_MD, offsets_E):
        base = self.base
        delta_in = grouped_matmul(grouped_matmul(x_MD, self.a_in, offsets_E), self.b_in, offsets_E)
        h_MF = glu(base.gate_up(x_MD) + self.scale * delta_in, base.act_name)
        delta_out = grouped_matmul(grouped_matmul(h_MF, self.a_out, offsets_E), self.b_out, offsets_E)
        return h_MF @ base.w_down + self.scale * delta_out

    def expert_forward(self, x_ND, e):
        base = self.base
        gate_up = base.gate_up(x_ND) + self.scale * (x_ND @ self.a_in[e] @ self.b_in[e])
        h_NF = glu(gate_up, base.act_name)
        return h_NF @ base.w_down + self.scale * (h_NF @ self.a_out[e] @ self.b_out[e])


ENTRY_POINT_GROUP = "utamoe.expert_banks"
EXPERT_BANKS: dict[str, type[ExpertBank]] = {"ffn": FFNExperts, "lora": LoRAExperts}


def register_expert_bank(name: str, bank: type[ExpertBank]) -> None:
    """Make an expert type available as `MoEConfig(expert_type=name)`."""
    if not (isinstance(bank, type) and issubclass(bank, ExpertBank)):
        raise TypeError(f"expert bank {name!r} must subclass utamoe.moe.experts.ExpertBank")
    EXPERT_BANKS[name] = bank


def expert_banks() -> dict[str, type[ExpertBank]]:
    """Every expert type by name: the built-ins, registered ones, and installed plug-ins'
    (entry points of the group `utamoe.expert_banks`, loaded once per process)."""
    plugins.discover(ENTRY_POINT_GROUP, register_expert_bank, EXPERT_BANKS)
    return EXPERT_BANKS
