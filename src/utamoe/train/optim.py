"""The trainer's optimisers and learning-rate schedules: AdamW, or Muon for the hidden matrices.

Muon (Jordan et al. 2024; `torch.optim.Muon`) replaces a matrix's update by the orthogonalised
momentum (Newton-Schulz iterations), so every direction of the update gets a comparable step
whatever its gradient's size. Parameters that are not hidden matrices (embeddings, output heads,
routers, norms, biases, convolutions) stay on AdamW, as Muon's authors prescribe. Muon and AdamW
live in ONE optimiser (`MuonAdamW`, an AdamW whose groups flagged `muon` take the Muon update), so
the scheduler, Accelerate, checkpoints and exact resume see a single torch optimiser.

`torch.optim.Muon` takes 2-D parameters only; expert banks are 3-D (`w_EDF`: one matrix per
expert), so `orthogonalize` works on a batch of matrices: each expert's slice gets the update
it would get as a separate 2-D parameter. The 2-D path is torch's own arithmetic (the same
`addmm` calls in bfloat16), tested equal to `torch.optim.Muon`; it is the reference
(`batch_matrices=False`). The default stacks the 2-D updates of one shape (a tall matrix as its
transpose) and orthogonalises each stack in one batched call: on a small model the per-matrix
calls are mostly overhead (41 matrices of the demo's model: 48 ms a step per matrix, 32 ms
stacked, 2 threads), and the result is the same to one bfloat16 rounding (tested).

Schedules: "cosine" (linear warmup, cosine decay to `min_lr_ratio`) and "wsd"
(warmup-stable-decay, Hägele et al. 2024: warmup, a constant learning rate for all but the last
`decay_frac` of the steps, then a (1 - sqrt) cooldown to `min_lr_ratio`), which keeps the rate
high through a loss plateau.
"""

from __future__ import annotations

import fnmatch
import inspect
import math

import torch
from torch import nn

# Newton-Schulz coefficients and iteration count of torch.optim.Muon (Keller Jordan's).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
# Parameters that stay on AdamW under Muon, by name (beside every parameter that is not a 2-D
# or 3-D weight, and every nn.Embedding): output heads and routers are classifiers, whose rows
# Muon would equalise; the aligner's grid-position tables (`row_embed`, `col_embed`) are
# embeddings by role, though plain 2-D parameters.
MUON_EXCLUDE = ("lm_head.*", "*.vision_head.*", "*router*", "*.row_embed", "*.col_embed")


def orthogonalize(g: torch.Tensor, coefficients=NS_COEFFICIENTS, steps: int = NS_STEPS,
                  eps: float = NS_EPS) -> torch.Tensor:
    """Newton-Schulz orthogonalisation of a matrix (m, n) or a batch of them (b, m, n), in
    bfloat16 like torch.optim.Muon; each matrix of a batch is normalised on its own."""
    a, b, c = coefficients
    x = g.bfloat16()
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    if x.ndim == 2:
        x = x / x.norm().clamp(min=eps)
        for _ in range(steps):
            gram = x @ x.T
            update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, update, x, beta=a)
    else:
        x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
        for _ in range(steps):
            gram = x @ x.mT
            update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.baddbmm(x, update, x, beta=a)
    return x.mT if tall else x


def orthogonalize_all(updates: list[torch.Tensor]) -> list[torch.Tensor]:
    """`orthogonalize` of each update, 2-D updates of one shape (a tall one as its transpose)
    stacked into one batched call; a 3-D update (an expert bank) and a shape met once go alone."""
    out: list[torch.Tensor | None] = [None] * len(updates)
    stacks: dict[tuple[int, int], list[int]] = {}
    for i, u in enumerate(updates):
        if u.ndim == 2:  # keyed by the wide orientation: (rows, cols) with rows <= cols
            stacks.setdefault((min(u.shape), max(u.shape)), []).append(i)
        else:
            out[i] = orthogonalize(u)
    for members in stacks.values():
        if len(members) == 1:
            out[members[0]] = orthogonalize(updates[members[0]])
            continue
        tall = [updates[i].size(0) > updates[i].size(1) for i in members]
        stack = torch.stack([updates[i].mT if t else updates[i] for i, t in zip(members, tall)])
        for i, t, x in zip(members, tall, orthogonalize(stack)):
            out[i] = x.mT if t else x
    return out


def adjusted_lr(lr: float, shape: torch.Size, rule: str) -> float:
    """The learning rate of one matrix (the last two dims of `shape`): torch.optim.Muon's rules.
    "match_rms_adamw" (Moonshot's; symmetric in the two dims) gives updates of AdamW's RMS, so
    AdamW's learning rate carries over; "original" is Keller Jordan's sqrt(max(1, rows/cols))."""
    rows, cols = shape[-2], shape[-1]
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    if rule == "original":
        return lr * math.sqrt(max(1, rows / cols))
    raise ValueError(f"unknown Muon learning-rate rule {rule!r}: 'match_rms_adamw' or 'original'")


