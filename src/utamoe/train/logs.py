"""Training logs: metrics per step as JSONL (and to the reporters of `train.report_to`,
utamoe.train.reporters), routing-collapse warnings, and the loss-curve PNG written at the end of
a run."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path


def step_metrics(out, stage: str, step: int, global_step: int, lr: float, tokens: int,
                 seconds: float, group_names=("und", "gen")) -> dict:
    """A flat, JSON-ready record of one logged step."""
    rec = {"stage": stage, "step": step, "global_step": global_step, "loss": out.loss.item(),
           "lr": lr, "tokens_per_s": tokens / max(seconds, 1e-9)}
    rec.update({f"loss_{g}": v.item() for g, v in out.group_losses.items()})
    rec.update({f"task_loss_{t}": v for t, v in out.task_losses.items()})
    rec.update({f"moe_{k}_loss": v.item() for k, v in out.moe_losses.items()})
    stats = out.moe_stats
    if "group_accuracy" in stats:
        rec["group_router_accuracy"] = stats["group_accuracy"]
    rec.update({f"expert_load_{g}": load for g, load in expert_loads(stats, group_names).items()})
    return rec


def expert_loads(stats: dict, group_names=("und", "gen")) -> dict[str, list[float]]:
    """Per group: the share of the group's tokens that each of its experts served (groups in
    the MoE config's `group_names` order, which is the order of the layers' statistics)."""
    if "expert_tokens" not in stats or "group_tokens" not in stats:
        return {}
    tokens = stats["expert_tokens"].float()
    groups = stats["group_tokens"].float()
    per_group = tokens.view(len(groups), -1)
    names = group_names if len(groups) == len(group_names) else [f"g{i}" for i in range(len(groups))]
    return {name: [round(float(x), 4) for x in (row / max(float(n), 1.0))]
            for name, row, n in zip(names, per_group, groups)}


class CollapseWatch:
    """Warns when one expert serves more than `share` of its group's tokens, `patience` logs running."""

    def __init__(self, share: float, patience: int):
        self.share, self.patience, self.streak, self.warned = share, patience, 0, False

    def update(self, rec: dict) -> str | None:
        loads = [v for k, v in rec.items() if k.startswith("expert_load_")]
        collapsed = any(len(row) > 1 and max(row) > self.share for row in loads)
        self.streak = self.streak + 1 if collapsed else 0
        if self.streak >= self.patience and not self.warned:
            self.warned = True
            msg = (f"routing collapse: one expert has served > {self.share:.0%} of its group's "
                   f"tokens for {self.streak} logged steps (step {rec['global_step']}); consider a "
                   f"larger balance_loss_coef or a lower learning rate")
            warnings.warn(msg, stacklevel=2)
            return msg
        return None


class MetricsLog:
    """RUN/metrics.jsonl, and every record to `reporters` (TensorBoard, wandb) as well."""

    def __init__(self, run_dir: Path, enabled: bool = True, reporters=()):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.reporters = list(reporters) if enabled else []

    def write(self, rec: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        for reporter in self.reporters:
            reporter.log(rec, rec["global_step"])

    def alert(self, message: str, global_step: int) -> None:
        """A warning worth seeing beside the curves (a routing collapse)."""
        for reporter in self.reporters:
            reporter.alert(message, global_step)

    def truncate_after(self, global_step: int) -> None:
        """On resume, drop records the interrupted run logged after its last checkpoint."""
        if not (self.enabled and self.path.is_file()):
            return
        keep = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # the torn last line of a killed run
                continue
            if isinstance(rec, dict) and rec.get("global_step", 0) <= global_step:
                keep.append(line)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()


def plot_losses(metrics_path: Path, out_png: Path) -> None:
    """Loss curves (total and per group) over global steps, stages marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not recs:
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = [r["global_step"] for r in recs]
    for key, label in (("loss", "total"), ("loss_und", "understanding"), ("loss_gen", "generation")):
        ys = [r.get(key) for r in recs]
        if any(y is not None for y in ys):
            ax.plot(x, [y if y is not None else float("nan") for y in ys], label=label)
    for prev, cur in zip(recs, recs[1:]):
        if cur["stage"] != prev["stage"]:
            ax.axvline(cur["global_step"], color="grey", ls=":", lw=1)
            ax.text(cur["global_step"], ax.get_ylim()[1], cur["stage"], fontsize=8, va="top")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


