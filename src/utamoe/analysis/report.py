"""Writers for an analysis (`utamoe.analysis.run.AnalysisResult`): files, figures, console.

    write_analysis_outputs(result, out_dir) writes
        conflict.json   every cosine and gradient norm (groups, pieces, overall, shared)
        routing.json    per layer x task (and x task group): expert/group shares, accuracy, entropies
        analysis.md     the tables, negative cosines marked, the command to reproduce
        conflict.png    layers x module kinds heatmap (diverging, centred at 0; one-sided hatched)
        routing.png     per layer: tasks x experts share, group boundaries marked
    print_analysis_summary(result, paths)  a rich table on the console

Figures use matplotlib's object API (Figure + Agg canvas), never pyplot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from utamoe.analysis.conflict import ConflictResult, GroupConflict
from utamoe.analysis.mome import mome_markdown, write_mome_outputs
from utamoe.analysis.routing import RoutingAnalysis, max_entropies
from utamoe.analysis.run import AnalysisResult


def write_analysis_outputs(result: AnalysisResult, out_dir: str | Path,
                           command: str | None = None) -> dict[str, Path]:
    """Write the five files (routing.png only for MoE models); returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"conflict": out / "conflict.json", "routing": out / "routing.json",
             "report": out / "analysis.md", "conflict_png": out / "conflict.png"}
    meta = {"settings": result.settings, "counts": result.counts,
            "seconds": round(result.seconds, 3), "notes": result.notes, "command": command}
    paths["conflict"].write_text(json.dumps({**result.conflict.to_dict(), **meta}, indent=1)
                                 + "\n", encoding="utf-8")
    paths["routing"].write_text(json.dumps({**result.routing.to_dict(), **meta}, indent=1)
                                + "\n", encoding="utf-8")
    plot_conflict(result.conflict, paths["conflict_png"])
    if plot_routing(result.routing, out / "routing.png"):
        paths["routing_png"] = out / "routing.png"
    if result.mome is not None:
        paths.update(write_mome_outputs(result.mome, out, meta))
    paths["report"].write_text(markdown_report(result, command, "routing_png" in paths),
                               encoding="utf-8")
    return paths


def _cos(g: GroupConflict | None, names: tuple[str, str], mark: bool = True) -> str:
    if g is None:
        return ""
    c = g.cosine
    if c is None:
        return {"a_only": f"{names[0]} only", "b_only": f"{names[1]} only",
                "none": "no grad"}[g.status]
    return f"**{c:+.3f}** ⚠" if mark and c < 0 else f"{c:+.3f}"


