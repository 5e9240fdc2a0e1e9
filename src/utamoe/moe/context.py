"""How task labels (and instruction embeddings) reach the routed layers, and how their losses
come back.

A Hugging Face decoder calls `layer.mlp(hidden_states)` with nothing else, so the
layers cannot receive task labels as arguments without editing HF code. Instead
the caller opens a routing session around the forward (and backward) pass:

    with utamoe.moe.route(model, task_labels=labels, attention_mask=mask) as session:
        out = model(input_ids=ids, attention_mask=mask)
        loss = out.loss + session.aux_loss()
        loss.backward()
    session.losses()   # {"group": ..., "balance": ..., "z": ...}, each a mean over its layers
    session.stats()    # routing counts and accuracies, summed over layers

`route` binds the session to every *routed module* inside `model` for the
duration of the block and unbinds it afterwards (nested sessions restore the
outer one). A routed module is any module that subclasses `RoutedModule` (the
TA-MoE layers, MoLE's adapter routers; vision routers join the same way): it
reads `self.session` (None outside a session) and reports through
`session.record(name, losses, make_stats, coefs)`, with losses and their
coefficients as dicts keyed by loss name, so a new router adds its own terms
(e.g. a balance loss over vision encoders) to the same `aux_loss()` and its own
statistics to `layer_stats()`. `aux_loss()` averages each loss name over the
modules that reported it, then sums the names: modules with different loss sets
(TA-MoE's group/balance/z, MoLE's mole_balance) do not dilute each other.

Labels are group indices: (B,) per sequence or (B, S) per token, -1 for padding
or "no label". `instances` (B, De) are per-sequence instruction embeddings (a
sentence encoder's, computed by the caller) for instance-level routers such as
MoLE's. In a packed batch (utamoe.data.packing: several samples per row) `instances` is
(N, De), one per *sample*, and `sample_ids` (B, S) names each token's sample (-1 for
padding): `instance_index` maps tokens to their sample's embedding. Outside a session the modules route on their inputs alone (inference
needs no label) and record nothing; instance routers need a session.
Nothing is global: the session object is created, owned and read by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


class RoutedModule(nn.Module):
    """Base of every module that joins routing sessions (see the module docstring).

    `route()` sets `session` and `session_name` for the duration of a block."""

    session: RoutingSession | None = None
    session_name: str = ""


@dataclass
class LayerRecord:
    name: str
    losses: dict[str, torch.Tensor]  # loss name -> value (with autograd graph)
    make_stats: Callable[[], dict]  # statistics are computed only when someone reads them
    coefs: dict[str, float]  # loss name -> coefficient in aux_loss()
    _stats: dict | None = None

    @property
    def stats(self) -> dict:
        if self._stats is None:
            self._stats = self.make_stats()
        return self._stats


def _in_backward() -> bool:
    # Activation checkpointing re-runs forwards inside backward; recording them again would
    # count every layer twice.
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


class RoutingSession:
    """Task labels and instruction embeddings for the layers, and the records they write back."""

    def __init__(self, task_labels=None, attention_mask=None, trace: bool = False,
                 instances: torch.Tensor | None = None, sample_ids: torch.Tensor | None = None):
        self.task_labels = task_labels
        self.attention_mask = attention_mask
        # (B, De): one instruction embedding per sequence, for instance-level routers (MoLE);
        # (N, De), one per sample, with `sample_ids` (B, S) when rows are packed.
        self.instances = instances
        self.sample_ids = sample_ids
        self.records: list[LayerRecord] = []
        self._real: dict = {}
        # With `trace`, routed modules also append per-token decisions here (detached):
        # (module name, group id per token (T,), expert ids per token (T, K)); the web page's
        # experts view shows them token by token.
        self.trace = trace
        self.traces: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def real_tokens(self, valid_T: torch.Tensor) -> torch.Tensor | None:
        """Flat indices of the real (attention_mask 1) tokens when some are padding, else None.

        Computed once per session and shape, not once per layer: finding them costs a host
        sync on accelerators."""
        if self.attention_mask is None:
            return None
        key = (tuple(valid_T.shape), valid_T.device)
        if key not in self._real:
            keep = valid_T.nonzero().squeeze(1)
            self._real[key] = keep if 0 < keep.numel() < valid_T.numel() else None
        return self._real[key]

    def token_view(self, hidden_shape: torch.Size, device) -> tuple:
        """(labels_T or None, valid_T) matching a layer input of shape (B, S, D) or (T, D)."""
        lead = tuple(hidden_shape[:-1])
        labels = self._expand(self.task_labels, lead, "task_labels", device)
        if self.attention_mask is not None:
            valid = self._expand(self.attention_mask, lead, "attention_mask", device).bool()
        elif labels is not None:
            valid = labels >= 0
        else:
            valid = None
        if labels is not None:
            labels = labels.reshape(-1).long()
        return labels, None if valid is None else valid.reshape(-1)

    def instance_index(self, lead: tuple, device) -> torch.Tensor | None:
        """(T,) index into `instances` of each token of a (B, S) input when rows are packed;
        None when there is one instance per row. Padding (-1) borrows sample 0: routers
        neither compute nor count it (`real_tokens`, `token_view`)."""
        if self.sample_ids is None:
            return None
        ids = torch.as_tensor(self.sample_ids, device=device)
        if tuple(ids.shape) != tuple(lead):
            raise ValueError(
                f"sample_ids has shape {tuple(ids.shape)} but the layer sees tokens of shape "
                f"{tuple(lead)}; packed rows (utamoe.data.packing) route whole forwards only, "
                f"not KV-cache steps: generate from unpacked batches")
        return ids.reshape(-1).clamp(min=0)

    @staticmethod
    def _expand(t, lead: tuple, what: str, device):
        if t is None:
            return None
        t = torch.as_tensor(t, device=device)
        if tuple(t.shape) == lead:
            return t
        if t.dim() == 1 and len(lead) == 2 and t.shape[0] == lead[0]:  # one label per sequence
            return t[:, None].expand(lead)
        raise ValueError(
            f"{what} has shape {tuple(t.shape)} but the MoE layer sees tokens of shape {lead}; "
            f"pass one value per sequence (B,) or per token (B, S) matching the forward's input "
            f"(with a KV cache, give the labels of the new tokens only, or per-sequence labels)"
        )

    def record(self, name: str, losses: dict[str, torch.Tensor], make_stats: Callable[[], dict],
               coefs: dict[str, float]) -> None:
        """A routed module's losses (by name), lazy statistics and loss coefficients."""
        if not _in_backward():
            self.records.append(LayerRecord(name, dict(losses), make_stats, dict(coefs)))

    def losses(self) -> dict[str, torch.Tensor]:
        """Each router loss averaged over the modules that reported it (keeps the graph)."""
        out: dict[str, list[torch.Tensor]] = {}
        for r in self.records:
            for key, value in r.losses.items():
                out.setdefault(key, []).append(value)
        return {key: sum(values) / len(values) for key, values in out.items()}

    def aux_loss(self) -> torch.Tensor:
        """Sum over loss names of (coefficient * loss), averaged over the modules that reported
        that name, each with its own coefficient. Averaging per name, not over all records, keeps
        one router's losses from being diluted by modules that report other names."""
        if not self.records:
            return torch.zeros(())
        weighted: dict[str, list[torch.Tensor]] = {}
        for r in self.records:
            for key, value in r.losses.items():
                weighted.setdefault(key, []).append(r.coefs.get(key, 0.0) * value)
        return sum((sum(terms) / len(terms) for terms in weighted.values()), torch.zeros(()))

    def stats(self) -> dict:
        """Routing statistics summed over layers, plus derived ratios (detached)."""
        return summarize_stats([r.stats for r in self.records])

    def layer_stats(self) -> dict[str, dict]:
        """Per-layer statistics, keyed by module name (for routing heatmaps)."""
        return {r.name: summarize_stats([r.stats]) for r in self.records}


