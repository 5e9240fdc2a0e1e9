"""Draw POPE and VQA test accuracy against training samples seen, one line per run.

    python experiments/plot_binding_curve.py --out docs/figures/binding_curve.png \
        "old recipe=RUN_A/curve.jsonl" "new recipe=RUN_B/curve.jsonl"

Each argument is LABEL=PATH of a curve.jsonl written by experiments/binding_curve.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=PATH/curve.jsonl")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="ShapesWorld test accuracy during training (2-core CPU, from scratch)")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for spec in args.runs:
        label, _, path = spec.partition("=")
        recs = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
        for ax, key in zip(axes, ("pope_accuracy", "vqa_accuracy")):
            pts = [(r["samples_seen"], r[key]) for r in recs if key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label)
    for ax, name, goal in zip(axes, ("POPE accuracy", "VQA accuracy"), (0.90, 0.85)):
        ax.axhline(goal, color="gray", ls="--", lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("training samples seen (all tasks)")
        ax.set_ylim(0.3, 1.0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