class MuonAdamW(torch.optim.AdamW):
    """AdamW for the groups without the `muon` flag, Muon for those with it (2-D or 3-D
    parameters). A group's `lr` is the base rate of both; Muon groups adjust it per matrix
    shape (`adjust_lr`). State lives in one `state` dict, so state_dict / load_state_dict and
    learning-rate schedulers work unchanged. `batch_matrices` orthogonalises a group's
    same-shape matrices in one call (`orthogonalize_all`); False is the per-matrix reference."""

    def __init__(self, params, *, momentum: float = 0.95, nesterov: bool = True,
                 adjust_lr: str = "match_rms_adamw", batch_matrices: bool = True, **adamw):
        super().__init__(params, **adamw)
        self.batch_matrices = batch_matrices
        for group in self.param_groups:
            group.setdefault("muon", False)
            if group["muon"]:
                group.setdefault("momentum", momentum)
                group.setdefault("nesterov", nesterov)
                group.setdefault("adjust_lr", adjust_lr)
                adjusted_lr(1.0, torch.Size((1, 1)), group["adjust_lr"])  # a bad rule fails here
                bad = [tuple(p.shape) for p in group["params"] if p.ndim not in (2, 3)]
                if bad:
                    raise ValueError(f"Muon takes 2-D or 3-D (per-expert) weights, got shapes {bad}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        self.param_groups = [g for g in groups if not g["muon"]]
        try:  # AdamW's own (fused) step over its groups only
            if self.param_groups:
                super().step()
        finally:
            self.param_groups = groups
        for group in groups:
            if group["muon"]:
                self._muon_step(group)
        return loss

    def _muon_step(self, group: dict) -> None:
        # torch.optim.Muon's update, per parameter (a 3-D parameter as a batch of matrices)
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        params, updates = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
                # a step count like AdamW's (a tensor: AdamW's load_state_dict checks every state)
                state["step"] = torch.tensor(0.0)
            state["step"] += 1
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mu)
            params.append(p)
            updates.append(p.grad.lerp(buf, mu) if group["nesterov"] else buf)
        updates = (orthogonalize_all(updates) if self.batch_matrices
                   else [orthogonalize(u) for u in updates])
        for p, update in zip(params, updates):
            p.mul_(1 - lr * wd)
            p.add_(update, alpha=-adjusted_lr(lr, p.shape, group["adjust_lr"]))


def muon_names(model: nn.Module, names: list[str], exclude=MUON_EXCLUDE) -> set[str]:
    """Which of the trainable parameter `names` take Muon: 2-D / 3-D weights outside
    nn.Embedding tables and the `exclude` name globs."""
    embedding = {f"{m}.{n}" if m else n for m, mod in model.named_modules()
                 if isinstance(mod, nn.Embedding) for n, _ in mod.named_parameters(recurse=False)}
    params = dict(model.named_parameters())
    return {n for n in names if params[n].ndim in (2, 3) and n not in embedding
            and not any(fnmatch.fnmatchcase(n, g) for g in exclude)}


def _fused() -> dict:
    """AdamW's fused kernel: about 8x faster than the per-tensor loop on CPU (measured here)."""
    return {"fused": True} if "fused" in inspect.signature(torch.optim.AdamW).parameters else {}


def build_optimizer(model: nn.Module, train, lr: float, kind: str | None = None) -> torch.optim.Optimizer:
    """The stage's optimiser over `model`'s trainable parameters (`train`: a TrainConfig; `kind`:
    the stage's choice, None = `train.optimizer`). Weight decay on matrices only; `attn_lr_mult`
    for the backbone's query/key projections; "muon" puts the hidden matrices on Muon
    (`muon_lr` or the stage's rate)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fast = {n for n, _ in named if train.attn_lr_mult != 1.0 and n.startswith("lm.")
            and (".q_proj." in n or ".k_proj." in n)}
    kind = kind or train.optimizer
    muon = muon_names(model, [n for n, _ in named]) if kind == "muon" else set()
    wd, fast_lr = train.weight_decay, lr * train.attn_lr_mult
    # (the group's parameters, its weight decay, its rate); empty groups are dropped
    adamw = [([p for n, p in named if p.ndim >= 2 and n not in fast | muon], wd, lr),
             ([p for n, p in named if p.ndim < 2 and n not in fast | muon], 0.0, lr),
             ([p for n, p in named if n in fast and n not in muon], wd, fast_lr)]
    groups = [{"params": ps, "weight_decay": d, "lr": r} for ps, d, r in adamw if ps]
    if not muon:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(train.betas), **_fused())
    base = train.muon_lr or lr
    for rate, members in ((base, muon - fast), (base * train.attn_lr_mult, muon & fast)):
        ps = [p for n, p in named if n in members]
        if ps:
            groups.append({"params": ps, "weight_decay": wd, "lr": rate, "muon": True})
    return MuonAdamW(groups, lr=lr, betas=tuple(train.betas), momentum=train.muon_momentum,
                     **_fused())


def lr_lambda(warmup: int, total: int, min_ratio: float, kind: str = "cosine",
              decay_frac: float = 0.2):
    """Multiplier of the base learning rate at each step of a stage of `total` steps."""
    if kind not in ("cosine", "wsd"):
        raise ValueError(f"unknown schedule {kind!r}: 'cosine' or 'wsd'")
    decay_start = max(warmup, total - int(round(decay_frac * total)))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "wsd":
            if step < decay_start:
                return 1.0
            progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
            return min_ratio + (1 - min_ratio) * (1 - math.sqrt(progress))
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f