def summarize_stats(per_layer: list[dict]) -> dict:
    out: dict = {}
    # Keys from every layer, in first-seen order: routers of different kinds report different ones.
    for key in dict.fromkeys(k for s in per_layer for k in s):
        vals = [s[key] for s in per_layer if key in s]
        if key.endswith("entropy"):
            out[key] = float(torch.stack([v.float() for v in vals]).mean())
        else:
            out[key] = sum(v.cpu() for v in vals)
    if "group_labelled" in out and int(out["group_labelled"]) > 0:
        out["group_accuracy"] = float(out["group_correct"]) / float(out["group_labelled"])
    return out


@contextmanager
def route(model: nn.Module, task_labels=None, attention_mask=None, trace: bool = False,
          instances: torch.Tensor | None = None,
          sample_ids: torch.Tensor | None = None) -> Iterator[RoutingSession]:
    """Bind task labels (and `instances`, (B, De) instruction embeddings; (N, De) with
    `sample_ids` (B, S) for packed rows) to every routed module in `model`; yield the session
    that collects losses (and, with `trace`, every token's routing decision)."""
    session = RoutingSession(task_labels, attention_mask, trace, instances, sample_ids)
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, RoutedModule)]
    layers = [m for _, m in named]
    previous = [(layer.session, layer.session_name) for layer in layers]
    for name, layer in named:
        layer.session, layer.session_name = session, name or "moe"
    try:
        yield session
    finally:
        for layer, (prev, prev_name) in zip(layers, previous):
            layer.session, layer.session_name = prev, prev_name
