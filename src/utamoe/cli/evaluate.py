"""`utamoe eval` and `analyze`: a model scored, or its task conflict and routing measured, on
a dataset split."""

from __future__ import annotations

import argparse

from utamoe.analysis.report import print_analysis_summary, write_analysis_outputs
from utamoe.analysis.run import run_analysis
from utamoe.cli.infer import _add_sampling_args
from utamoe.data.formats import (
    DataFormatError,
    find_benchmark,
    list_splits,
    load_split,
    with_images,
)
from utamoe.eval.report import print_summary, write_eval_outputs
from utamoe.eval.run import EvalSampling, evaluate_model
from utamoe.fsutil import check_output_dir
from utamoe.infer.checks import InputError
from utamoe.infer.predictor import Predictor


def cmd_eval(args: argparse.Namespace) -> int:
    import shlex

    predictor, samples, data, out = _model_and_split(
        args, f"eval-{args.split}", load_images=False, batch_size=args.batch_size,
        max_per_task=args.max_per_task,
        max_new_tokens=args.max_new_tokens)
    sampling = EvalSampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            cfg_scale=args.cfg_scale, seed=args.seed,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    split = data / f"{args.split}.jsonl"  # images read a batch at a time (evaluate_model)
    result = evaluate_model(predictor, samples, sampling, max_per_task=args.max_per_task,
                            benchmark=find_benchmark(data),
                            load=lambda s: with_images(s, split, draft=predictor.processor.size))
    result.split, result.model, result.data = args.split, str(args.model), str(data)
    command = ["utamoe", "eval", "--model", str(args.model), "--data", str(data), "--split",
               args.split, "--out", str(out), *sampling.cli_args(), "--device", args.device]
    if args.max_per_task:
        command += ["--max-per-task", str(args.max_per_task)]
    paths = write_eval_outputs(result, out, command=shlex.join(command))
    print_summary(result, paths)
    return 0


# What each verb writes in --out: an existing directory holding none of them is not replaced.
OWN_FILES = {"eval": ("metrics.json", "predictions.jsonl"), "analyze": ("conflict.json", "routing.json")}


def _model_and_split(args: argparse.Namespace, out_name: str, load_images: bool = True,
                     **counts):
    """Check counts >= 1, the split exists; load the model and the split's samples.

    Returns (predictor, samples, data dir, output dir)."""
    from pathlib import Path

    for name, value in counts.items():
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    data = Path(args.data)
    splits = list_splits(data)
    if args.split not in splits:
        raise DataFormatError(data, None, f"no split '{args.split}' here (found: "
                              f"{', '.join(splits) or 'none'}); pass --split with one of them")
    out = Path(args.out) if args.out else Path(args.model).resolve().parent / out_name
    check_output_dir(out, OWN_FILES[args.verb], f"`utamoe {args.verb}` output")
    predictor = Predictor.load(args.model, args.device)
    samples, _ = load_split(data / f"{args.split}.jsonl", load_images=load_images)
    if not samples:
        raise InputError(f"{data / (args.split + '.jsonl')} has no samples; pass --split with a "
                         "split that has some")
    return predictor, samples, data, out


def _add_model_data_args(p: argparse.ArgumentParser, verb: str, out_name: str) -> None:
    """--model, --data, --split, --out: shared by the verbs that read a model and a dataset."""
    p.add_argument("--model", required=True, help="model directory (e.g. RUN/model)")
    p.add_argument("--data", required=True, help="dataset directory (one <split>.jsonl per split)")
    p.add_argument("--split", default="test", help=f"split to {verb} (default test)")
    p.add_argument("--out", help=f"output directory (default: <model dir>/../{out_name})")


def _add_eval_verb(verbs: argparse._SubParsersAction) -> None:
    e = verbs.add_parser("eval", help="score a model on every task of a dataset split",
                         description="Generate and score every task of a split: text answers "
                                     "are greedy; --temperature/--top-k/--cfg-scale/--seed set "
                                     "image sampling. Writes metrics.json, report.md, "
                                     "samples.png and predictions.jsonl (docs/evaluation.md).")
    _add_model_data_args(e, "evaluate", "eval-<split>")
    e.add_argument("--max-per-task", type=int, help="evaluate the first N samples of each task")
    e.add_argument("--batch-size", type=int, default=32, help="samples per generation batch "
                   "(default 32; image seeds depend on it)")
    e.add_argument("--max-new-tokens", type=int, default=96,
                   help="longest text answer in tokens (default 96: a task-span answer with two "
                        "boxes is about 45)")
    _add_sampling_args(e, temperature=1.0, cfg_scale=3.0)
    e.set_defaults(func=cmd_eval)


def cmd_analyze(args: argparse.Namespace) -> int:
    import shlex

    predictor, samples, data, out = _model_and_split(
        args, "analysis", batches=args.batches, batch_size=args.batch_size)
    result = run_analysis(predictor.model, predictor.encoder, samples, batches=args.batches,
                          batch_size=args.batch_size, seed=args.seed)
    result.settings.update(split=args.split, model=str(args.model), data=str(data))
    command = shlex.join(["utamoe", "analyze", "--model", str(args.model), "--data", str(data),
                          "--split", args.split, "--out", str(out), "--batches",
                          str(args.batches), "--batch-size", str(args.batch_size), "--seed",
                          str(args.seed), "--device", args.device])
    paths = write_analysis_outputs(result, out, command=command)
    print_analysis_summary(result, paths)
    return 0


def _add_analyze_verb(verbs: argparse._SubParsersAction) -> None:
    a = verbs.add_parser("analyze", help="task-conflict gradients and routing of a model on a split",
                         description="Cosine between the understanding- and generation-loss "
                                     "gradients per layer and module, and where each task's "
                                     "tokens are routed. Writes conflict.json, routing.json, "
                                     "analysis.md, conflict.png and routing.png "
                                     "(docs/analysis.md).")
    _add_model_data_args(a, "analyse", "analysis")
    a.add_argument("--batches", type=int, default=4,
                   help="batch pairs for the gradients, batches per task for routing (default 4)")
    a.add_argument("--batch-size", type=int, default=16, help="samples per batch (default 16)")
    a.add_argument("--seed", type=int, default=0, help="which samples go in the batches (default 0)")
    a.add_argument("--device", default="cpu", help="torch device (default cpu)")
    a.set_defaults(func=cmd_analyze)
