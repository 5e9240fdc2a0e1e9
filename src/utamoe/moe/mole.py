"""MoLE, MoME's mixture of language experts: routed bottleneck adapters beside each FFN.

    x --ffn (the block's dense MLP or TA-MoE, untouched)---------------------> y_ffn
    x --router (instruction embedding and/or x) -> top-1 adapter e, weight w --> w * adapter_e(x)
    y = y_ffn + w * adapter_e(x)

MoME (NeurIPS 2024) puts E bottleneck adapters beside every FFN of the LLM and picks one
per instance with a sparse top-1 router on the instruction's sentence embedding:
`routing="instance"` (the paper's best, Table 2); "token" routes each token on its hidden
state; "instance_token" sums both logits and picks per token. w is the chosen adapter's
softmax probability (Switch style: the router learns from the task loss); `gumbel=True`
samples hard Gumbel-softmax, straight-through, in training (w == 1) and takes the argmax
(w = 1) in eval. The paper found Gumbel softmax and a balance loss both hurt: both off.

    lm = add_mole(hf_causal_lm, MoLEConfig(), instance_dim=384)  # same logits: w_up = b_up = 0
    with route(lm, instances=emb_BDe) as session:                # one embedding per sequence
        loss = lm(**batch).loss + session.aux_loss()

The caller computes the embeddings (any sentence encoder) and passes them through the
routing session, like task labels: HF decoders call `mlp(x)` with nothing else. MoLE wraps
whatever FFN a block has; `upcycle()` and the split_ffn / upcycle stages see through it
(`inner_mlp`), so adapters added to a dense backbone stay beside the TA-MoE it becomes.
Dispatch is TA-MoE's (`utamoe.moe.layer.dispatch`: grouped matmuls, or the loop reference),
held equal by tests. Session records: loss "mole_balance" (Switch, E * sum_e f_e P_e over
real tokens) and lazy stats "mole_tokens" (E,), real tokens per adapter. No routing trace
is written: its consumers (serve metrics, the web page's experts view) read every traced
layer as a TA-MoE group decision, which MoLE's is not.

Packed rows (utamoe.data.packing) hold several samples each: the session's `sample_ids`
then map every token to its sample's embedding (`RoutingSession.instance_index`), so each
sample keeps its own adapter, as unpacked.

Shapes: B sequences, S positions, T = B*S tokens, U routing units (B sequences, or N samples
of packed rows, for "instance"; else T tokens), N real (unpadded) tokens, D model width, De instance-embedding
width, E adapters, r bottleneck width, M dispatched rows (one adapter per row).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from utamoe.config import ConfigError
from utamoe.moe.blocks import UnsupportedArchitectureError, WrapsFFN, decoder_layers
from utamoe.moe.context import RoutedModule
from utamoe.moe.experts import ACTIVATIONS, ExpertBank, activation
from utamoe.moe.grouped import grouped_matmul
from utamoe.moe.layer import dispatch
from utamoe.moe.routers import Routing

ROUTINGS = ("instance", "token", "instance_token")


@dataclass
class MoLEConfig:
    num_experts: int = 4  # adapters per layer (the paper's figure shows 4; not published)
    bottleneck: int = 32  # adapter width r (not published)
    # "instance": top-1 per sequence on the instruction embedding; "token": top-1 per token on
    # its hidden state; "instance_token": both logits summed, top-1 per token.
    routing: Literal["instance", "token", "instance_token"] = "instance"
    gumbel: bool = False  # hard Gumbel-softmax, straight-through, in training
    gumbel_tau: float = 1.0
    balance_loss_coef: float = 0.0  # Switch load balance over the adapters; 0 = off
    layers: list[int] | None = field(default=None)  # decoder layers that get MoLE; None = all
    act: str = "gelu"
    # "grouped": sort rows by adapter, grouped matmuls; "loop": the per-adapter reference.
    dispatch: Literal["grouped", "loop"] = "grouped"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def uses_instance(self) -> bool:
        return self.routing in ("instance", "instance_token")

    @property
    def uses_token(self) -> bool:
        return self.routing in ("token", "instance_token")

    def validate(self) -> None:
        def bad(key: str, msg: str) -> None:
            raise ConfigError(f"MoLEConfig.{key}: {msg}")

        if self.num_experts < 1:
            bad("num_experts", f"must be >= 1, got {self.num_experts}")
        if self.bottleneck < 1:
            bad("bottleneck", f"must be >= 1, got {self.bottleneck}")
        if self.routing not in ROUTINGS:
            bad("routing", f"must be one of {', '.join(ROUTINGS)}, got {self.routing!r}")
        if not self.gumbel_tau > 0:
            bad("gumbel_tau", f"must be > 0, got {self.gumbel_tau}")
        if self.balance_loss_coef < 0:
            bad("balance_loss_coef", f"must be >= 0, got {self.balance_loss_coef}")
        if self.layers is not None and any(i < 0 for i in self.layers):
            bad("layers", f"layer indices must be >= 0, got {self.layers}")
        if self.act not in ACTIVATIONS:
            bad("act", f"unknown activation {self.act!r}; known: {', '.join(ACTIVATIONS)}")
        if self.dispatch not in ("grouped", "loop"):
            bad("dispatch", f"must be 'grouped' or 'loop', got {self.dispatch!r}")


class AdapterExperts(ExpertBank):
    """E bottleneck adapters, e(x) = act(x W_down[e] + b_down[e]) W_up[e] + b_up[e].

    W_up and b_up start at zero, so a fresh bank adds exactly nothing. Deliberately not in
    EXPERT_BANKS: an adapter is a delta beside an FFN, not an FFN replacement, so
    `MoEConfig(expert_type=...)` cannot pick it; MoLELayer builds it directly."""

    @classmethod
    def build(cls, config, hidden, inter, act, num_experts, shared_with=None) -> AdapterExperts:
        """`inter` is the adapter width here (MoLELayer passes config.bottleneck)."""
        return cls(num_experts, hidden, inter, act)

    def __init__(self, num_experts: int, hidden: int, bottleneck: int, act: str = "gelu"):
        super().__init__()
        self.num_experts, self.act_name = num_experts, act
        self.w_down = nn.Parameter(torch.empty(num_experts, hidden, bottleneck))  # (E, D, r)
        self.b_down = nn.Parameter(torch.zeros(num_experts, bottleneck))  # (E, r)
        self.w_up = nn.Parameter(torch.zeros(num_experts, bottleneck, hidden))  # (E, r, D)
        self.b_up = nn.Parameter(torch.zeros(num_experts, hidden))  # (E, D)
        nn.init.normal_(self.w_down, std=hidden**-0.5)

    def init_from(self, w_gate_up_DH, w_down_FD, experts=None) -> None:
        """No-op: an adapter is a delta beside the FFN, it copies nothing from it."""

    def sorted_forward(self, x_MD: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
        # Each row's adapter index, for its biases; output_size avoids a host sync.
        counts_E = torch.diff(offsets_E.long(), prepend=offsets_E.new_zeros(1, dtype=torch.long))
        expert_M = torch.repeat_interleave(torch.arange(self.num_experts, device=x_MD.device),
                                           counts_E, output_size=x_MD.shape[0])
        h_Mr = grouped_matmul(x_MD, self.w_down, offsets_E) + self.b_down[expert_M]
        h_Mr = activation(self.act_name)(h_Mr)
        return grouped_matmul(h_Mr, self.w_up, offsets_E) + self.b_up[expert_M]

    def expert_forward(self, x_ND: torch.Tensor, e: int) -> torch.Tensor:
        h_Nr = activation(self.act_name)(x_ND @ self.w_down[e] + self.b_down[e])
        return h_Nr @ self.w_up[e] + self.b_up[e]


class MoLELayer(RoutedModule, WrapsFFN):
    """`ffn(x)` plus the top-1 routed adapter (see the module docstring)."""

    def __init__(self, ffn: nn.Module, config: MoLEConfig, hidden_size: int,
                 instance_dim: int | None = None):
        super().__init__()
        if config.uses_instance and not instance_dim:
            raise ValueError(f"MoLE routing={config.routing!r} needs instance_dim, the width of "
                             f"the instruction embeddings given to route(..., instances=)")
        self.config, self.hidden_size = config, hidden_size
        self.instance_dim = instance_dim if config.uses_instance else None
        self.ffn = ffn
        self.adapters = AdapterExperts.build(config, hidden_size, config.bottleneck, config.act,
                                             config.num_experts)
        E = config.num_experts
        self.instance_gate = nn.Linear(instance_dim, E, bias=False) if config.uses_instance else None
        self.token_gate = nn.Linear(hidden_size, E, bias=False) if config.uses_token else None
        for gate in (self.instance_gate, self.token_gate):
            if gate is not None:  # small init: near-uniform routing at the start (Switch)
                nn.init.normal_(gate.weight, std=0.02)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        y = self.ffn(hidden)
        shape = hidden.shape
        x_TD = hidden.reshape(-1, shape[-1])
        logits_TE, ids_T, w_T = self._route(hidden)
        valid_T = keep_N = None
        if self.session is not None:
            _, valid_T = self.session.token_view(shape, hidden.device)
            keep_N = self.session.real_tokens(valid_T)
        delta_TD = self._adapt(x_TD, logits_TE, ids_T, w_T, keep_N)
        if self.session is not None:
            self._record(logits_TE, ids_T, valid_T)
        return y + delta_TD.reshape(shape).to(y.dtype)

    def _adapt(self, x_TD, logits_TE, ids_T, w_T, keep_N) -> torch.Tensor:
        """The chosen adapters' weighted outputs; with padding, only real rows are computed."""
        full_TD = x_TD
        if keep_N is not None:
            x_TD, logits_TE = x_TD.index_select(0, keep_N), logits_TE.index_select(0, keep_N)
            ids_T, w_T = ids_T.index_select(0, keep_N), w_T.index_select(0, keep_N)
        # A Routing with one slot and one group, so the TA-MoE dispatch paths run it unchanged.
        routing = Routing(ids_T[:, None], w_T[:, None], ids_T[:, None], torch.zeros_like(ids_T),
                          logits_TE, None, None)
        delta = dispatch(x_TD, routing, self.adapters, self.config.num_experts, self.config.dispatch)
        if keep_N is None:
            return delta
        return full_TD.new_zeros(full_TD.shape, dtype=delta.dtype).index_copy(0, keep_N, delta)

    def _route(self, hidden: torch.Tensor):
        """(logits_TE fp32, adapter ids_T, weights_T fp32) for every token."""
        lead = tuple(hidden.shape[:-1])
        if self.config.uses_instance:
            inst_UDe, to_tokens = self._instances(lead, hidden.device)
            inst_logits_UE = F.linear(inst_UDe.float(), self.instance_gate.weight.float())
        if self.config.routing == "instance":
            # One choice (and one Gumbel sample) per sample, then shared by all its tokens.
            ids_U, w_U = self._select(inst_logits_UE)
            return tuple(to_tokens(t) for t in (inst_logits_UE, ids_U, w_U))
        x_TD = hidden.reshape(-1, hidden.shape[-1]).float()
        logits_TE = F.linear(x_TD, self.token_gate.weight.float())
        if self.config.uses_instance:
            logits_TE = logits_TE + to_tokens(inst_logits_UE)
        return (logits_TE, *self._select(logits_TE))

    def _instances(self, lead: tuple, device):
        """The session's instruction embeddings (U, De) and the map from per-unit values to
        per-token ones: U = B rows, each covering its S tokens, or, in packed rows
        (utamoe.data.packing), U = N samples, each token taking its sample's (`sample_ids`)."""
        inst = None if self.session is None else self.session.instances
        if inst is None:
            raise RuntimeError(
                f"MoLE routing={self.config.routing!r} routes on the instruction embedding: run "
                f"the forward inside `with utamoe.moe.route(model, instances=emb)`, emb of shape "
                f"(batch, {self.instance_dim}) (e.g. a sentence-encoder embedding per instruction)")
        inst = torch.as_tensor(inst, device=device)
        index_T = self.session.instance_index(lead, device)
        if index_T is not None:  # packed rows: one embedding per sample
            if inst.dim() != 2 or inst.shape[1] != self.instance_dim:
                raise ValueError(f"instances has shape {tuple(inst.shape)} but MoLE expects "
                                 f"(samples, {self.instance_dim}) for packed rows")
            return inst, lambda t: t.index_select(0, index_T)
        per_unit = math.prod(lead[1:]) if len(lead) > 1 else 1  # S tokens per sequence (1: KV cache)
        if tuple(inst.shape) != (lead[0], self.instance_dim):
            raise ValueError(
                f"instances has shape {tuple(inst.shape)} but MoLE expects ({lead[0]}, "
                f"{self.instance_dim}): one embedding of width instance_dim per sequence of the "
                f"forward's input {lead} (one per row when the input is (T, D))")
        return inst, lambda t: t.repeat_interleave(per_unit, dim=0)

    def _select(self, logits_UE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if not cfg.gumbel:
            w_U, ids_U = torch.softmax(logits_UE, dim=-1).max(dim=-1)
            return ids_U, w_U
        if not self.training:
            ids_U = logits_UE.argmax(dim=-1)
            return ids_U, torch.ones_like(logits_UE[:, 0])
        gumbel_UE = -torch.empty_like(logits_UE).exponential_().log()
        soft_UE = torch.softmax((logits_UE + gumbel_UE) / cfg.gumbel_tau, dim=-1)
        ids_U = soft_UE.argmax(dim=-1)
        chosen_U = soft_UE.gather(1, ids_U[:, None]).squeeze(1)
        return ids_U, 1.0 + (chosen_U - chosen_U.detach())  # exactly 1 forward, ST gradient

    def _record(self, logits_TE, ids_T, valid_T) -> None:
        E = self.config.num_experts
        # Masks as weights, not boolean indexing: no host sync on accelerators.
        m_T = (torch.ones_like(logits_TE[:, 0]) if valid_T is None
               else valid_T.to(logits_TE.dtype))
        n = m_T.sum().clamp(min=1.0)
        f_E = logits_TE.new_zeros(E).index_add(0, ids_T, m_T) / n
        p_E = (torch.softmax(logits_TE, dim=-1) * m_T[:, None]).sum(0) / n
        balance = E * (f_E * p_E).sum()
        stats = functools.partial(_token_counts, ids_T.detach(), m_T.detach(), E)
        self.session.record(self.session_name, {"mole_balance": balance}, stats,
                            {"mole_balance": self.config.balance_loss_coef})

    def extra_repr(self) -> str:
        c = self.config
        return (f"routing={c.routing}, experts={c.num_experts}, bottleneck={c.bottleneck}, "
                f"gumbel={c.gumbel}, d={self.hidden_size}, instance_dim={self.instance_dim}")


def _token_counts(ids_T: torch.Tensor, m_T: torch.Tensor, num_experts: int) -> dict:
    counts = torch.zeros(num_experts, dtype=torch.long, device=ids_T.device)
    return {"mole_tokens": counts.index_add_(0, ids_T, m_T.long())}


def _hidden_size(lm: nn.Module, mlp: nn.Module, where: str) -> int:
    # HF MLPs and TaskAwareMoE carry hidden_size; else the model's config does.
    size = getattr(mlp, "hidden_size", None) or getattr(getattr(lm, "config", None), "hidden_size", None)
    if not size:
        raise UnsupportedArchitectureError(
            f"{where}: cannot tell the model width of {type(mlp).__name__} (no hidden_size on it "
            f"or on the model's config); wrap it by hand with MoLELayer(ffn, config, hidden_size)")
    return int(size)


def add_mole(lm: nn.Module, config: MoLEConfig, instance_dim: int | None = None) -> list[MoLELayer]:
    """Wrap the FFN of the chosen decoder layers (config.layers; None = all) in MoLE, in place.

    Adapters take the FFN's dtype and device, routers stay fp32. Returns the new layers."""
    prefix, layers = decoder_layers(lm)
    chosen = range(len(layers)) if config.layers is None else config.layers
    for i in chosen:  # check all before changing any
        if i >= len(layers):
            raise ValueError(f"MoLEConfig.layers: layer {i} does not exist ({len(layers)} layers)")
        if isinstance(layers[i].mlp, MoLELayer):
            raise ValueError(f"{prefix}.{i}.mlp already has MoLE adapters; call add_mole once "
                             f"per model (or choose other MoLEConfig.layers)")
    added = []
    for i in chosen:
        mlp = layers[i].mlp
        mole = MoLELayer(mlp, config, _hidden_size(lm, mlp, f"{prefix}.{i}.mlp"), instance_dim)
        ref = next(mlp.parameters(), None)
        if ref is not None:
            mole.adapters.to(device=ref.device, dtype=ref.dtype)
            for gate in (mole.instance_gate, mole.token_gate):
                if gate is not None:
                    gate.to(device=ref.device)  # fp32 whatever the model dtype
        layers[i].mlp = mole
        added.append(mole)
    return added


def mole_layers(model: nn.Module) -> list[MoLELayer]:
    return [m for m in model.modules() if isinstance(m, MoLELayer)]
