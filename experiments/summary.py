"""Aggregation of the task-conflict experiment: OUT/summary.json, summary.md and summary.png.

Reads the finished runs under OUT/runs/ARM/seed-S (metrics-<split>.json, train_done.json,
metrics.jsonl, model_info.json) and reports, per split, mean and sample std over seeds
per arm and metric, paired differences between arms (arm - reference on the seeds both
have, then mean and std), the final stage's losses and routing, parameters, times and the
hardware. Apart from the run loop (task_conflict.py) so that `--summarize-only` and the
tests can read hand-made runs without training anything. See experiments/README.md.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from dataclasses import asdict
from pathlib import Path

from arms import SPLITS, Layout, arm_table, read_json, write_json
from figures import plot_summary

METRICS = ("vqa_accuracy", "pope_accuracy", "pope_f1", "caption_f1", "grounding_acc50",
           "t2i_correct_all", "t2i_object", "t2i_count", "t2i_color", "t2i_size", "t2i_position",
           "edit_correct_all", "edit_psnr", "edit_ssim")

# Paired differences (arm - reference, per seed) reported in the summary when both ran.
PAIRS = (("joint_dense", "und_only"), ("joint_dense", "gen_only"),
         ("joint_topk", "joint_dense"), ("utamoe", "joint_dense"), ("utamoe", "joint_topk"),
         ("utamoe_no_shared", "utamoe"), ("utamoe_no_group_loss", "utamoe"),
         ("utamoe_oracle", "utamoe"), ("utamoe_one_stage", "utamoe"),
         ("utamoe_alpha_fixed", "utamoe"), ("joint_dense_wide", "joint_dense"),
         ("utamoe", "joint_dense_wide"), ("utamoe_full_ft", "utamoe"),
         ("utamoe_full_ft", "joint_dense"))


# ---------------------------------------------------------------- reading the runs


def _found(lay: Layout) -> dict[str, list[int]]:
    """Arms (in table order, then any others) and seeds that have a run directory."""
    root, found = lay.out / "runs", {}
    names = [a for a in arm_table() if (root / a).is_dir()]
    names += sorted(p.name for p in root.glob("*") if p.is_dir() and p.name not in names)
    for arm in names:
        found[arm] = sorted(int(p.name.split("-", 1)[1]) for p in (root / arm).glob("seed-*"))
    return found


def _train_tail(run_dir: Path, last: int = 5) -> dict:
    """Mean over the last logged steps of the final stage: task losses and group-router accuracy;
    expert loads (share of each group's tokens per expert) at the last logged step."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    recs = [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]
    if not recs:
        return {}
    recs = [r for r in recs if r["stage"] == recs[-1]["stage"]][-last:]
    out = {k: statistics.fmean(r[k] for r in recs) for k in ("loss_und", "loss_gen", "group_router_accuracy")
           if all(k in r for r in recs)}
    out.update({k: v for k, v in recs[-1].items() if k.startswith("expert_load_")})
    return out


def _arm_runs(lay: Layout, arm: str, seeds: list[int]) -> tuple[dict, list[dict]]:
    """split -> seed -> headline metrics (every evaluated run), and one record per finished run
    (trained and evaluated on every split): times, end of training, model info."""
    by_split, finished = {s: {} for s in SPLITS}, []
    for seed in seeds:
        d = lay.run(arm, seed)
        recs = {s: read_json(d / f"metrics-{s}.json") for s in SPLITS}
        for split, rec in recs.items():
            if rec:
                by_split[split][seed] = rec["metrics"]
        done = read_json(d / "train_done.json")
        if done and all(rec is not None for rec in recs.values()):
            finished.append({"train_s": done["seconds"],
                             "eval_s": sum(rec["seconds"] for rec in recs.values()),
                             "tail": _train_tail(d), "info": read_json(d / "model_info.json") or {}})
    return by_split, finished


# ---------------------------------------------------------------- statistics


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "n": len(values), "values": values,
            "std": statistics.stdev(values) if len(values) > 1 else None}


def _mean_any(values: list):
    if all(isinstance(v, list) for v in values):  # expert loads: element-wise
        return [round(statistics.fmean(col), 4) for col in zip(*values)]
    return statistics.fmean(values)


