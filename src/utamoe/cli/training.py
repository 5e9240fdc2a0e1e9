"""`utamoe demo`, `train` and `tokenizer train`: the training verbs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utamoe.data.formats import find_benchmark
from utamoe.demo import run_demo
from utamoe.fsutil import WriteFailed, check_replaceable
from utamoe.infer.checks import InputError
from utamoe.train.codec import DiskImages, format_report, train_tokenizer
from utamoe.train.config import load_config
from utamoe.train.run_dir import check_run_dir, resume_overrides
from utamoe.train.trainer import Trainer, TrainingStopped
from utamoe.vision.tokenizer import IS_OWN as TOKENIZER_IS_OWN
from utamoe.vision.tokenizer import TokenizerConfig


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            print(f"error: {run_dir} is not a run directory (no config.yaml)", file=sys.stderr)
            return 2
        if args.force:
            print("error: --force starts over and --resume continues; give one of them",
                  file=sys.stderr)
            return 2
        cfg = load_config(str(run_dir / "config.yaml"), resume_overrides(args.set, run_dir))
    else:
        if not args.config:
            print("error: give --config FILE (or --resume RUN_DIR)", file=sys.stderr)
            return 2
        cfg = load_config(args.config, args.set)
        run_dir = Path(args.out or cfg.run.out)
        check_run_dir(run_dir, args.force)
    try:
        model_dir = Trainer(cfg, run_dir).run(resume=bool(args.resume), fresh=args.force)
    except TrainingStopped as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return 3
    except WriteFailed as err:  # a full disk: the last complete checkpoint is intact
        print(f"error: {err}; then continue with `utamoe train --resume {run_dir}`",
              file=sys.stderr)
        return 2
    print(f"model written to {model_dir}")
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    for name in ("steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    config = TokenizerConfig.quick() if args.quick else TokenizerConfig()
    # --out is checked before the split is indexed (train_tokenizer checks again before training)
    check_replaceable(args.out, TOKENIZER_IS_OWN, "a VQ image tokenizer directory", args.force)
    data, evals = _codec_data(Path(args.data), config.image_size)
    _, report = train_tokenizer(data, config, out_dir=args.out, steps=args.steps,
                                batch_size=args.batch_size, seed=args.seed, eval_images=evals,
                                workers=args.workers, replace=args.force)
    print(format_report(report))
    print(f"tokenizer written to {args.out}")
    return 0


def _codec_data(root: Path, size: int) -> tuple:
    """(train data, eval images) of `train_tokenizer`: a benchmark's generated data in memory as
    always; any other dataset's images read from disk per step (memory independent of size)."""
    if find_benchmark(root) is not None:
        return root, None
    splits = [root / f"{n}.jsonl" for n in ("test", "val") if (root / f"{n}.jsonl").is_file()]
    return (DiskImages.of_split(root / "train.jsonl", size),
            DiskImages.of_split(splits[0], size) if splits else None)


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args.out, quick=args.quick, seed=args.seed, force=args.force)
    return 0


def _add_training_verbs(verbs: argparse._SubParsersAction) -> None:
    d = verbs.add_parser("demo", help="the whole path on ShapesWorld: data, tokenizers, UTAMoE "
                                      "recipe, evaluation (about 10 minutes on 2 CPU cores)")
    d.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    d.add_argument("--quick", action="store_true", help="same path, tiny sizes (~1 minute)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--force", action="store_true",
                   help="start over in a folder that holds a demo of another seed or size")
    d.set_defaults(func=cmd_demo)
    t = verbs.add_parser("train", help="train a model from a YAML recipe (or resume a run)")
    t.add_argument("--config", help="YAML experiment config (see configs/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted key, e.g. train.lr=3e-4 (repeatable)")
    t.add_argument("--out", help="run directory (default: run.out from the config)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    t.add_argument("--force", action="store_true", help="start over in a directory that holds a run")
    t.set_defaults(func=cmd_train)
    tok = verbs.add_parser("tokenizer", help="image tokenizer tools")
    sub = tok.add_subparsers(dest="tokenizer_verb", metavar="COMMAND")
    sub.required = True
    tr = sub.add_parser("train", help="train the VQ image tokenizer on a dataset directory")
    tr.add_argument("--data", required=True, help="dataset directory (train split used)")
    tr.add_argument("--out", required=True, help="output directory for the tokenizer")
    tr.add_argument("--steps", type=int, help="training steps (default: the config's)")
    tr.add_argument("--batch-size", type=int, help="batch size (default: the config's)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--quick", action="store_true", help="the ~10 s smoke-test setting")
    tr.add_argument("--workers", type=int, default=0,
                    help="processes reading images ahead of training (data that is not a "
                         "benchmark's is read from disk per step; default 0)")
    tr.add_argument("--force", action="store_true",
                    help="replace whatever is at --out (without it, only an earlier tokenizer or "
                         "an empty directory is replaced)")
    tr.set_defaults(func=cmd_tokenizer_train)
