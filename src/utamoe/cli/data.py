"""`utamoe data`: write the ShapesWorld benchmark, or check a dataset directory."""

from __future__ import annotations

import argparse
import functools
import sys

from utamoe.data.check import check_dataset, print_check
from utamoe.data.formats import DataFormatError
from utamoe.fsutil import check_output_dir
from utamoe.infer.checks import InputError
from utamoe.infer.predictor import Predictor
from utamoe.progress import Progress
from utamoe.shapes import ShapesWorldConfig, total_samples, write_dataset
from utamoe.shapes.world import ALL_TASKS, DEFAULT_SIZES


def _parse_sizes(items: list[str] | None) -> dict[str, int]:
    """['train=100', 'heldout=0'] -> {'train': 100, 'heldout': 0}."""
    sizes = {}
    for item in items or []:
        split, _, n = item.partition("=")
        if not split or not n.isdigit():
            raise InputError(f"--sizes takes SPLIT=N (samples per task), got '{item}'")
        sizes[split] = int(n)
    return sizes


def cmd_data_shapes(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    out = Path(args.out)
    if out.exists() and any(out.glob("*.jsonl")) and not args.force:
        print(f"error: {out} already holds a dataset; pass --force to overwrite it",
              file=sys.stderr)
        return 1
    if not args.force:  # a dataset is written into a new or empty folder, never among other files
        check_output_dir(out, ("dataset.json",), "dataset")
    config = ShapesWorldConfig(seed=args.seed, image_size=args.image_size,
                               sizes={**DEFAULT_SIZES, **_parse_sizes(args.sizes)},
                               tasks=tuple(args.tasks) if args.tasks else ALL_TASKS)
    start = time.perf_counter()
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, unit="sample") as bar:
        job = bar.add_task("ShapesWorld", total=total_samples(config))
        counts = write_dataset(out, config, progress=lambda n: bar.advance(job, n))
    seconds = time.perf_counter() - start
    total = sum(counts.values())
    print(f"wrote {total} samples ({', '.join(f'{k}: {v}' for k, v in counts.items())}) to "
          f"{out} in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} samples/s)")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    lengths = limit = None
    if args.model:  # sequence lengths against this model's tokenizer and positions
        predictor = Predictor.load(args.model)
        limit = getattr(predictor.model.lm.config, "max_position_embeddings", None)
        lengths = functools.partial(predictor.encoder.lengths, codes=predictor.code_grid ** 2)
    try:
        result = check_dataset(args.dir, max_errors=args.max_errors, lengths=lengths, limit=limit)
    except DataFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_check(result)
    return 1 if result.n_errors else 0


def _add_data_verb(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("data", help="generate or check datasets in the utamoe format")
    sub = p.add_subparsers(dest="data_verb", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("shapes", help="write the ShapesWorld benchmark (see docs/shapesworld.md)")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--sizes", nargs="+", metavar="SPLIT=N",
                   help="samples per task for a split, e.g. train=2000 val=200 heldout=0 "
                        "(defaults: train=2000 val=200 test=200 heldout=200)")
    s.add_argument("--image-size", type=int, default=48, help="image side in pixels (default 48)")
    s.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="tasks to generate (default: all ten: caption vqa pope grounding t2i "
                        "edit, and UnifiedMLLM's reason_edit seg layout dialog)")
    s.add_argument("--force", action="store_true", help="overwrite an existing dataset")
    s.set_defaults(func=cmd_data_shapes)
    c = sub.add_parser("check", help="validate a dataset directory and summarise it")
    c.add_argument("dir", help="dataset directory (one <split>.jsonl per split)")
    c.add_argument("--max-errors", type=int, default=5,
                   help="error messages to show per split (all are counted)")
    c.add_argument("--model", help="also check that every sample fits this model's positions "
                                   "(a model directory; its tokenizer counts the tokens)")
    c.set_defaults(func=cmd_data_check)
