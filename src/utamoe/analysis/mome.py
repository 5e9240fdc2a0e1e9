"""MoME's routing, per task: the MoVE router's weight on each vision encoder, and each MoLE
adapter's share of the tokens per layer (the paper's Figures 5-6, as tables and heatmaps).

    mome_routing(model, batches_by_task) -> MoMERouting | None   (None: no MoVE router, no MoLE)
    write_mome_outputs(result, out_dir)  -> mome.json, mome_encoders.png, mome_adapters.png
    mome_markdown(result)                -> lines for the analysis report

Statistics come from the modules themselves through the routing session (the mixture records
`move_weight` / `move_images`, each MoLE layer `mole_tokens`), one forward per batch, no grad.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from utamoe.moe.mole import mole_layers


@dataclass
class MoMERouting:
    tasks: list[str] = field(default_factory=list)
    encoders: list[str] = field(default_factory=list)  # MoVE encoder names ([] without a router)
    encoder_weights: dict[str, list[float]] = field(default_factory=dict)  # task -> mean weight per encoder
    mole_layers: list[str] = field(default_factory=list)
    mole_experts: int = 0
    mole_shares: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # layer -> task -> share

    def to_dict(self) -> dict:
        return asdict(self)


def _has_mome(model) -> bool:
    return getattr(model.und_encoder, "router", None) is not None or bool(mole_layers(model))


def mome_routing(model, batches_by_task: Mapping[str, Sequence],
                 progress: Callable[[int], None] | None = None) -> MoMERouting | None:
    """Forward each task's batches and average the MoME routers' decisions per task."""
    if not _has_mome(model):
        return None
    out = MoMERouting(tasks=list(batches_by_task))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    weights: dict[str, list] = {}
    counts: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with torch.no_grad():
            for task, batches in batches_by_task.items():
                for batch in batches:
                    session = model(batch.to(device)).session
                    for name, stats in session.layer_stats().items():
                        if "move_weight" in stats:
                            w = weights.setdefault(task, [0, 0])
                            w[0] = w[0] + stats["move_weight"]
                            w[1] += int(stats["move_images"])
                        if "mole_tokens" in stats:
                            per = counts.setdefault(name.removeprefix("lm."), {})
                            per[task] = per.get(task, 0) + stats["mole_tokens"].float()
                    if progress is not None:
                        progress(1)
    finally:
        model.train(was_training)
    if weights:
        out.encoders = list(model.und_encoder.names)
        out.encoder_weights = {t: (w / max(n, 1)).tolist() for t, (w, n) in weights.items()}
    out.mole_layers = list(counts)
    for layer, per in counts.items():
        out.mole_shares[layer] = {t: (c / c.sum().clamp(min=1)).tolist() for t, c in per.items()}
        out.mole_experts = len(next(iter(per.values())))
    return out


def mome_markdown(r: MoMERouting) -> list[str]:
    lines = ["## MoME routing", ""]
    if r.encoders:
        lines += ["MoVE router: mean weight (%) on each vision encoder, per task:", "",
                  "| task | " + " | ".join(r.encoders) + " |", "|---" * (len(r.encoders) + 1) + "|"]
        lines += [f"| {t} | " + " | ".join(f"{100 * x:.1f}" for x in w) + " |"
                  for t, w in r.encoder_weights.items()]
        lines += ["", "![encoder weights](mome_encoders.png)", ""]
    if r.mole_layers:
        lines += ["MoLE: share (%) of each task's tokens that each adapter serves, per layer:", ""]
        head = ["layer", "task"] + [f"A{e}" for e in range(r.mole_experts)]
        lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for layer in r.mole_layers:
            for t, share in r.mole_shares[layer].items():
                lines.append(f"| {layer} | {t} | " + " | ".join(f"{100 * x:.1f}" for x in share) + " |")
        lines += ["", "![adapter shares](mome_adapters.png)", ""]
    return lines


def write_mome_outputs(r: MoMERouting, out_dir: str | Path, meta: dict | None = None) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    paths = {"mome": out / "mome.json"}
    paths["mome"].write_text(json.dumps({**r.to_dict(), **(meta or {})}, indent=1) + "\n")
    if r.encoders:
        tasks = list(r.encoder_weights)
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(r.encoders), 0.8 + 0.45 * len(tasks)))
        _heatmap(ax, [r.encoder_weights[t] for t in tasks], tasks, r.encoders, "router weight")
        ax.set_title("MoVE: router weight per encoder", fontsize=9)
        paths["mome_encoders_png"] = _save(fig, out / "mome_encoders.png")
    if r.mole_layers:
        n = len(r.mole_layers)
        fig, axes = plt.subplots(1, n, figsize=(0.5 + 2.2 * n, 0.9 + 0.45 * len(r.tasks)), squeeze=False)
        for ax, layer in zip(axes[0], r.mole_layers):
            tasks = list(r.mole_shares[layer])
            _heatmap(ax, [r.mole_shares[layer][t] for t in tasks], tasks,
                     [f"A{e}" for e in range(r.mole_experts)], None, label_rows=ax is axes[0][0])
            ax.set_title(layer, fontsize=8)
        fig.suptitle("MoLE: share of each task's tokens per adapter", fontsize=9)
        paths["mome_adapters_png"] = _save(fig, out / "mome_adapters.png")
    return paths


def _heatmap(ax, rows: list[list[float]], row_names: list[str], col_names: list[str],
             label: str | None, label_rows: bool = True) -> None:
    im = ax.imshow(rows, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(col_names)), col_names, fontsize=7)
    ax.set_yticks(range(len(row_names)), row_names if label_rows else [""] * len(row_names), fontsize=7)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if v < 0.6 else "black")
    if label:
        ax.figure.colorbar(im, ax=ax, fraction=0.05).set_label(label, fontsize=7)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