def _metric_stats(runs: dict) -> dict:
    """runs: seed -> {metric: value}; stats over the seeds that have each metric."""
    keys = [m for m in METRICS if any(m in v for v in runs.values())]
    return {m: _stats([v[m] for v in runs.values() if m in v]) for m in keys}


def _deltas(by_arm: dict) -> dict:
    out = {}
    for arm, ref in PAIRS:
        seeds = sorted(set(by_arm.get(arm, {})) & set(by_arm.get(ref, {})))
        if not seeds:
            continue
        a, b = by_arm[arm], by_arm[ref]
        keys = [m for m in METRICS if all(m in a[s] and m in b[s] for s in seeds)]
        if keys:
            out[f"{arm} - {ref}"] = {m: _stats([a[s][m] - b[s][m] for s in seeds]) for m in keys}
    return out


def _finished_stats(finished: list[dict]) -> tuple[dict, dict, dict]:
    """End of training (mean over seeds), model (first seed's parameters, mean alpha) and time."""
    tails, infos = [f["tail"] for f in finished], [f["info"] for f in finished]
    t_train, t_eval = [f["train_s"] for f in finished], [f["eval_s"] for f in finished]
    keys = sorted({k for t in tails for k in t})
    train = {k: _mean_any([t[k] for t in tails if k in t]) for k in keys}
    model = {k: infos[0].get(k) for k in ("params_total", "params_active")}
    alphas = [a for i in infos for a in (i.get("alpha") or []) if a is not None]
    model["alpha_mean"] = statistics.fmean(alphas) if alphas else None
    time_ = {"runs": len(t_train), "train_s_mean": statistics.fmean(t_train),
             "eval_s_mean": statistics.fmean(t_eval), "total_s": sum(t_train) + sum(t_eval)}
    return train, model, time_


def collect(lay: Layout) -> dict:
    metrics = {s: {} for s in SPLITS}
    per_seed = {s: {} for s in SPLITS}  # split -> arm -> seed -> {metric: value}
    train, model, time_ = {}, {}, {}
    for arm, seeds in _found(lay).items():
        by_split, finished = _arm_runs(lay, arm, seeds)
        for split, runs in by_split.items():
            if runs:
                per_seed[split][arm] = runs
                metrics[split][arm] = _metric_stats(runs)
        if finished:
            train[arm], model[arm], time_[arm] = _finished_stats(finished)
    deltas = {s: _deltas(per_seed[s]) for s in SPLITS}
    return {"metrics": metrics, "deltas": deltas, "train": train, "model": model, "time": time_}


# ---------------------------------------------------------------- summary.json


def hardware() -> dict:
    import torch

    cpu = ""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines.splitlines()
                    if ln.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "gpu": gpu,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def _first_command(lay: Layout, arm: str) -> str | None:
    """The `utamoe train` command of the arm's lowest seed (the others differ in the seed only)."""
    for seed in _found(lay).get(arm, []):
        done = read_json(lay.run(arm, seed) / "train_done.json")
        if done and "command" in done:
            return done["command"]
    return None


