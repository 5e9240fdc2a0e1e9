"""The task-conflict experiment (issue 6): every arm x seed on ShapesWorld, evaluated, aggregated.

    python experiments/task_conflict.py --out runs/exp                  # small scale, seeds 0 1 2
    python experiments/task_conflict.py --out runs/exp-full --scale full --jobs 2
    python experiments/task_conflict.py --out runs/exp --summarize-only

Arms (recipe + `--set` overrides, the table in experiments/arms.py):
  conflict  und_only, gen_only, joint_dense                 (paper Table 1)
  remedy    joint_dense, joint_topk, utamoe                 (paper Table 2)
  ablation  utamoe_no_shared, utamoe_no_group_loss, utamoe_oracle,
            utamoe_one_stage, utamoe_alpha_fixed
  extra     joint_dense_wide (dense with the MoE arms' active FFN size; only with --only)

Per seed S: one ShapesWorld dataset (seed S) in OUT/data/seed-S and one image + text
tokenizer pair trained on it in OUT/tokenizers/seed-S, shared by every arm of that seed
(same codec, same data: the arms are paired within a seed). Per run:
OUT/runs/ARM/seed-S/ (the trainer's files, `model/`, `metrics-test.json`,
`metrics-heldout.json`, `eval-<split>/`, `model_info.json`). A rerun skips what is
complete and resumes an interrupted training from its checkpoint. OUT/summary.json and
OUT/summary.md (experiments/summary.py) hold mean and std over seeds per arm and metric
for each split, paired differences between arms, routing and final training losses,
times and the hardware.

This file is the command line and the run loop: the seeds' data and codecs, training and
evaluating each run (in this process or in `--jobs` subprocesses), progress and the
invocation record. See experiments/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from arms import (
    SCALES,
    SPLITS,
    Layout,
    arm_names,
    arm_table,
    load_arm_config,
    read_json,
    run_complete,
    run_overrides,
    train_command,
    trained_tasks,
    write_json,
)
from summary import hardware, summarize

# ---------------------------------------------------------------- per seed: data and codec


class _Solo:  # the two members of an Accelerator that utamoe.train.setup's helpers use
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def _timed(fn, *args, **kwargs) -> float:
    """Seconds (rounded to 0.1) that fn(*args, **kwargs) took."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return round(time.perf_counter() - start, 1)


def _write_data(data: Path, world, seed: int) -> None:
    from utamoe.shapes import write_dataset

    print(f"[prep] seed {seed}: writing ShapesWorld {world.sizes} -> {data}", flush=True)
    write_dataset(data, world)


def _train_tokenizers(lay: Layout, seed: int, scale: str, progress: bool) -> None:
    from utamoe.train.config import load_config
    from utamoe.train.setup import image_tokenizer_for, load_samples, text_tokenizer_for

    tok = lay.tokenizers(seed)
    print(f"[prep] seed {seed}: training the image and text tokenizers -> {tok}", flush=True)
    partial = tok.with_name(tok.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted attempt of ours
    partial.mkdir(parents=True)
    # The utamoe recipe samples every task, so the text tokenizer sees all of them.
    cfg = load_config("utamoe", [*SCALES[scale].overrides, f"data.dir={lay.data(seed)}",
                                 f"run.seed={seed}"])
    samples, _ = load_samples(cfg)
    text_tokenizer_for(cfg, samples, partial, _Solo())
    image_tokenizer_for(cfg, partial, _Solo(), progress)
    partial.replace(tok)


def prepare_seed(lay: Layout, seed: int, scale: str, progress: bool) -> dict:
    """The seed's dataset and its image + text tokenizers (skipped when already there)."""
    from utamoe.data.formats import read_manifest
    from utamoe.shapes import ShapesWorldConfig

    times = {}
    data = lay.data(seed)
    world = ShapesWorldConfig(seed=seed, sizes=dict(SCALES[scale].sizes))
    if not (data / "dataset.json").is_file() or read_manifest(data).get("config") != world.to_dict():
        times["dataset_s"] = _timed(_write_data, data, world, seed)
    if not lay.tokenizers(seed).is_dir():
        times["tokenizers_s"] = _timed(_train_tokenizers, lay, seed, scale, progress)
    return times


# ---------------------------------------------------------------- one run: train, evaluate


def train_run(lay: Layout, arm: str, seed: int, scale: str, progress: bool, keep_ckpt: bool) -> None:
    from utamoe.train.checkpoint import latest_checkpoint
    from utamoe.train.trainer import Trainer

    run_dir = lay.run(arm, seed)
    if (run_dir / "train_done.json").is_file():
        return
    cfg = load_arm_config(arm, run_overrides(lay, arm, seed, scale))
    resume = latest_checkpoint(run_dir / "checkpoints") is not None
    seconds = _timed(Trainer(cfg, run_dir, progress=progress).run, resume=resume)
    write_json(run_dir / "train_done.json", {
        "seconds": seconds, "resumed": resume, "steps": sum(s.steps for s in cfg.stages),
        "threads": _threads(), "command": train_command(lay, arm, seed, scale)})
    if not keep_ckpt:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def model_info(model) -> dict:
    """Parameter counts without the frozen VQ codec; active = what one token uses."""
    from utamoe.moe import moe_layers

    total = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("image_tokenizer."))
    inactive, alphas = 0, []
    for layer in moe_layers(model):
        c = layer.config
        per_expert = sum(p.numel() for p in layer.experts.parameters()) // c.num_experts
        inactive += (c.num_experts - c.top_k) * per_expert
        alphas.append(round(float(layer.alpha.detach()), 4) if c.num_shared_experts else None)
    return {"params_total": total, "params_active": total - inactive, "alpha": alphas}


