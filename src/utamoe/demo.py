"""`utamoe demo`: the whole path on the built-in default, on a CPU, with no download.

1. ShapesWorld dataset (train/val/test/heldout) -> DIR/data
2. VQ image tokenizer and BPE text tokenizer, trained on it
3. The UTAMoE recipe sized for the demo (configs/demo.yaml, over configs/utamoe.yaml): joint
   dense pretraining (standing in for a pretrained base, so it must learn to bind words to
   image content), stage 1 (attention frozen, one FFN per task group), stage 2 (TA-MoE + LoRA,
   joint fine-tuning) -> DIR/model
4. Evaluation of every task on the test split -> DIR/metrics.json (flat), DIR/report.md,
   DIR/samples.png, and the full evaluation in DIR/eval/

Re-running with the same --out resumes an interrupted demo from its last checkpoint; a folder
holding a demo of another seed or size is refused (`--force` starts it over).
`--quick` runs the same path with a tiny dataset, model and step budget (~1 minute).
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

from rich.console import Console

from utamoe.config import ConfigError, to_dict
from utamoe.data.formats import load_split, read_manifest
from utamoe.eval.report import print_summary, write_eval_outputs
from utamoe.eval.run import EvalSampling, evaluate_model
from utamoe.infer.predictor import Predictor
from utamoe.shapes import ShapesWorldConfig, total_samples, write_dataset
from utamoe.shapes.benchmark import SHAPESWORLD
from utamoe.train.checkpoint import latest_checkpoint
from utamoe.train.config import load_config
from utamoe.train.progress import bar
from utamoe.train.run_dir import clean_start
from utamoe.train.trainer import Trainer

# The project's goals for the demo (test split), reported next to the measured values and
# turned into a verdict per task: what works and what does not yet.
TARGETS = {"pope_accuracy": 0.90, "vqa_accuracy": 0.85, "caption_f1": 0.80,
           "grounding_acc50": 0.60, "t2i_correct_all": 0.70,
           "edit_correct_all": 0.45}
VQA_TYPE_FLOOR = 0.70  # no VQA question type below this
HEADLINE = ("vqa_accuracy", "pope_accuracy", "pope_f1", "caption_f1", "grounding_acc50",
            "t2i_correct_all", "edit_correct_all", "edit_psnr", "edit_ssim")
FULL_SIZES = {"train": 2000, "val": 50, "test": 200, "heldout": 100}
QUICK_SIZES = {"train": 60, "val": 4, "test": 8, "heldout": 4}
QUICK_OVERRIDES = [
    "tokenizers.image_train={steps: 40, batch_size: 16, restart_every: 10}",
    "tokenizers.text_vocab_size=300",
    "model.backbone.config.hidden_size=64", "model.backbone.config.intermediate_size=128",
    "model.backbone.config.num_hidden_layers=2", "model.backbone.config.num_attention_heads=4",
    "model.backbone.config.num_key_value_heads=4",
    "model.vision.config.hidden_size=32", "model.vision.config.intermediate_size=64",
    "model.vision.config.num_hidden_layers=1", "model.vision.config.patch_size=16",
    "train.batch_size=8", "train.log_every=5", "train.warmup_steps=5",
    "stages.0.steps=20", "stages.1.steps=10", "stages.2.steps=10",
    "stages.2.moe.num_experts=4", "stages.2.lora.rank=8",
]


def _dataset(out: Path, seed: int, quick: bool, console: Console):
    world = ShapesWorldConfig(seed=seed, sizes=QUICK_SIZES if quick else FULL_SIZES)
    if (out / "dataset.json").is_file() and read_manifest(out).get("config") == world.to_dict():
        console.print(f"[data] reusing {out}")
        return world
    with bar(unit="sample") as progress:
        job = progress.add_task("ShapesWorld", total=total_samples(world))
        write_dataset(out, world, progress=lambda n: progress.advance(job, n))
    return world


def _recipe(out: Path, data_dir: Path, seed: int, quick: bool):
    overrides = [f"data.dir={data_dir}", f"run.out={out}", f"run.seed={seed}"]
    return load_config("demo", overrides + (QUICK_OVERRIDES if quick else []))


def _check_out(out: Path, cfg, force: bool) -> None:
    """`out` must be new, empty, or a demo of this very recipe (same seed and size): a demo of
    another one would be resumed on other data. `force` starts such a demo over; a folder that
    holds no demo at all is never written into."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / "config.yaml").is_file() and not (out / "data" / "dataset.json").is_file():
        raise ConfigError(f"{out} is not empty and holds no demo; give a new or empty --out")
    if not (out / "config.yaml").is_file():
        return
    try:
        old = _flat(to_dict(load_config(str(out / "config.yaml"))))
    except ConfigError:  # written by another utamoe version: not this recipe either
        old = {"config.yaml": "another utamoe's"}
    new = _flat(to_dict(cfg))
    differ = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    if differ and not force:
        shown = ", ".join(f"{k} {old.get(k)!r} there, {new.get(k)!r} here" for k in differ[:3])
        raise ConfigError(f"{out} holds a demo of another seed or size ({shown}"
                          f"{', ...' if len(differ) > 3 else ''}); give another --out, or pass "
                          "--force to start it over (its tokenizers, checkpoints and model are "
                          "replaced)")
    if differ:
        clean_start(out)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _train(out: Path, data_dir: Path, seed: int, quick: bool, console: Console) -> Path:
    cfg = _recipe(out, data_dir, seed, quick)
    resume = latest_checkpoint(out / "checkpoints") is not None
    if resume:
        console.print(f"[train] resuming from {latest_checkpoint(out / 'checkpoints')}")
    return Trainer(cfg, out).run(resume=resume)