def _lines(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def summarize(lay: Layout) -> dict:
    data = collect(lay)
    invocations = [json.loads(x) for x in _lines(lay.out / "invocations.jsonl")]
    prep = read_json(lay.out / "prep.json") or {}
    prep_s = sum(v for times in prep.values() for v in times.values())
    summary = {
        "experiment": read_json(lay.out / "experiment.json"),
        "commands": [i["command"] for i in invocations],
        "hardware": invocations[-1]["hardware"] if invocations else hardware(),
        "arms": {a: {**asdict(arm_table()[a]), "overrides": list(arm_table()[a].overrides),
                     "train_command": _first_command(lay, a)}
                 for a in data["time"] if a in arm_table()},
        **data,
        "prep_s": prep, "total": {
            "runs_s": sum(t["total_s"] for t in data["time"].values()), "prep_s": prep_s,
            "wall_s": sum(i.get("wall_s", 0) for i in invocations)},
    }
    write_json(lay.out / "summary.json", summary)
    (lay.out / "summary.md").write_text(markdown(summary))
    png = plot_summary(summary, lay.out / "summary.png")
    print(f"[summary] {lay.out / 'summary.md'}, summary.json"
          + (f" and {png.name}" if png else ""), flush=True)
    return summary


# ---------------------------------------------------------------- summary.md


def _fmt(s: dict | None, metric: str, sign: bool = False) -> str:
    if not s:
        return "-"
    spec = ("+" if sign else "") + (".2f" if "psnr" in metric else ".3f")
    return f"{s['mean']:{spec}}" + (f" ± {s['std']:{spec[-3:]}}" if s["std"] is not None else "")


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _loads(x) -> str:
    return "-" if not x else " ".join(f"{v:.2f}" for v in x)


def _table(rows: dict, sign: bool = False) -> list[str]:
    keys = [m for m in METRICS if any(m in r for r in rows.values())]
    out = ["| | n | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for name, r in rows.items():
        n = max((s["n"] for s in r.values()), default=0)
        out.append(f"| {name} | {n} | " + " | ".join(_fmt(r.get(m), m, sign) for m in keys) + " |")
    return out


def _header(s: dict) -> list[str]:
    exp, hw = s.get("experiment") or {}, s["hardware"]
    return ["# Task-conflict experiment: summary", "",
            f"Scale `{exp.get('scale')}`: {exp.get('about', '')}; ShapesWorld samples per task "
            f"{exp.get('sizes')}. Cells: mean ± sample std over seeds (n = seeds).", "",
            f"Hardware: {hw['cpu']}, {hw['cores']} cores, GPU {hw['gpu']}, torch {hw['torch']} "
            f"(torch threads: {hw['torch_threads']}), load average at the start {hw['loadavg']}.", "",
            "Commands:", "", *([f"    {c}" for c in dict.fromkeys(s["commands"])]
                               or ["    (none recorded in invocations.jsonl)"]), ""]


def _metric_sections(s: dict) -> list[str]:
    lines = []
    for split in SPLITS:
        if s["metrics"][split]:
            lines += [f"## `{split}` split", "", *_table(s["metrics"][split]), ""]
    for split in SPLITS:
        if s["deltas"][split]:
            lines += [f"## Paired differences on `{split}` (arm - reference, same seed)", "",
                      *_table(s["deltas"][split], sign=True), ""]
    return lines


def _train_section(s: dict) -> list[str]:
    if not s["train"]:
        return []
    lines = ["## End of training: losses, routing, parameters", "",
             "Losses and group-router accuracy: mean of the final stage's last 5 logged "
             "steps; expert load: each group's token share per expert at the last step; "
             "params without the frozen VQ codec.", "",
             "| arm | loss_und | loss_gen | group router acc | expert load und | "
             "expert load gen | params total | params active | alpha |",
             "|---|---:|---:|---:|---|---|---:|---:|---:|"]
    for arm, t in s["train"].items():
        m = s["model"].get(arm, {})
        cells = [_num(t.get("loss_und")), _num(t.get("loss_gen")),
                 _num(t.get("group_router_accuracy")), _loads(t.get("expert_load_und")),
                 _loads(t.get("expert_load_gen")), str(m.get("params_total", "-")),
                 str(m.get("params_active", "-")), _num(m.get("alpha_mean"))]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _time_section(s: dict) -> list[str]:
    lines = ["## Time", "", "| arm | runs | train s (mean) | eval s (mean) | total min |",
             "|---|---:|---:|---:|---:|"]
    for arm, t in s["time"].items():
        lines.append(f"| {arm} | {t['runs']} | {t['train_s_mean']:.0f} | {t['eval_s_mean']:.0f} | "
                     f"{t['total_s'] / 60:.1f} |")
    tot = s["total"]
    return [*lines, "", f"Runs: {tot['runs_s'] / 60:.1f} min of run time; data and tokenizers "
            f"{tot['prep_s'] / 60:.1f} min; wall clock over all invocations "
            f"{tot['wall_s'] / 60:.1f} min.", ""]


def markdown(s: dict) -> str:
    return "\n".join([*_header(s), *_metric_sections(s), *_train_section(s), *_time_section(s)])
