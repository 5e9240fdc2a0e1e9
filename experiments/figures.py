"""The task-conflict experiment as a picture: OUT/summary.png.

One panel per headline metric and split, one bar per arm (mean over seeds) with the
sample std as an error bar and every seed as a dot, so a reader sees at a glance which
differences are larger than the spread. Drawn from summary.json's `metrics` only, so it
can be redrawn from a finished summary without the runs. See experiments/README.md.
"""

from __future__ import annotations

from pathlib import Path

HEADLINE = ("vqa_accuracy", "pope_f1", "caption_f1", "grounding_acc50", "t2i_correct_all",
            "edit_psnr")


def plot_summary(summary: dict, path: Path) -> Path | None:
    """Write the bar chart; None (nothing written) when no run has finished yet."""
    metrics = summary.get("metrics") or {}
    splits = [s for s in metrics if metrics[s]]
    if not splits:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(splits), len(HEADLINE), squeeze=False,
                             figsize=(3.2 * len(HEADLINE), 3.4 * len(splits)))
    for row, split in zip(axes, splits):
        arms = list(metrics[split])
        for ax, metric in zip(row, HEADLINE):
            have = [a for a in arms if metric in metrics[split][a]]
            stats = [metrics[split][a][metric] for a in have]
            xs = range(len(have))
            ax.bar(xs, [s["mean"] for s in stats], yerr=[s["std"] or 0 for s in stats],
                   color="#9ecae1", edgecolor="#3182bd", capsize=3)
            for x, s in zip(xs, stats):
                ax.plot([x] * len(s["values"]), s["values"], "k.", markersize=4)
            ax.set_xticks(list(xs), have, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{metric} ({split})", fontsize=9)
            ax.tick_params(axis="y", labelsize=7)
            if not have:
                ax.set_axis_off()
    exp = summary.get("experiment") or {}
    fig.suptitle(f"Task-conflict experiment, scale {exp.get('scale')}: mean ± std over seeds "
                 "(dots: seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
