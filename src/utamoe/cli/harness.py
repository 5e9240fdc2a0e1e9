"""`utamoe geneval` and `utamoe dpg-bench`: a model's images for GenEval and DPG-Bench, written in
the layouts their own scorers read (utamoe.eval.image_benchmarks), with the settings recorded."""

from __future__ import annotations

import argparse

from utamoe.cli.infer import _add_sampling_args, _sampling
from utamoe.eval.image_benchmarks import (
    SETTINGS,
    read_dpg_prompts,
    read_geneval_metadata,
    write_dpg_bench,
    write_geneval,
)
from utamoe.infer.predictor import Predictor


def cmd_geneval(args: argparse.Namespace) -> int:
    metadata = read_geneval_metadata(args.metadata)
    predictor = Predictor.load(args.model, args.device)
    write_geneval(predictor, metadata, args.out, args.n_samples, _sampling(args), args.batch_size,
                  source=str(args.metadata))
    print(f"wrote {len(metadata)} prompt folders x {args.n_samples} samples to {args.out} "
          f"(settings in {args.out}/{SETTINGS}); score them with GenEval's "
          f"evaluation/evaluate_images.py {args.out}")
    return 0


def cmd_dpg_bench(args: argparse.Namespace) -> int:
    prompts = read_dpg_prompts(args.prompts)
    predictor = Predictor.load(args.model, args.device)
    write_dpg_bench(predictor, prompts, args.out, _sampling(args), args.batch_size,
                    source=str(args.prompts))
    print(f"wrote {len(prompts)} grids of 2 x 2 samples to {args.out} (settings in "
          f"{args.out}/{SETTINGS}); score them with DPG-Bench's compute_dpg_bench.py "
          f"--image-root-path {args.out} --resolution {predictor.processor.size}")
    return 0


def _add_harness_verbs(verbs: argparse._SubParsersAction) -> None:
    g = verbs.add_parser("geneval", help="images for GenEval, in its layout",
                         description="Read GenEval's evaluation_metadata.jsonl and write "
                                     "OUT/00000/{metadata.jsonl, samples/0000.png ...} for its "
                                     "evaluate_images.py (docs/evaluation.md).")
    g.add_argument("--model", required=True, help="model directory (e.g. RUN/model)")
    g.add_argument("--metadata", required=True, help="GenEval's evaluation_metadata.jsonl")
    g.add_argument("--out", required=True, help="output folder (a stopped run continues)")
    g.add_argument("--n-samples", type=int, default=4, help="samples per prompt (default 4)")
    g.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    _add_sampling_args(g, temperature=1.0, cfg_scale=3.0)
    g.set_defaults(func=cmd_geneval)
    d = verbs.add_parser("dpg-bench", help="images for DPG-Bench, in its layout",
                         description="Read DPG-Bench's prompts/NAME.txt files and write OUT/NAME.png, "
                                     "4 samples as a 2 x 2 grid (docs/evaluation.md).")
    d.add_argument("--model", required=True, help="model directory (e.g. RUN/model)")
    d.add_argument("--prompts", required=True, help="DPG-Bench's prompts folder (NAME.txt files)")
    d.add_argument("--out", required=True, help="output folder (a stopped run continues)")
    d.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    _add_sampling_args(d, temperature=1.0, cfg_scale=3.0)
    d.set_defaults(func=cmd_dpg_bench)