def _evaluate(model_dir: Path, data_dir: Path, world, out: Path, seed: int):
    predictor = Predictor.load(model_dir)
    samples, _ = load_split(data_dir / "test.jsonl")
    sampling = demo_sampling(seed)
    result = evaluate_model(predictor, samples, sampling, benchmark=SHAPESWORLD.on(world))
    result.split, result.model, result.data = "test", str(model_dir), str(data_dir)
    command = shlex.join(["utamoe", "eval", "--model", str(model_dir), "--data", str(data_dir),
                          "--split", "test", *sampling.cli_args()])
    paths = write_eval_outputs(result, out / "eval", command)
    print_summary(result, paths)
    return result, paths


def demo_sampling(seed: int):
    """Greedy image decoding with light guidance: in ShapesWorld a scene has one right rendering,
    and on the demo model greedy + CFG 1.5 scored t2i correct-all 0.64 against 0.49 for T=1,
    CFG 3 (100 test prompts, benchmarks/RESULTS.md); recorded in metrics like any setting."""
    return EvalSampling(temperature=0.0, cfg_scale=1.5, seed=seed)


def verdicts(metrics: dict, vqa: dict | None = None) -> list[str]:
    """One line per task: its headline number against the goal, and what is wrong if missed."""
    lines = []
    for key, goal in TARGETS.items():
        if key not in metrics:
            continue
        ok = metrics[key] >= goal
        line = f"{key.split('_')[0]}: {key} {metrics[key]:.3f} (goal {goal}) -> " + \
            ("works" if ok else "does not work yet")
        if key == "pope_accuracy" and "pope_f1" in metrics and not ok:
            line += f"; F1 of 'yes' {metrics['pope_f1']:.3f}"
        if key == "vqa_accuracy" and vqa:  # which questions fail says more than the mean
            types = {k.removeprefix("accuracy_"): v for k, v in vqa.items() if k.startswith("accuracy_")}
            weak = [f"{t} {v:.2f}" for t, v in sorted(types.items(), key=lambda kv: kv[1])
                    if v < VQA_TYPE_FLOOR]
            line += f"; question types below {VQA_TYPE_FLOOR}: {', '.join(weak)}" if weak else \
                f"; every question type >= {VQA_TYPE_FLOOR}"
        lines.append(line)
    return lines


def _report(out: Path, metrics: dict, quick: bool, vqa: dict | None = None) -> str:
    rows = "\n".join(f"| {k} | {metrics[k]:.4f} | {TARGETS.get(k, '')} |" for k in HEADLINE if k in metrics)
    lines = [] if quick else verdicts(metrics, vqa)
    by_type = ", ".join(f"{k.removeprefix('accuracy_')} {v:.2f}" for k, v in (vqa or {}).items()
                        if k.startswith("accuracy_"))
    if by_type:
        lines.append(f"VQA accuracy by question type: {by_type}")
    return "\n".join([
        f"# utamoe demo{' (quick)' if quick else ''}", "",
        f"Finished in {metrics['seconds']:.0f} s (data, tokenizers, UTAMoE recipe, evaluation).", "",
        f"Numerics: {numerics_fingerprint()}. A run is reproducible for the same seed, torch "
        "thread count and CPU kind; another thread count changes the reductions' summation "
        "order, hence every weight and every metric (set `OMP_NUM_THREADS` to compare runs).", "",
        "| metric (test split) | value | goal |", "|---|---|---|", rows, "",
        *(f"- {line}" for line in lines), "",
        "Files: `model/` (load with `utamoe generate|answer|eval --model`), `metrics.json`, "
        "`samples.png` (generated images with prompt and verdict), `loss.png`, `metrics.jsonl` "
        "(training log), `eval/` (full evaluation: per-task metrics, predictions, report), "
        "`config.yaml` (the resolved recipe).", ""])


def numerics_fingerprint() -> str:
    """What decides the floating-point results beside the seed: torch version, intra-op
    threads, the CPU (its vendor picks MKL's kernels: the same recipe trained on an Intel and
    an AMD AVX-512 VM diverged), its kernels' instruction set, the OpenMP wait policy (speed only)."""
    import os
    import platform

    import torch

    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {_cpu_model() or platform.processor()}"
            f" (kernels {torch.backends.cpu.get_cpu_capability()}), OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def run_demo(out: str | Path, quick: bool = False, seed: int = 0, force: bool = False) -> dict:
    console = Console()
    out = Path(out)
    _check_out(out, _recipe(out, out / "data", seed, quick), force)
    start = time.perf_counter()
    console.rule("[bold]1/3 ShapesWorld dataset")
    world = _dataset(out / "data", seed, quick, console)
    console.rule("[bold]2/3 tokenizers + UTAMoE recipe (pretrain -> stage 1 -> stage 2)")
    model_dir = _train(out, out / "data", seed, quick, console)
    console.rule("[bold]3/3 evaluation on the test split")
    result, paths = _evaluate(model_dir, out / "data", world, out, seed)
    metrics = {k: float(v) for k, v in result.headline.items()}
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if "samples" in paths:
        shutil.copyfile(paths["samples"], out / "samples.png")
    (out / "report.md").write_text(_report(out, metrics, quick, result.per_task.get("vqa")))
    console.rule("[bold]verdict per task")
    if quick:
        console.print("(--quick trains a toy model for a minute: no verdicts; run without it)")
    for line in verdicts(metrics, result.per_task.get("vqa")) if not quick else []:
        style = "green" if line.split("->")[1].strip().startswith("works") else "yellow"
        console.print(f"[{style}]{line}[/]")
    console.print(f"[bold green]demo finished in {metrics['seconds']:.0f} s[/]; see {out}/report.md")
    return metrics