def eval_run(lay: Layout, arm: str, seed: int, scale: str, progress: bool) -> None:
    from utamoe.data.formats import find_benchmark, load_split
    from utamoe.demo import demo_sampling
    from utamoe.eval.report import write_eval_outputs
    from utamoe.eval.run import evaluate_model
    from utamoe.infer.predictor import Predictor

    run_dir, data = lay.run(arm, seed), lay.data(seed)
    todo = [s for s in SPLITS if not (run_dir / f"metrics-{s}.json").is_file()]
    if not todo:
        return
    predictor = Predictor.load(run_dir / "model")
    write_json(run_dir / "model_info.json", model_info(predictor.model))
    bs, tasks = SCALES[scale].eval_batch, trained_tasks(arm, scale)
    sampling = demo_sampling(seed)  # greedy + CFG 1.5, as the demo (benchmarks/RESULTS.md)
    for split in todo:
        samples = [x for x in load_split(data / f"{split}.jsonl")[0] if x.task in tasks]
        result = evaluate_model(predictor, samples, sampling, batch_size=bs,
                                progress=progress, benchmark=find_benchmark(data))
        result.split, result.model, result.data = split, str(run_dir / "model"), str(data)
        command = shlex.join(["utamoe", "eval", "--model", str(run_dir / "model"), "--data",
                              str(data), "--split", split, *sampling.cli_args(),
                              "--out", str(run_dir / f"eval-{split}")])
        write_eval_outputs(result, run_dir / f"eval-{split}", command)
        write_json(run_dir / f"metrics-{split}.json", {
            "arm": arm, "seed": seed, "split": split, "metrics": result.headline,
            "counts": result.counts, "seconds": round(result.seconds, 1), "command": command})


def do_run(lay: Layout, arm: str, seed: int, scale: str, progress: bool, keep_ckpt: bool) -> None:
    train_run(lay, arm, seed, scale, progress, keep_ckpt)
    eval_run(lay, arm, seed, scale, progress)


# ---------------------------------------------------------------- scheduling


def run_seconds(lay: Layout, arm: str, seed: int) -> float:
    d = lay.run(arm, seed)
    parts = [read_json(d / "train_done.json")] + [read_json(d / f"metrics-{s}.json") for s in SPLITS]
    return sum(p["seconds"] for p in parts if p)


class Eta:
    """Time left from the runs finished so far (per arm where known, else overall)."""

    def __init__(self, jobs: int):
        self.jobs, self.done = jobs, {}

    def add(self, arm: str, seconds: float) -> None:
        self.done.setdefault(arm, []).append(seconds)

    def left(self, todo: list[str]) -> str:
        if not self.done:
            return "ETA after the first run"
        overall = statistics.fmean(s for v in self.done.values() for s in v)
        left = sum(statistics.fmean(self.done[a]) if a in self.done else overall for a in todo)
        return f"~{left / self.jobs / 60:.0f} min left"


def run_all(lay: Layout, runs: list[tuple[str, int]], args) -> list[str]:
    """Train and evaluate `runs` (in-process for --jobs 1, else in parallel subprocesses)."""
    eta, failed, start = Eta(args.jobs), [], time.perf_counter()
    queue = list(runs)
    active: dict[tuple[str, int], tuple[subprocess.Popen, object]] = {}
    finished = 0

    def report(arm, seed, ok):
        nonlocal finished
        finished += 1
        if ok:
            eta.add(arm, run_seconds(lay, arm, seed))
        else:
            log = lay.run(arm, seed) / "log.txt"
            failed.append(f"{arm} seed {seed}" + (f" (log: {log})" if args.jobs > 1 else ""))
        remaining = [a for a, _ in queue] + [a for a, _ in active]
        print(f"[{finished}/{len(runs)}] {arm} seed {seed} {'done' if ok else 'FAILED'}; "
              f"{(time.perf_counter() - start) / 60:.1f} min so far, {eta.left(remaining)}", flush=True)

    while queue or active:
        while queue and len(active) < args.jobs:
            arm, seed = queue.pop(0)
            print(f"[run] {arm} seed {seed} -> {lay.run(arm, seed)}", flush=True)
            if args.jobs == 1:
                report(arm, seed, _run_inline(lay, arm, seed, args))
            else:
                active[(arm, seed)] = _spawn(lay, arm, seed, args)
        for key, (proc, log) in list(active.items()):
            if proc.poll() is not None:
                log.close()
                del active[key]
                report(*key, proc.returncode == 0 and run_complete(lay, *key))
        if active:
            time.sleep(1.0)
    return failed


