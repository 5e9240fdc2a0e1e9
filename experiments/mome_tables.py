"""MoME's Tables 1 (MoVE strategies) and 2 (MoLE variants) on ShapesWorld: every row x seed.

    python experiments/mome_tables.py --out runs/mome                 # 12 arms x seeds 0 1 2
    python experiments/mome_tables.py --out runs/mome --jobs 2        # two runs at a time
    python experiments/mome_tables.py --out runs/mome --only t1_vit_avg t1_move_adt_router
    python experiments/mome_tables.py --out runs/mome --summarize-only

Every arm is configs/mome.yaml plus overrides (ARMS below). All arms train the same steps
on the same understanding mixture (caption, VQA, POPE, grounding) with the same seed's
data, codec and text tokenizer (OUT/data/seed-S, OUT/tokenizers/seed-S, made as the
task-conflict experiment makes them), so arms are paired within a seed. The paper's task
groups map to ShapesWorld as: General = mean(VQA accuracy, POPE accuracy), REC =
grounding (acc@IoU 0.5), REG = caption F1 (the description of what is in the image);
Document has no ShapesWorld counterpart (no text in the images) and is left out, so
Avg = mean(General, REC, REG). Table 1's rows have one adapter (MoLE with one expert,
the paper's "one adapter"), so Table 2's "one adapter" rows are Table 1's rows.

Per run OUT/runs/ARM/seed-S/: the trainer's files, `metrics.json` (test split, the first
--per-task samples of each task), `mome.json` + PNGs (router weights per task, for arms
with a router or MoLE). A rerun skips finished runs and resumes interrupted training.
OUT/summary.md / summary.json: mean ± std per arm, paired differences, the paper's numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arms import Layout, read_json, write_json  # noqa: E402

VIT = ("{name: vit, config: {model_type: siglip_vision_model, patch_size: 8, hidden_size: 128, "
       "intermediate_size: 256, num_hidden_layers: 1, num_attention_heads: 4}}")
CONV = ("{name: conv, config: {model_type: resnet, embedding_size: 32, hidden_sizes: [64], "
        "depths: [2], layer_type: basic, downsample_in_first_stage: false}}")
CODEC = "{name: codec, kind: codec}"
ALL = f"[{VIT}, {CONV}, {CODEC}]"


def _vision(encoders: str, transform: str, aggregate: str) -> tuple[str, ...]:
    return (f"model.move.encoders={encoders}", f"model.move.transform={transform}",
            f"model.move.aggregate={aggregate}")


ONE = ("model.mole.num_experts=1",)  # the paper's "one adapter"
VIT_AVG = _vision(f"[{VIT}]", "avgpool", "add")
MOVE = _vision(ALL, "adt", "router")

# arm -> (table, row label, overrides, the paper's row: Gen, REC, REG, Doc, Avg)
ARMS: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {
    "t1_vit_avg": ("1", "ViT (CLIP) · AvgPool", VIT_AVG + ONE, (75.04, 61.42, 58.79, 30.84, 56.52)),
    "t1_conv_avg": ("1", "ResNet (DINO) · AvgPool", _vision(f"[{CONV}]", "avgpool", "add") + ONE,
                    (66.09, 71.52, 55.58, 22.10, 53.82)),
    "t1_codec_avg": ("1", "VQ codec (Pix2Struct) · AvgPool", _vision(f"[{CODEC}]", "avgpool", "add")
                     + ONE, (40.75, 39.26, 32.11, 47.05, 39.79)),
    "t1_move_avg_add": ("1", "MoVE · AvgPool · addition", _vision(ALL, "avgpool", "add") + ONE,
                        (70.36, 74.89, 57.55, 32.83, 58.91)),
    "t1_move_adt_add": ("1", "MoVE · ADT · addition", _vision(ALL, "adt", "add") + ONE,
                        (74.35, 76.93, 61.01, 39.23, 62.88)),
    "t1_move_adt_router": ("1", "MoVE · ADT · router", MOVE + ONE, (79.05, 81.92, 63.82, 52.77, 69.39)),
    "t2_vit_mole_it": ("2", "ViT · MoLE-IT", VIT_AVG + ("model.mole.routing=instance_token",),
                       (75.61, 65.63, 59.17, 32.46, 58.22)),
    "t2_vit_mole_t": ("2", "ViT · MoLE-T", VIT_AVG + ("model.mole.routing=token",),
                      (75.35, 66.09, 58.09, 32.12, 57.91)),
    "t2_vit_mole_i": ("2", "ViT · MoLE-I", VIT_AVG, (75.62, 66.95, 60.90, 32.27, 58.94)),
    "t2_vit_mole_i_gs": ("2", "ViT · MoLE-I + GS", VIT_AVG + ("model.mole.gumbel=true",),
                         (74.87, 63.97, 59.00, 31.69, 57.38)),
    "t2_vit_mole_i_lb": ("2", "ViT · MoLE-I + LB", VIT_AVG + ("model.mole.balance_loss_coef=0.01",),
                         (75.42, 64.74, 59.48, 32.05, 57.92)),
    "t2_move_mole_i": ("2", "MoVE · MoLE-I", MOVE, (79.65, 81.58, 64.83, 53.69, 69.94)),
}
# Rows that appear in both tables in the paper ("one adapter"), here the same runs.
TABLE2_SHARED = {"t1_vit_avg": "ViT · one adapter", "t1_move_adt_router": "MoVE · one adapter"}
# Paired differences reported (arm - reference), each a claim of the paper.
PAIRS = [("t1_move_avg_add", "t1_vit_avg"), ("t1_move_adt_add", "t1_move_avg_add"),
         ("t1_move_adt_router", "t1_move_adt_add"), ("t1_move_adt_router", "t1_vit_avg"),
         ("t2_vit_mole_i", "t1_vit_avg"), ("t2_vit_mole_i", "t2_vit_mole_t"),
         ("t2_vit_mole_i", "t2_vit_mole_it"), ("t2_vit_mole_i_gs", "t2_vit_mole_i"),
         ("t2_vit_mole_i_lb", "t2_vit_mole_i"), ("t2_move_mole_i", "t1_move_adt_router")]
UND = {"caption": 1, "vqa": 1, "pope": 1, "grounding": 1}
METRICS = ("vqa_accuracy", "pope_accuracy", "grounding_acc50", "caption_f1", "General", "REC", "REG", "Avg")


def paper_groups(m: dict) -> dict:
    """The paper's task groups from ShapesWorld's headline metrics (see the module docstring)."""
    out = {"General": (m["vqa_accuracy"] + m["pope_accuracy"]) / 2, "REC": m["grounding_acc50"],
           "REG": m["caption_f1"]}
    out["Avg"] = (out["General"] + out["REC"] + out["REG"]) / 3
    return out


def run_overrides(lay: Layout, arm: str, seed: int, steps: int) -> list[str]:
    tok = lay.tokenizers(seed)
    return [*ARMS[arm][2], f"stages.0.steps={steps}", "train.log_every=20", "train.ckpt_every=100",
            f"data.dir={lay.data(seed)}", f"run.seed={seed}", f"run.out={lay.run(arm, seed)}",
            f"tokenizers.image={tok / 'image_tokenizer'}", f"tokenizers.text={tok / 'text_tokenizer'}"]


def do_run(lay: Layout, arm: str, seed: int, args) -> None:
    """Train (resuming) and evaluate one arm x seed; skipped when its metrics exist."""
    from utamoe.train.checkpoint import latest_checkpoint
    from utamoe.train.config import load_config
    from utamoe.train.trainer import Trainer

    run_dir = lay.run(arm, seed)
    if (run_dir / "metrics.json").is_file():
        return
    overrides = run_overrides(lay, arm, seed, args.steps)
    if not (run_dir / "train_done.json").is_file():
        cfg = load_config("mome", overrides)
        resume = latest_checkpoint(run_dir / "checkpoints") is not None
        t0 = time.perf_counter()
        Trainer(cfg, run_dir, progress=not args.quiet).run(resume=resume)
        write_json(run_dir / "train_done.json", {"seconds": time.perf_counter() - t0,
                                                 "steps": args.steps, "resumed": resume})
    evaluate(lay, arm, seed, args, overrides)


def evaluate(lay: Layout, arm: str, seed: int, args, overrides: list[str]) -> None:
    import shlex

    from utamoe.data.formats import find_benchmark, load_split
    from utamoe.eval.run import evaluate_model
    from utamoe.infer.predictor import Predictor

    run_dir, data = lay.run(arm, seed), lay.data(seed)
    predictor = Predictor.load(run_dir / "model")
    samples = [s for s in load_split(data / "test.jsonl")[0] if s.task in UND]
    t0 = time.perf_counter()
    result = evaluate_model(predictor, samples, batch_size=64, max_per_task=args.per_task,
                            progress=not args.quiet, benchmark=find_benchmark(data))
    metrics = {**result.headline, **paper_groups(result.headline)}
    _routing(predictor, samples, run_dir)
    command = ("utamoe train --config mome " + " ".join(f"--set {shlex.quote(o)}" for o in overrides)
               + f" --out {run_dir}")
    write_json(run_dir / "metrics.json", {
        "arm": arm, "seed": seed, "metrics": metrics, "counts": result.counts,
        "eval_seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": read_json(run_dir / "train_done.json")["seconds"], "command": command})


def _routing(predictor, samples, run_dir: Path) -> None:
    """MoVE router weights and MoLE shares per task (on up to 64 test samples per task)."""
    import numpy as np

    from utamoe.analysis.mome import mome_routing, write_mome_outputs
    from utamoe.data.sequences import collate, training_sequences

    model, enc = predictor.model, predictor.encoder
    rng = np.random.default_rng(0)
    by_task = {}
    for task in UND:
        chunk = [s for s in samples if s.task == task][:64]
        by_task[task] = [collate(training_sequences(enc, chunk, 0.0, rng), enc.special.pad)]
    result = mome_routing(model, by_task)
    if result is not None:
        write_mome_outputs(result, run_dir)


# ---------------------------------------------------------------- summary


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(lay: Layout) -> dict:
    runs = {arm: {} for arm in ARMS}
    for arm in ARMS:
        for d in sorted((lay.out / "runs" / arm).glob("seed-*")):
            m = read_json(d / "metrics.json")
            if m:
                runs[arm][m["seed"]] = m
    by_arm = {arm: {k: _stats([r["metrics"][k] for r in seeds.values()]) for k in METRICS}
              for arm, seeds in runs.items() if seeds}
    deltas = {}
    for a, b in PAIRS:
        common = sorted(set(runs[a]) & set(runs[b]))
        if common:
            deltas[f"{a} - {b}"] = {k: _stats([runs[a][s]["metrics"][k] - runs[b][s]["metrics"][k]
                                               for s in common]) for k in METRICS}
    weights = {}
    for arm in ARMS:
        per = [read_json(d / "mome.json") for d in sorted((lay.out / "runs" / arm).glob("seed-*"))]
        per = [p for p in per if p and p.get("encoders")]
        if per:
            weights[arm] = {"encoders": per[0]["encoders"], "per_task": {
                t: [statistics.fmean(p["encoder_weights"][t][e] for p in per)
                    for e in range(len(per[0]["encoders"]))] for t in per[0]["encoder_weights"]}}
    times = [r["train_seconds"] for seeds in runs.values() for r in seeds.values()]
    summary = {"arms": by_arm, "deltas": deltas, "router_weights": weights,
               "seeds": {a: sorted(s) for a, s in runs.items()},
               "train_seconds_mean": statistics.fmean(times) if times else None,
               "steps": next((read_json(d / "train_done.json") or {}).get("steps") for d in
                             (lay.out / "runs").glob("*/seed-*")) if (lay.out / "runs").is_dir() else None}
    write_json(lay.out / "summary.json", summary)
    (lay.out / "summary.md").write_text(markdown(summary))
    if by_arm:
        plot(summary, lay.out / "summary.png")
    return summary


def plot(s: dict, path: Path) -> None:
    """Bars of the paper's groups per arm (mean ± std over seeds), Table 1 then Table 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if a in s["arms"]]
    cols = ("General", "REC", "REG", "Avg")
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(cols)
    for j, c in enumerate(cols):
        means = [100 * s["arms"][a][c]["mean"] for a in arms]
        stds = [100 * s["arms"][a][c]["std"] for a in arms]
        ax.bar([i + j * width for i in range(len(arms))], means, width, yerr=stds, capsize=2, label=c)
    ax.set_xticks([i + 0.3 for i in range(len(arms))], [ARMS[a][1] for a in arms], rotation=35,
                  ha="right", fontsize=7)
    ax.set_ylabel("% (test)")
    ax.set_title(f"MoME tables on ShapesWorld, {s.get('steps')} steps per arm, mean ± std over seeds",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _f(s: dict | None, k: str, scale: float = 100.0, sign: bool = False) -> str:
    if not s or k not in s:
        return "-"
    v = s[k]
    return f"{scale * v['mean']:{'+' if sign else ''}.1f} ± {scale * v['std']:.1f}"


def markdown(s: dict) -> str:
    cols = ("General", "REC", "REG", "Avg")
    lines = [f"# MoME tables on ShapesWorld ({s.get('steps')} steps per arm)", "",
             "Ours: mean ± std over seeds (%, test split); paper: the published row "
             "(General / REC / REG / Avg; the paper's Avg also averages Document, which has no "
             "ShapesWorld counterpart).", ""]
    for table in ("1", "2"):
        lines += [f"## Table {table}", "", "| row | n | " + " | ".join(cols)
                  + " | VQA | POPE | paper Gen / REC / REG / Avg |", "|---" * (len(cols) + 5) + "|"]
        rows = [(a, ARMS[a][1]) for a in ARMS if ARMS[a][0] == table]
        if table == "2":
            rows = [("t1_vit_avg", TABLE2_SHARED["t1_vit_avg"])] + rows[:-1] + [
                ("t1_move_adt_router", TABLE2_SHARED["t1_move_adt_router"]), rows[-1]]
        for arm, label in rows:
            st = s["arms"].get(arm)
            paper = ARMS[arm][3] if not (table == "2" and arm in TABLE2_SHARED) else \
                {"t1_vit_avg": (74.50, 63.80, 59.24, 31.73, 57.32),
                 "t1_move_adt_router": (79.05, 81.92, 63.82, 52.77, 69.39)}[arm]
            n = st["Avg"]["n"] if st else 0
            lines.append(f"| {label} | {n} | " + " | ".join(_f(st, c) for c in cols)
                         + f" | {_f(st, 'vqa_accuracy')} | {_f(st, 'pope_accuracy')} | "
                         + f"{paper[0]:.1f} / {paper[1]:.1f} / {paper[2]:.1f} / {paper[4]:.1f} |")
        lines.append("")
    lines += ["## Paired differences (same seed, same data)", "",
              "| arm - reference | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, d in s["deltas"].items():
        lines.append(f"| {name} | {d['Avg']['n']} | " + " | ".join(_f(d, c, sign=True) for c in cols) + " |")
    if s["router_weights"]:
        lines += ["", "## MoVE router: mean weight (%) per encoder and task", ""]
        for arm, w in s["router_weights"].items():
            lines += [f"`{arm}`:", "", "| task | " + " | ".join(w["encoders"]) + " |",
                      "|---" * (len(w["encoders"]) + 1) + "|"]
            lines += [f"| {t} | " + " | ".join(f"{100 * x:.1f}" for x in v) + " |"
                      for t, v in w["per_task"].items()]
            lines.append("")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line


def _prepare(lay: Layout, seeds: list[int], quiet: bool) -> None:
    from task_conflict import prepare_seed

    for seed in seeds:
        prepare_seed(lay, seed, "small", not quiet)  # ShapesWorld 2000 train / 200 test per task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--per-task", type=int, default=100, help="test samples per task")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--summarize-only", action="store_true")
    p.add_argument("--worker", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    lay = Layout(args.out)
    if args.worker:
        do_run(lay, args.worker[0], int(args.worker[1]), args)
        return 0
    if not args.summarize_only:
        _prepare(lay, args.seeds, args.quiet)
        todo = [(a, s) for s in args.seeds for a in args.only
                if not (lay.run(a, s) / "metrics.json").is_file()]
        failed = _run_all(lay, todo, args)
        if failed:
            print("FAILED: " + ", ".join(failed), flush=True)
    summary = summarize(lay)
    print((lay.out / "summary.md").read_text())
    return 1 if not args.summarize_only and failed else 0 if summary else 1


def _run_all(lay: Layout, todo: list[tuple[str, int]], args) -> list[str]:
    """Each run in a subprocess (`--jobs` at a time, cores split between them), resumable."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    active, failed, done, start = {}, [], 0, time.perf_counter()
    queue = list(todo)
    while queue or active:
        while queue and len(active) < args.jobs:
            arm, seed = queue.pop(0)
            lay.run(arm, seed).mkdir(parents=True, exist_ok=True)
            log = open(lay.run(arm, seed) / "log.txt", "a")  # noqa: SIM115 (closed below)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(lay.out), "--steps",
                   str(args.steps), "--per-task", str(args.per_task), "--quiet", "--worker", arm, str(seed)]
            active[(arm, seed)] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
            print(f"[run] {arm} seed {seed}", flush=True)
        for key, (proc, log) in list(active.items()):
            if proc.poll() is None:
                continue
            log.close()
            del active[key]
            done += 1
            ok = proc.returncode == 0 and (lay.run(*key) / "metrics.json").is_file()
            if not ok:
                failed.append(f"{key[0]} seed {key[1]} (log: {lay.run(*key) / 'log.txt'})")
            elapsed = (time.perf_counter() - start) / 60
            left = elapsed / done * (len(todo) - done)
            print(f"[{done}/{len(todo)}] {key[0]} seed {key[1]} {'done' if ok else 'FAILED'}; "
                  f"{elapsed:.1f} min so far, ~{left:.0f} min left", flush=True)
        time.sleep(1.0)
    return failed


if __name__ == "__main__":
    sys.exit(main())