def conflict_markdown(c: ConflictResult) -> list[str]:
    n = c.names
    layers, kinds, cells = c.grid()
    lines = ["## Gradient conflict", "",
             f"Cosine between the {n[0]}-loss gradient and the {n[1]}-loss gradient, from "
             f"{c.n_batches} batch pair(s) (mean losses: "
             + ", ".join(f"{k} {v:.4f}" for k, v in c.losses.items()) + "). "
             "**Bold ⚠** = negative: the two tasks pull these weights in opposite directions. "
             f"'{n[0]} only' / '{n[1]} only': only one task's loss reaches the parameters "
             "(decoupled; no cosine).", "",
             f"- whole model (all trainable parameters): {_cos(c.overall, n)}",
             f"- shared parameters only (reached by both losses): {_cos(c.shared, n)} "
             f"({c.shared.numel:,} of {c.overall.numel:,} parameters)", ""]
    if layers:
        lines += ["| layer | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        for layer in layers:
            lines.append(f"| {layer} | " + " | ".join(_cos(cells.get((layer, k)), n)
                                                      for k in kinds) + " |")
        lines.append("")
    lines += [f"| part | cosine | \\|g_{n[0]}\\| | \\|g_{n[1]}\\| | parameters |",
              "|---|---|---|---|---|"]
    for key, g in c.parts().items():
        lines.append(f"| {key} | {_cos(g, n)} | {g.norm_a:.3g} | {g.norm_b:.3g} | {g.numel:,} |")
    return lines + [""]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def routing_markdown(r: RoutingAnalysis) -> list[str]:
    lines = ["## Routing", ""]
    if r.dense:
        return lines + [f"{note}." for note in r.notes] + [""]
    hg, he = max_entropies(r)
    lines += [f"{r.routing} routing ({r.group_routing} groups), {r.num_experts} experts in "
              f"{len(r.expert_groups)} group(s) ({', '.join(r.expert_groups)}), top-{r.top_k}. "
              f"Shares in %. Expert shares are shares of routing *assignments*: each token makes "
              f"{r.top_k}, so a row sums to 100 and an expert every token picks has "
              f"{100 / r.top_k:.0f}. Entropies in nats (uniform: group {hg:.3f}, expert "
              f"{he:.3f}).", ""]
    for note in r.notes:
        lines.append(f"Note: {note}.")
    if r.routing == "task_aware":
        lines += ["", "Group-router accuracy (%) against the task's group, per layer:", "",
                  "| layer | " + " | ".join(r.tasks) + " |", "|---" * (len(r.tasks) + 1) + "|"]
        for layer in r.layers:
            lines.append(f"| {layer} | " + " | ".join(_pct(r.cells[layer][t].accuracy)
                                                      for t in r.tasks) + " |")
    show_experts = r.num_experts <= 16
    for layer in r.layers:
        head = ["task", "tokens"] + [f"→{g}" for g in r.expert_groups if r.routing == "task_aware"]
        head += ["acc", "H(group)", "H(expert)"]
        head += [f"e{e}" for e in range(r.num_experts)] if show_experts else ["top experts"]
        lines += ["", f"### {layer}", "", "| " + " | ".join(head) + " |",
                  "|---" * len(head) + "|"]
        rows = [(t, r.cells[layer][t]) for t in r.tasks]
        rows += [(f"*{g} (all)*", c) for g, c in r.groups[layer].items()]
        for name, cell in rows:
            vals = [name, str(cell.tokens)]
            if r.routing == "task_aware":
                vals += [_pct(x) for x in cell.group_share]
            vals += [_pct(cell.accuracy), _num(cell.group_entropy), _num(cell.expert_entropy)]
            share = cell.expert_share
            if show_experts:
                vals += [_pct(x) for x in share]
            else:
                top = sorted(range(len(share)), key=lambda e: -share[e])[:3]
                vals.append(", ".join(f"e{e} {_pct(share[e])}" for e in top))
            lines.append("| " + " | ".join(vals) + " |")
    return lines + [""]


def markdown_report(result: AnalysisResult, command: str | None = None,
                    routing_png: bool = True) -> str:
    s = result.settings
    lines = ["# utamoe analyze", "",
             f"Model `{s.get('model', 'in memory')}`, data `{s.get('data', 'in memory')}` "
             f"split `{s.get('split', '-')}`; {s['conflict_pairs']} conflict batch pair(s) and up "
             f"to {s['batches']} routing batch(es) per task of {s['batch_size']} samples, seed "
             f"{s['seed']}; {result.seconds:.1f} s.", "",
             "Samples per task: " + ", ".join(f"{t} {n}" for t, n in result.counts.items()), ""]
    lines += [f"Note: {n}" for n in result.notes] + ([""] if result.notes else [])
    lines += conflict_markdown(result.conflict) + ["![gradient conflict](conflict.png)", ""]
    lines += routing_markdown(result.routing)
    if routing_png:
        lines += ["![routing](routing.png)", ""]
    if result.mome is not None:
        lines += mome_markdown(result.mome)
    if command:
        lines += ["## Reproduce", "", "```", command, "```", ""]
    lines += ["How to read these numbers: docs/analysis.md.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- figures


def _figure(width: float, height: float, layout: str | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _conflict_panel(ax, rows: list[str], cols: list[str], cell, names, norm, cmap) -> Any:
    """Heatmap of cosines; `cell(i, j)` -> GroupConflict | None. One-sided cells hatched grey."""
    from matplotlib.patches import Rectangle

    values = np.full((len(rows), len(cols)), np.nan)
    for i in range(len(rows)):
        for j in range(len(cols)):
            g = cell(i, j)
            if g is not None and g.cosine is not None:
                values[i, j] = g.cosine
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            g = cell(i, j)
            if g is None:
                continue
            if g.cosine is None:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.85",
                                       edgecolor="0.45", hatch="///", linewidth=0))
                label = {"a_only": f"{names[0]}\nonly", "b_only": f"{names[1]}\nonly"}.get(
                    g.status, "no\ngrad")
                ax.text(j, i, label, ha="center", va="center", fontsize=7, color="0.2",
                        bbox={"facecolor": "0.85", "edgecolor": "none", "pad": 0.5})
            else:
                if g.cosine < 0:  # outline conflicts so that small negatives still stand out
                    ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False,
                                           edgecolor="#b2182b", linewidth=1.5))
                strong = abs(g.cosine) > 0.6 * norm.vmax
                ax.text(j, i, f"{g.cosine:+.2f}", ha="center", va="center", fontsize=8,
                        color="white" if strong else "black",
                        fontweight="bold" if g.cosine < 0 else "normal")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xticks(np.arange(-0.5, len(cols)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(rows)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    return image


def plot_conflict(c: ConflictResult, path: str | Path) -> None:
    """Layers x module kinds (left) and the parts outside the layers (right)."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Patch

    layers, kinds, cells = c.grid()
    parts = list(c.parts().items())
    cosines = [g.cosine for g in c.groups.values() if g.cosine is not None]
    vmax = min(1.0, max([0.05] + [abs(x) for x in cosines]))
    vmax = math.ceil(vmax * 20) / 20  # a round limit: 0.05 steps
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
    height = max(3.2, 0.42 * max(len(layers), len(parts)) + 2.0)
    fig = _figure(1.0 * len(kinds) + 4.4 if layers else 4.4, height, layout="constrained")
    grid = fig.add_gridspec(max(len(layers), len(parts), 1), 2,
                            width_ratios=[max(len(kinds), 1), 1.0] if layers else [1, 1])
    image, axes = None, []
    if layers:
        ax = fig.add_subplot(grid[:, 0])
        image = _conflict_panel(ax, [str(x) for x in layers], kinds,
                                lambda i, j: cells.get((layers[i], kinds[j])), c.names, norm,
                                "RdBu")
        ax.set_ylabel("decoder layer")
        ax.set_title("per layer and module", fontsize=9)
        axes.append(ax)
    if parts:
        # one grid row per cell: with fewer parts than layers, part cells match the layer rows
        ax = fig.add_subplot(grid[:len(parts), 1] if layers else grid[:, :])
        img2 = _conflict_panel(ax, [k for k, _ in parts], ["cosine"],
                               lambda i, j: parts[i][1], c.names, norm, "RdBu")
        ax.set_title("outside the layers", fontsize=9)
        image = image or img2
        axes.append(ax)
    cbar = fig.colorbar(image, ax=axes, shrink=0.9, aspect=25)
    cbar.set_label(f"cos(g_{c.names[0]}, g_{c.names[1]})", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    n = c.names
    fig.legend(handles=[Patch(facecolor="0.85", edgecolor="0.45", hatch="///",
                              label="one-sided: only one task's gradient reaches it"),
                        Patch(facecolor="#b2182b", label="< 0: conflict"),
                        Patch(facecolor="#2166ac", label="> 0: agreement")],
               loc="outside lower center", ncol=3, fontsize=7.5, frameon=False)
    overall = "-" if c.overall.cosine is None else f"{c.overall.cosine:+.3f}"
    shared = "-" if c.shared.cosine is None else f"{c.shared.cosine:+.3f}"
    fig.suptitle(f"Gradient conflict: cosine of {n[0]}-loss and {n[1]}-loss gradients "
                 f"({c.n_batches} batch pair(s))\nwhole model {overall}, shared parameters "
                 f"{shared}", fontsize=10)
    fig.savefig(path, bbox_inches="tight")


def plot_routing(r: RoutingAnalysis, path: str | Path) -> bool:
    """One panel per layer: tasks x experts share of assignments. False for a dense model."""
    if r.dense or not r.layers:
        return False
    n, cols = len(r.layers), min(len(r.layers), 2 if r.num_experts > 8 else 3)
    rows = -(-n // cols)
    cell_w = 0.45 if r.num_experts <= 16 else 0.12
    fig = _figure(cols * (cell_w * r.num_experts + 1.6) + 2.4,
                  rows * (0.36 * len(r.tasks) + 1.3) + 0.9, layout="constrained")
    shares = 100 * np.array([[r.cells[layer][t].expert_share for t in r.tasks]
                             for layer in r.layers])
    vmax = max(float(shares.max()), 1e-9)
    annotate = r.num_experts <= 16 and len(r.tasks) <= 8
    eg, axes, image = r.experts_per_group, [], None
    for k, layer in enumerate(r.layers):
        ax = fig.add_subplot(rows, cols, k + 1)
        axes.append(ax)
        image = ax.imshow(shares[k], cmap="Blues", vmin=0, vmax=vmax, aspect="auto")
        for g in range(1, len(r.expert_groups)):
            ax.axvline(g * eg - 0.5, color="black", linewidth=2)
        for i in range(1, len(r.tasks)):
            if r.task_groups[r.tasks[i]] != r.task_groups[r.tasks[i - 1]]:
                ax.axhline(i - 0.5, color="black", linewidth=1, linestyle="--")
        if annotate:
            for i in range(len(r.tasks)):
                for e in range(r.num_experts):
                    v = shares[k, i, e]
                    ax.text(e, i, f"{v:.0f}", ha="center", va="center", fontsize=6.5,
                            color="white" if v > 0.6 * vmax else "black")
        ax.set_yticks(range(len(r.tasks)),
                      [f"{t} ({r.task_groups[t]})" if k % cols == 0 else "" for t in r.tasks],
                      fontsize=7)
        if r.routing == "task_aware":
            right = ax.secondary_yaxis("right")
            right.set_yticks(range(len(r.tasks)), [
                f"acc {_pct(r.cells[layer][t].accuracy)}" for t in r.tasks], fontsize=6.5)
            right.tick_params(length=0)
        step = 1 if r.num_experts <= 16 else max(1, r.num_experts // 8)
        ax.set_xticks(range(0, r.num_experts, step),
                      [str(e) for e in range(0, r.num_experts, step)], fontsize=7)
        ax.set_xlabel("expert", fontsize=7)
        if len(r.expert_groups) > 1:
            top = ax.secondary_xaxis("top")
            top.set_xticks([g * eg + (eg - 1) / 2 for g in range(len(r.expert_groups))],
                           [f"{name} experts" for name in r.expert_groups], fontsize=7.5)
            top.tick_params(length=0)
        ax.set_title(layer, fontsize=9)
    cbar = fig.colorbar(image, ax=axes, shrink=0.8, aspect=30)
    cbar.set_label("% of the task's routing assignments", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    fig.suptitle(f"Routing per layer: % of each task's top-{r.top_k} assignments per expert "
                 f"({r.routing}, {r.group_routing} groups)"
                 + ("\nacc = group-router accuracy against the task's group"
                    if r.routing == "task_aware" else ""), fontsize=9.5)
    fig.savefig(path, bbox_inches="tight")
    return True


# ---------------------------------------------------------------- console


def print_analysis_summary(result: AnalysisResult, paths: dict[str, Path] | None = None,
                           console=None) -> None:
    """Rich tables: conflict per layer x module (negative in red), routing accuracy per layer."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    c = result.conflict
    layers, kinds, cells = c.grid()

    def fmt(g: GroupConflict | None) -> str:
        text = _cos(g, c.names, mark=False)
        return f"[red]{text}[/]" if g is not None and (g.cosine or 0) < 0 else text

    short = {"attention": "attn", "experts": "exp"}
    table = Table(title=f"gradient conflict: cos(g_{c.names[0]}, g_{c.names[1]}), "
                        f"{c.n_batches} batch pair(s); red = conflict")
    table.add_column("layer")
    for k in kinds:
        head, _, tail = k.partition(":")
        table.add_column(short.get(head, head) + (":" + tail if tail else ""), justify="right")
    for layer in layers:
        table.add_row(str(layer), *(fmt(cells.get((layer, k))) for k in kinds))
    console.print(table)
    console.print("outside the layers: " + ", ".join(f"{k} {fmt(g)}" for k, g in c.parts().items()))
    console.print(f"whole model {fmt(c.overall)}; shared parameters {fmt(c.shared)}")
    r = result.routing
    if r.dense:
        console.print(f"routing: {r.notes[0]}")
    elif r.routing == "task_aware":
        rt = Table(title=f"group-router accuracy % per layer ({r.group_routing} groups)")
        rt.add_column("layer")
        for t in r.tasks:
            rt.add_column(t, justify="right")
        for i, layer in enumerate(r.layers):
            rt.add_row(str(i), *(_pct(r.cells[layer][t].accuracy) for t in r.tasks))
        console.print(rt)
    else:
        console.print("routing: plain top-k (no groups); expert shares in routing.json / "
                      "analysis.md")
    m = result.mome
    if m is not None and m.encoders:
        mt = Table(title="MoVE router weight % per encoder")
        mt.add_column("task")
        for name in m.encoders:
            mt.add_column(name, justify="right")
        for t, w in m.encoder_weights.items():
            mt.add_row(t, *(f"{100 * x:.1f}" for x in w))
        console.print(mt)
    if m is not None and m.mole_layers:
        console.print(f"MoLE: {m.mole_experts} adapters in {len(m.mole_layers)} layers; shares "
                      "per layer and task in mome.json / analysis.md")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"{result.seconds:.1f} s")
    for name, p in (paths or {}).items():
        console.print(f"{name}: {p}")
