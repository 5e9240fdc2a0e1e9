"""Task-conflict diagnostics: where the understanding and generation gradients disagree.

For two losses a and b (understanding CE on a batch of understanding samples,
generation CE on a batch of generation samples) we take their gradients with
respect to the trainable parameters separately and compare them, piece by piece:

    cos(g_a, g_b) = <g_a, g_b> / (|g_a| |g_b|)          over each group of parameters

+1: both tasks push the weights the same way; 0: unrelated; < 0: a step that helps
one task hurts the other (the "task objective conflict" of UTAMoE / UniDecouple).
A parameter that only one loss reaches (lm_head gets no generation gradient; in a
TA-MoE model an expert that only receives understanding tokens) has no cosine: it
is reported as *one-sided* with both gradient norms, never as 0. In TA-MoE this is
the point: experts of one group are decoupled from the other task.

`gradient_conflict` is generic: any `nn.Module`, two loss closures and a
name -> group function. Each closure is called `n_batches` times (it may use a new
batch each call); gradients are summed over the calls, so `cosine` is the cosine of
the mean gradients (what a step on the union of the batches sees), and
`pair_mean` / `pair_std` summarise the per-call cosines (how stable it is).
`unified_conflict` builds the closures and the grouping for a `UnifiedModel`:
per decoder layer x module kind (attention, mlp, norm, and for TA-MoE router,
shared expert, each group's routed experts), plus embeddings, heads, aligners
and the vision encoder. Only the task cross-entropies are compared, not the
router auxiliary losses. Memory: two fp32 copies of the trainable gradients.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from utamoe.moe import moe_layers

LossFn = Callable[[], torch.Tensor]
# name -> group key(s) the parameter (piece) counts in; None: ignored.
GroupFn = Callable[[str], "str | Sequence[str] | None"]
# (name, parameter) -> [(piece name, index into the parameter or None for all of it)]
PieceFn = Callable[[str, torch.Tensor], list[tuple[str, Any]]]

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


@dataclass
class GroupConflict:
    """Gradient agreement of one group of parameters (sums over its pieces)."""

    key: str
    dot: float  # <g_a, g_b> of the summed gradients
    norm_a: float  # |g_a| of the summed gradients (divided by n_batches: a mean gradient)
    norm_b: float
    numel: int
    pair_cosines: list[float] = field(default_factory=list)  # per call, two-sided calls only

    @property
    def status(self) -> str:
        """'both' (a cosine exists), 'a_only' / 'b_only' (one-sided) or 'none' (no gradient)."""
        if self.norm_a > 0 and self.norm_b > 0:
            return "both"
        if self.norm_a > 0:
            return "a_only"
        return "b_only" if self.norm_b > 0 else "none"

    @property
    def cosine(self) -> float | None:
        if self.status != "both":
            return None
        return max(-1.0, min(1.0, self.dot / (self.norm_a * self.norm_b)))

    @property
    def pair_mean(self) -> float | None:
        return sum(self.pair_cosines) / len(self.pair_cosines) if self.pair_cosines else None

    @property
    def pair_std(self) -> float | None:
        c = self.pair_cosines
        if len(c) < 2:
            return None
        m = sum(c) / len(c)
        return math.sqrt(sum((x - m) ** 2 for x in c) / len(c))

    def to_dict(self, names: tuple[str, str] = ("a", "b")) -> dict[str, Any]:
        status = {"both": "both", "none": "none", "a_only": f"{names[0]} only",
                  "b_only": f"{names[1]} only"}[self.status]
        return {"cosine": _round(self.cosine), "status": status,
                f"norm_{names[0]}": _round(self.norm_a), f"norm_{names[1]}": _round(self.norm_b),
                "numel": self.numel, "pair_mean": _round(self.pair_mean),
                "pair_std": _round(self.pair_std), "pairs": len(self.pair_cosines)}


def _round(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else float(f"{x:.{nd}g}")


@dataclass
class ConflictResult:
    """Per-group agreement, the whole model (`overall`) and its two-sided part (`shared`)."""

    groups: dict[str, GroupConflict]
    overall: GroupConflict  # every trainable parameter
    shared: GroupConflict  # only the pieces that both losses reached
    pieces: dict[str, GroupConflict]  # the finest level (one parameter or one expert slice)
    names: tuple[str, str] = ("a", "b")
    n_batches: int = 1
    losses: dict[str, float] = field(default_factory=dict)  # mean loss values

    def grid(self) -> tuple[list[int], list[str], dict[tuple[int, str], GroupConflict]]:
        """(layer indices, module kinds, {(layer, kind): group}) for groups 'layers.N.kind'."""
        cells, layers, kinds = {}, [], []
        for key, g in self.groups.items():
            m = _LAYER.search(key)
            if m is None:
                continue
            layer, kind = int(m.group(1)), m.group(2)
            cells[(layer, kind)] = g
            layers += [layer] if layer not in layers else []
            kinds += [kind] if kind not in kinds else []
        return sorted(layers), kinds, cells

    def parts(self) -> dict[str, GroupConflict]:
        """Groups outside the decoder layers (embeddings, heads, aligners, encoder)."""
        return {k: g for k, g in self.groups.items() if _LAYER.search(k) is None}

    def to_dict(self) -> dict[str, Any]:
        n = self.names
        return {"names": list(n), "n_batches": self.n_batches, "losses": self.losses,
                "overall": self.overall.to_dict(n), "shared": self.shared.to_dict(n),
                "groups": {k: g.to_dict(n) for k, g in self.groups.items()},
                "pieces": {k: g.to_dict(n) for k, g in self.pieces.items()}}


def default_group_of(name: str) -> str:
    """'...layers.N.<module>.…' -> 'layers.N.<module>'; anything else -> its first component."""
    m = _LAYER.search(name)
    if m is not None:
        return f"layers.{m.group(1)}.{m.group(2).split('.')[0]}"
    return name.split(".")[0]


class _Acc:
    """Sums of gradients of both losses for one piece, plus per-call cosines."""

    def __init__(self):
        self.sum_a = self.sum_b = None
        self.pair_dots: list[tuple[float, float, float]] = []


def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    if not loss.requires_grad:
        raise ValueError("the loss closure returned a tensor without grad; call it with grad "
                         "enabled on a module with trainable parameters")
    return list(torch.autograd.grad(loss, params, allow_unused=True))


def _piece_stats(ga: torch.Tensor | None, gb: torch.Tensor | None) -> tuple[float, float, float]:
    a2 = float(ga.double().pow(2).sum()) if ga is not None else 0.0
    b2 = float(gb.double().pow(2).sum()) if gb is not None else 0.0
    dot = float((ga.double() * gb.double()).sum()) if ga is not None and gb is not None else 0.0
    return dot, a2, b2


def gradient_conflict(module: nn.Module, loss_a: LossFn, loss_b: LossFn,
                      group_of: GroupFn = default_group_of, pieces: PieceFn | None = None,
                      n_batches: int = 1, names: tuple[str, str] = ("a", "b"),
                      params: Iterable[tuple[str, torch.Tensor]] | None = None,
                      progress: Callable[[int], None] | None = None) -> ConflictResult:
    """Cosine between the gradients of `loss_a()` and `loss_b()` per group of parameters.

    `params` defaults to the module's trainable named parameters. `pieces` may split a
    parameter (e.g. an expert bank along its expert dimension); `group_of` maps a
    (piece) name to the group key(s) it counts in. `progress(1)` is called per call pair.
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be at least 1, got {n_batches}")
    named = list(params) if params is not None else [
        (n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters to compare gradients on")
    plist = [p for _, p in named]
    split = [(pieces or (lambda n, p: [(n, None)]))(n, p) for n, p in named]
    acc = {pname: _Acc() for parts in split for pname, _ in parts}
    loss_sums = [0.0, 0.0]
    for _ in range(n_batches):
        grads = []
        for j, fn in enumerate((loss_a, loss_b)):
            loss = fn()
            grads.append(_grads(loss, plist))
            loss_sums[j] += float(loss.detach())
        for (ga, gb), parts in zip(zip(*grads), split):
            for pname, idx in parts:
                a = None if ga is None else (ga if idx is None else ga[idx]).detach().float()
                b = None if gb is None else (gb if idx is None else gb[idx]).detach().float()
                slot = acc[pname]
                slot.pair_dots.append(_piece_stats(a, b))
                if a is not None:
                    slot.sum_a = a.clone() if slot.sum_a is None else slot.sum_a.add_(a)
                if b is not None:
                    slot.sum_b = b.clone() if slot.sum_b is None else slot.sum_b.add_(b)
        if progress is not None:
            progress(1)
    piece_stats = {}
    numels = {pname: (p if idx is None else p[idx]).numel()
              for (_, p), parts in zip(named, split) for pname, idx in parts}
    for pname, slot in acc.items():
        dot, a2, b2 = _piece_stats(slot.sum_a, slot.sum_b)
        piece_stats[pname] = (dot / n_batches**2, a2 / n_batches**2, b2 / n_batches**2,
                              slot.pair_dots)
    result = _assemble(piece_stats, numels, group_of, n_batches)
    result.names = names
    result.losses = {names[0]: loss_sums[0] / n_batches, names[1]: loss_sums[1] / n_batches}
    return result


def _combine(key: str, members: list[str], piece_stats: dict, numels: dict,
             n_batches: int) -> GroupConflict:
    dot = sum(piece_stats[m][0] for m in members)
    a2 = sum(piece_stats[m][1] for m in members)
    b2 = sum(piece_stats[m][2] for m in members)
    cosines = []
    for i in range(n_batches):
        pd = sum(piece_stats[m][3][i][0] for m in members)
        pa = sum(piece_stats[m][3][i][1] for m in members)
        pb = sum(piece_stats[m][3][i][2] for m in members)
        if pa > 0 and pb > 0:
            cosines.append(max(-1.0, min(1.0, pd / math.sqrt(pa * pb))))
    return GroupConflict(key, dot, math.sqrt(a2), math.sqrt(b2),
                         sum(numels[m] for m in members), cosines)


def _assemble(piece_stats: dict, numels: dict, group_of: GroupFn, n_batches: int,
              ) -> ConflictResult:
    members: dict[str, list[str]] = {}
    for pname in piece_stats:
        keys = group_of(pname)
        for key in [keys] if isinstance(keys, str) else (keys or []):
            members.setdefault(key, []).append(pname)
    groups = {k: _combine(k, m, piece_stats, numels, n_batches) for k, m in members.items()}
    pieces = {p: _combine(p, [p], piece_stats, numels, n_batches) for p in piece_stats}
    everything = list(piece_stats)
    two_sided = [p for p, g in pieces.items() if g.status == "both"]
    return ConflictResult(groups, _combine("overall", everything, piece_stats, numels, n_batches),
                          _combine("shared", two_sided, piece_stats, numels, n_batches), pieces,
                          n_batches=n_batches)


# ---------------------------------------------------------------- the unified model

# Parts outside the decoder layers, by parameter-name prefix (first match wins).
PARTS = (("lm.embed_tokens.", "text embeddings"), ("gen_embed.", "code embeddings"),
         ("gen_aligner.", "gen aligner"), ("und_encoder.aligner.", "und aligner"),
         ("und_encoder.", "vision encoder"), ("lm.norm.", "final norm"),
         ("lm_head.", "lm_head"), ("gen_head.", "gen_head"))
_EXPERT_PIECE = re.compile(r"\.mlp\.experts\.[^.\[]+\[(\d+)\]$")


def unified_pieces(model: nn.Module) -> PieceFn:
    """Split every routed-expert bank (E, ...) into one piece per expert: 'name[e]'."""
    layers = moe_layers(model)
    num_experts = layers[0].config.num_experts if layers else 0

    def pieces(name: str, p: torch.Tensor) -> list[tuple[str, Any]]:
        if ".mlp.experts." in name and p.dim() >= 1 and p.shape[0] == num_experts:
            return [(f"{name}[{e}]", e) for e in range(num_experts)]
        return [(name, None)]

    return pieces


def unified_group_of(model: nn.Module) -> GroupFn:
    """Group keys of a UnifiedModel's parameters (see the module docstring).

    In a decoder layer: 'layers.N.attention', 'layers.N.mlp' (the whole MLP or TA-MoE
    layer), 'layers.N.norm'; with TA-MoE also 'layers.N.router', 'layers.N.shared' and
    'layers.N.experts:<group>' (that group's routed experts; 'experts' in top-k mode).
    """
    layers = moe_layers(model)
    cfg = layers[0].config if layers else None

    def group_of(name: str) -> str | list[str] | None:
        m = _LAYER.search(name)
        if m is None or not name.startswith("lm."):
            for prefix, part in PARTS:
                if name.startswith(prefix):
                    return part
            return name.split(".")[0]
        layer, rest = m.group(1), m.group(2)
        base = f"layers.{layer}."
        if rest.startswith("self_attn."):
            return base + "attention"
        if "layernorm" in rest or rest.startswith("norm"):
            return base + "norm"
        if not rest.startswith("mlp."):
            return base + rest.split(".")[0]
        keys = [base + "mlp"]
        sub = rest.split(".")[1]
        if sub == "router":
            keys.append(base + "router")
        elif sub == "shared":
            keys.append(base + "shared")
        elif sub == "experts" and cfg is not None:
            e = _EXPERT_PIECE.search(name)
            if cfg.routing == "task_aware" and e is not None:
                keys.append(base + f"experts:{cfg.group_names[cfg.expert_group(int(e.group(1)))]}")
            else:
                keys.append(base + "experts")
        return keys

    return group_of


def unified_conflict(model: nn.Module, und_batches: Sequence, gen_batches: Sequence,
                     progress: Callable[[int], None] | None = None) -> ConflictResult:
    """Understanding-CE vs generation-CE gradients of a UnifiedModel, over batch pairs.

    Pair i is (und_batches[i], gen_batches[i]); n_batches = the shorter list's length.
    The model runs in eval mode (no dropout) and is restored to its mode afterwards.
    """
    n = min(len(und_batches), len(gen_batches))
    if n == 0:
        raise ValueError("unified_conflict needs at least one understanding batch and one "
                         "generation batch")
    device = next(model.parameters()).device
    it_und, it_gen = iter(und_batches[:n]), iter(gen_batches[:n])

    def closure(it, group: str) -> LossFn:
        def loss() -> torch.Tensor:
            batch = next(it).to(device)
            out = model(batch)
            if group not in out.group_losses:
                raise ValueError(f"a batch given as '{group}' has no {group} loss tokens "
                                 f"(tasks: {sorted(set(batch.tasks))})")
            return out.group_losses[group]
        return loss

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return gradient_conflict(model, closure(it_und, "und"), closure(it_gen, "gen"),
                                     group_of=unified_group_of(model),
                                     pieces=unified_pieces(model), n_batches=n,
                                     names=("und", "gen"), progress=progress)
    finally:
        model.train(was_training)
