"""Draw test metrics (POPE, VQA, t2i colour by default) against training samples seen, one line
per run.

    python experiments/plot_binding_curve.py --out docs/figures/binding_curve.png \
        "old recipe=RUN_A/curve.jsonl" "new recipe=RUN_B/curve.jsonl"

Each argument is LABEL=PATH of a curve.jsonl written by experiments/binding_curve.py. A panel per
`--keys` entry (a curve key: pope_accuracy, vqa_accuracy, t2i_color, ...), with the demo's goal
drawn where it has one (issue 24's goals; the colour facet has none of its own: correct-all's
0.70 is drawn, as colour must reach at least that).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PANELS = {"pope_accuracy": ("POPE accuracy", 0.90), "vqa_accuracy": ("VQA accuracy", 0.85),
          "t2i_color": ("t2i colour facet", 0.70), "t2i_correct_all": ("t2i correct-all", 0.70),
          "vqa_accuracy_relation": ("VQA relation questions", 0.70),
          "vqa_accuracy_count": ("VQA count questions", 0.70)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=PATH/curve.jsonl")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="ShapesWorld test accuracy during training (2-core CPU, from scratch)")
    ap.add_argument("--keys", default="pope_accuracy,vqa_accuracy,t2i_color")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = args.keys.split(",")
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.2), sharex=True, squeeze=False)
    axes = axes[0]
    # matplotlib's default cycle repeats after 10 lines; tab20 keeps up to 20 runs apart
    colors = plt.get_cmap("tab20" if len(args.runs) > 10 else "tab10").colors
    for i, spec in enumerate(args.runs):
        label, _, path = spec.partition("=")
        recs = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
        for ax, key in zip(axes, keys):
            pts = [(r["samples_seen"], r[key]) for r in recs if key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label, color=colors[i % len(colors)])
    for ax, key in zip(axes, keys):
        name, goal = PANELS.get(key, (key, None))
        if goal is not None:
            ax.axhline(goal, color="gray", ls="--", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("training samples seen (all tasks)")
        ax.set_ylim(0.0 if key.startswith("t2i") else 0.3, 1.0)
        ax.grid(alpha=0.3)
    fig.suptitle(args.title, fontsize=10)
    if len(args.runs) > 10:  # a legend that long would hide curves: below the panels instead
        fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", fontsize=8,
                   ncol=min(7, len(args.runs)))
        fig.tight_layout(rect=(0, 0.06 * ((len(args.runs) + 6) // 7) + 0.02, 1, 1))
    else:
        axes[0].legend(fontsize=8)
        fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")  # a wide legend below is not cut off
    print(args.out)


if __name__ == "__main__":
    main()