def _run_inline(lay: Layout, arm: str, seed: int, args) -> bool:
    from utamoe.train.trainer import TrainingStopped

    try:
        do_run(lay, arm, seed, args.scale, not args.quiet, args.keep_checkpoints)
        return True
    except (TrainingStopped, KeyboardInterrupt):
        raise
    except Exception:
        traceback.print_exc()
        return False


def _spawn(lay: Layout, arm: str, seed: int, args):
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(lay.out), "--scale",
           args.scale, "--worker", arm, str(seed), "--quiet"]
    if args.keep_checkpoints:
        cmd.append("--keep-checkpoints")
    lay.run(arm, seed).mkdir(parents=True, exist_ok=True)
    log = open(lay.run(arm, seed) / "log.txt", "a")  # noqa: SIM115 (closed when the run ends)
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (resumable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--scale", choices=sorted(SCALES), default="small",
                   help="small (default, < 1 h on 2 cores), full (the recipes' steps), tiny (tests)")
    p.add_argument("--only", nargs="+", metavar="ARM", help="these arms only (default: the issue's "
                   f"10); known: {', '.join(arm_names())}")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (subprocesses; default 1)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--summarize-only", action="store_true", help="only (re)write the summary")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep RUN/checkpoints after a run finished (default: deleted; model/ stays)")
    p.add_argument("--quiet", action="store_true", help="no progress bars inside runs")
    p.add_argument("--worker", nargs=2, metavar=("ARM", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [a for a in args.only or [] if a not in arm_names()]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; known: {', '.join(arm_names())}")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    return args


def _check_experiment(lay: Layout, scale: str) -> None:
    sc = SCALES[scale]
    want = {"scale": scale, "sizes": sc.sizes, "step_factor": sc.step_factor, "about": sc.about}
    have = read_json(lay.out / "experiment.json")
    if have is not None and (have["scale"], have["sizes"], have["step_factor"]) != (
            scale, sc.sizes, sc.step_factor):
        raise SystemExit(f"error: {lay.out} holds a `{have['scale']}` experiment; use another --out "
                         f"for --scale {scale}")
    lay.out.mkdir(parents=True, exist_ok=True)
    write_json(lay.out / "experiment.json", want)


def _prepare_seeds(lay: Layout, args) -> None:
    """Every seed's data and codec; the seconds spent go to OUT/prep.json."""
    prep = read_json(lay.out / "prep.json") or {}
    for seed in args.seeds:
        times = prepare_seed(lay, seed, args.scale, not args.quiet)
        if times:
            prep[str(seed)] = {**prep.get(str(seed), {}), **times}
            write_json(lay.out / "prep.json", prep)


def _plan(lay: Layout, args) -> list[tuple[str, int]]:
    """The (arm, seed) runs still to do, in seed order."""
    arms = args.only or [a for a, arm in arm_table().items() if arm.default]
    planned = [(a, s) for s in args.seeds for a in arms]
    runs = [r for r in planned if not run_complete(lay, *r)]
    print(f"[plan] {len(planned)} runs ({len(arms)} arms x {len(args.seeds)} seeds), "
          f"{len(planned) - len(runs)} complete, {len(runs)} to do; scale {args.scale}, "
          f"jobs {args.jobs}", flush=True)
    return runs


def _record(lay: Layout, record: dict) -> None:
    with open(lay.out / "invocations.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lay = Layout(Path(args.out))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        arm, seed = args.worker[0], int(args.worker[1])
        do_run(lay, arm, seed, args.scale, not args.quiet, args.keep_checkpoints)
        return 0
    if args.summarize_only:
        summarize(lay)
        return 0
    _check_experiment(lay, args.scale)
    start, hw = time.perf_counter(), hardware()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    command = shlex.join(["python", sys.argv[0] if argv is None else "experiments/task_conflict.py",
                          *(sys.argv[1:] if argv is None else argv)])
    _prepare_seeds(lay, args)
    runs = _plan(lay, args)
    # A line when the invocation starts and one when it ends: an invocation that is stopped
    # (SIGTERM, a crash) still leaves its command for the summary; wall time is on end lines.
    _record(lay, {"event": "start", "command": command, "started": started, "runs": len(runs),
                  "jobs": args.jobs, "hardware": hw})
    failed = run_all(lay, runs, args)
    _record(lay, {"event": "end", "command": command, "started": started,
                  "wall_s": round(time.perf_counter() - start, 1), "runs": len(runs),
                  "jobs": args.jobs, "failed": failed, "hardware": hw})
    summarize(lay)
    if failed:
        print("[failed] " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
