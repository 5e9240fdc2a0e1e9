"""`utamoe data`: write the ShapesWorld benchmark, import a dataset in the field's formats, or
check a dataset directory."""

from __future__ import annotations

import argparse
import functools
import sys

from utamoe.data.check import check_dataset, print_check
from utamoe.data.check_sample import check_sampled
from utamoe.data.formats import DataFormatError
from utamoe.data.importing import KINDS, ImportOptions, ImportReport, run_import
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
    if args.sample is not None and args.sample < 1:
        raise InputError(f"--sample must be at least 1, got {args.sample}")
    lengths = limit = None
    if args.model:  # sequence lengths against this model's tokenizer and positions
        predictor = Predictor.load(args.model)
        limit = getattr(predictor.model.lm.config, "max_position_embeddings", None)
        lengths = functools.partial(predictor.encoder.lengths, codes=predictor.code_grid ** 2)
    try:
        result = (check_dataset(args.dir, max_errors=args.max_errors, lengths=lengths, limit=limit)
                  if args.sample is None
                  else check_sampled(args.dir, args.sample, args.seed, args.max_errors,
                                     lengths=lengths, limit=limit))
    except DataFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_check(result)
    return 1 if result.n_errors else 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    opts = ImportOptions(kind=args.kind, split=args.split, images=args.images, task=args.task,
                         system=args.system, prompt=args.prompt, text_column=args.text_column,
                         image_column=args.image_column, hf_split=args.hf_split,
                         test_every=args.test_every)
    columns = (SpinnerColumn(), TextColumn("{task.description} {task.completed} records"),
               TimeElapsedColumn())
    with Progress(*columns, transient=True, unit="record") as bar:  # a log file gets lines
        job = bar.add_task(f"importing {args.src}", total=None)
        report = run_import(args.src, args.out, opts, force=args.force,
                            progress=lambda n: bar.advance(job, n))
        bar.update(job, total=bar.tasks[0].completed)  # finished: a log file's last line says done
    print_import(report, args.out, opts.split)
    return 0


def print_import(report: ImportReport, out: str, split: str) -> None:
    """What an import mapped, and the unmappable records by reason with the first ones."""
    if report.already_done:
        print("already imported (same source and options); nothing to do (--force redoes it)")
    if report.resumed_at:
        print(f"resumed at source record {report.resumed_at}")
    mapped = "; ".join(f"{s}: " + ", ".join(f"{t} {n}" for t, n in tasks.items())
                       for s, tasks in report.mapped.items()) or "nothing"
    print(f"{report.read} source records read from {report.source}: {mapped} "
          f"({report.conversations} conversations); {report.images_written} images written")
    if report.image_root:
        print(f"images are read from {report.image_root} (image_root in dataset.json; not copied)")
    if report.unmapped:
        print(f"{report.unmapped} records could not be mapped (all of them, with file and index: "
              f"{out}/import/{split}.rejected.jsonl):")
        for reason, n in sorted(report.reasons.items(), key=lambda kv: -kv[1])[:5]:
            print(f"  {n:>8}  {reason}")
        for r in report.rejected:
            print(f"  e.g. {r['source']} record {r['index']}: {r['reason']}")
    print(f"dataset in {out}; check it with `utamoe data check {out}`")


def _add_import_verb(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("import", help="bring LLaVA, messages, text-to-image or Hugging Face data "
                                      "into the utamoe format (docs/data_format.md)")
    i.add_argument("--from", dest="kind", required=True, choices=KINDS,
                   help="source format: llava (JSON/JSONL with conversations), messages "
                        "(LLaMA-Factory / ms-swift JSONL), t2i (ImageFolder metadata.csv/jsonl, "
                        "or a .csv/.jsonl/.parquet of image paths and texts), hf (a dataset saved "
                        "with save_to_disk, or parquet files)")
    i.add_argument("src", help="source file or folder")
    i.add_argument("--out", required=True, help="dataset directory to write")
    i.add_argument("--images", metavar="ROOT", help="folder the source's image paths are relative "
                   "to (default: the source file's folder); used where it is, never copied")
    i.add_argument("--split", default="train", help="split to write (default train)")
    i.add_argument("--test-every", type=int, default=0, metavar="K",
                   help="put every K-th source record in the test split instead (default 0: none)")
    i.add_argument("--task", help="task of the records: instruct (default for llava/messages) or "
                                  "another text task; t2i (default for pairs) or caption")
    i.add_argument("--system", choices=("prepend", "meta"), default="prepend",
                   help="system turns: prepend to the first user turn (default) or keep in meta")
    i.add_argument("--prompt", default="describe the image",
                   help="prompt of caption records made from pairs (--task caption)")
    i.add_argument("--text-column", help="text column of pairs (default: text, caption, prompt "
                                         "or sentence)")
    i.add_argument("--image-column", help="image column (default: file_name, image, image_path, "
                                          "path, file or images)")
    i.add_argument("--hf-split", help="split of a saved DatasetDict to import")
    i.add_argument("--force", action="store_true", help="replace a split that exists; write into "
                   "a folder that holds other files")
    i.set_defaults(func=cmd_data_import)


def _add_data_verb(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("data", help="generate, import or check datasets in the utamoe format")
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
    _add_import_verb(sub)
    c = sub.add_parser("check", help="validate a dataset directory and summarise it")
    c.add_argument("dir", help="dataset directory (one <split>.jsonl per split)")
    c.add_argument("--max-errors", type=int, default=5,
                   help="error messages to show per split (all are counted)")
    c.add_argument("--sample", type=int, metavar="N",
                   help="large datasets: validate every record but decode the images of N random "
                        "records per split only")
    c.add_argument("--seed", type=int, default=0, help="which records --sample decodes (default 0)")
    c.add_argument("--model", help="also check that every sample fits this model's positions "
                                   "(a model directory; its tokenizer counts the tokens)")
    c.set_defaults(func=cmd_data_check)
