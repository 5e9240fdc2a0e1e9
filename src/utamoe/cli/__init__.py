"""The `utamoe` command line: one small function per verb, one file per group of verbs.

Each verb registers its arguments in `build_parser` and is run by a `cmd_<verb>`
function; the verbs' modules import what they use at the top (the import graph is what a
reader sees), except `serve`, which imports FastAPI (the optional `serve` extra) when it runs.
Every verb that runs a model goes through utamoe.infer.Predictor.
"""

from __future__ import annotations

import argparse
import sys

from utamoe import __version__
from utamoe.cli.data import _add_data_verb
from utamoe.cli.evaluate import _add_analyze_verb, _add_eval_verb
from utamoe.cli.harness import _add_harness_verbs
from utamoe.cli.infer import _add_inference_verbs
from utamoe.cli.serve import _add_serve_verb
from utamoe.cli.training import _add_training_verbs
from utamoe.config import ConfigError
from utamoe.data.formats import DataFormatError
from utamoe.infer.checks import InputError


def cmd_version(args: argparse.Namespace) -> int:
    import torch

    print(f"utamoe {__version__} (torch {torch.__version__})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="utamoe",
        description="Unified multimodal models with task-aware mixture-of-experts.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser("version", help="print the utamoe and torch versions")
    p.set_defaults(func=cmd_version)
    _add_data_verb(verbs)
    _add_inference_verbs(verbs)
    _add_eval_verb(verbs)
    _add_analyze_verb(verbs)
    _add_harness_verbs(verbs)
    _add_training_verbs(verbs)
    _add_serve_verb(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataFormatError, InputError, OSError) as err:
        # Bad input, named by the error itself: no traceback for a user's mistake.
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before training installed its own handler
        print("interrupted", file=sys.stderr)
        return 130

