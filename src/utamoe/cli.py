"""The `utamoe` command line: one small function per verb.

Each verb registers its arguments in `build_parser` and is run by a `cmd_<verb>`
function that imports its heavy dependencies lazily, so `utamoe --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from utamoe import __version__


def cmd_version(args: argparse.Namespace) -> int:
    import torch

    print(f"utamoe {__version__} (torch {torch.__version__})")
    return 0


def _parse_sizes(items: list[str] | None) -> dict[str, int]:
    """['train=100', 'heldout=0'] -> {'train': 100, 'heldout': 0}."""
    from utamoe.predict import InputError

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

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from utamoe.data.shapes import ShapesWorldConfig, total_samples, write_dataset
    from utamoe.data.shapes.world import ALL_TASKS, DEFAULT_SIZES

    out = Path(args.out)
    if out.exists() and any(out.glob("*.jsonl")) and not args.force:
        print(f"error: {out} already holds a dataset; pass --force to overwrite it",
              file=sys.stderr)
        return 1
    config = ShapesWorldConfig(seed=args.seed, image_size=args.image_size,
                               sizes={**DEFAULT_SIZES, **_parse_sizes(args.sizes)},
                               tasks=tuple(args.tasks) if args.tasks else ALL_TASKS)
    start = time.perf_counter()
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        job = bar.add_task("ShapesWorld", total=total_samples(config))
        counts = write_dataset(out, config, progress=lambda n: bar.advance(job, n))
    seconds = time.perf_counter() - start
    total = sum(counts.values())
    print(f"wrote {total} samples ({', '.join(f'{k}: {v}' for k, v in counts.items())}) to "
          f"{out} in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} samples/s)")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from utamoe.data.check import check_dataset, print_check
    from utamoe.data.formats import DataFormatError

    try:
        result = check_dataset(args.dir, max_errors=args.max_errors)
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
    c.set_defaults(func=cmd_data_check)


def _add_sampling_args(p: argparse.ArgumentParser, temperature: float, cfg_scale: float | None) -> None:
    p.add_argument("--temperature", type=float, default=temperature,
                   help=f"sampling temperature, 0 = greedy (default {temperature})")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    if cfg_scale is not None:
        p.add_argument("--cfg-scale", type=float, default=cfg_scale,
                       help=f"classifier-free guidance scale, 1 = none (default {cfg_scale})")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _sampling(args: argparse.Namespace):
    from utamoe.model.generation import SamplingConfig

    return SamplingConfig(temperature=args.temperature, top_k=args.top_k,
                          cfg_scale=getattr(args, "cfg_scale", 1.0), seed=args.seed)


def read_image(path: str):
    """An image file as an HxWx3 uint8 array (any size and mode: the model's processor resizes)."""
    import warnings
    from pathlib import Path

    from PIL import Image, UnidentifiedImageError

    from utamoe.data.formats import MAX_IMAGE_PIXELS
    from utamoe.predict import InputError
    from utamoe.vision.processor import to_rgb

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist")
    too_big = f"image {path} has more than {MAX_IMAGE_PIXELS:,} pixels; shrink it first"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                    raise InputError(f"{too_big} ({im.size[0]}x{im.size[1]})")
                return to_rgb(im)
    except Image.DecompressionBombError as err:
        raise InputError(too_big) from err
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {err}") from err


def output_paths(out: str, n_prompts: int, n_images: int):
    """OUT itself for one image; OUT_<prompt>_<image>.png for several."""
    from pathlib import Path

    from utamoe.predict import InputError

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out} must end in .png")
    if n_prompts * n_images == 1:
        return [[out]]
    return [[out.with_name(f"{out.stem}_{i}_{j}.png") for j in range(n_images)]
            for i in range(n_prompts)]


def cmd_generate(args: argparse.Namespace) -> int:
    import dataclasses

    from PIL import Image

    from utamoe.predict import InputError, Predictor

    if args.num_images < 1:
        raise InputError(f"--num-images must be at least 1, got {args.num_images}")
    predictor = Predictor.load(args.model, args.device)
    edit = read_image(args.edit_image) if args.edit_image else None
    paths = output_paths(args.out, len(args.prompt), args.num_images)
    sampling = _sampling(args)
    for j in range(args.num_images):  # image j of every prompt uses seed + j
        images = predictor.generate(args.prompt, dataclasses.replace(sampling, seed=sampling.seed + j),
                                    images=edit)
        for i, img in enumerate(images):
            paths[i][j].parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(paths[i][j])
            print(paths[i][j])
    return 0


def cmd_answer(args: argparse.Namespace) -> int:
    from utamoe.predict import Predictor

    predictor = Predictor.load(args.model, args.device)
    image = read_image(args.image)
    answers = predictor.answer(image, args.question, args.task, _sampling(args))
    for question, answer in zip(args.question, answers):
        print(f"{question}\t{answer}")
    return 0


def _add_inference_verbs(verbs: argparse._SubParsersAction) -> None:
    g = verbs.add_parser("generate", help="draw images from text prompts (or edit an image)")
    g.add_argument("--model", required=True, help="model directory (e.g. RUN/model)")
    g.add_argument("--prompt", required=True, action="append",
                   help="a scene description, or an edit instruction with --edit-image (repeatable)")
    g.add_argument("--out", required=True,
                   help="output PNG; with several prompts/images, OUT_<prompt>_<image>.png")
    g.add_argument("--num-images", type=int, default=1, help="images per prompt (default 1)")
    g.add_argument("--edit-image", help="input image to edit (makes the prompts edit instructions)")
    _add_sampling_args(g, temperature=1.0, cfg_scale=3.0)
    g.set_defaults(func=cmd_generate)
    a = verbs.add_parser("answer", help="answer questions about an image")
    a.add_argument("--model", required=True, help="model directory (e.g. RUN/model)")
    a.add_argument("--image", required=True, help="input PNG")
    a.add_argument("--question", required=True, action="append", help="question (repeatable)")
    a.add_argument("--task", default="vqa",
                   help="text task the question belongs to: a registered task such as vqa, "
                        "caption, pope, grounding (default vqa)")
    _add_sampling_args(a, temperature=0.0, cfg_scale=None)
    a.set_defaults(func=cmd_answer)
    c = verbs.add_parser("chat", help="a multi-turn chat whose task spans run executors "
                                      "(docs/unifiedmllm.md); reads turns from stdin")
    c.add_argument("--model", required=True, help="model directory (e.g. RUN/model)")
    c.add_argument("--image", help="an image for the first turn (or /image PATH in the chat)")
    c.add_argument("--out", default="chat-out", help="where executors' images and masks go")
    c.add_argument("--task", default="dialog", help="the conversation task (default dialog)")
    c.add_argument("--executor", action="append", default=[], metavar="TASK=SPEC",
                   help="executor of a task span, e.g. edit=model_edit (docs/executors.md)")
    _add_sampling_args(c, temperature=0.0, cfg_scale=None)
    c.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from pathlib import Path

    from utamoe.chat import ChatSession, model_reply, run_chat
    from utamoe.predict import Predictor
    from utamoe.tasks_exec import ExecContext, TaskRouter, executors_from_config

    predictor = Predictor.load(args.model, args.device)
    reply = model_reply(predictor, args.task, _sampling(args))
    specs = dict(item.partition("=")[::2] for item in args.executor)
    router = TaskRouter(executors_from_config(specs, ExecContext(predictor, args.device)))
    session = ChatSession(reply, router, Path(args.out))
    if args.image:
        session.attach(read_image(args.image))
    tty = sys.stdin.isatty()
    run_chat(session, sys.stdin, print, read_image,
             prompt=(lambda: print("you> ", end="", flush=True)) if tty else (lambda: None))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import shlex

    from utamoe.data.shapes.benchmark import world_config_of
    from utamoe.eval.report import print_summary, write_eval_outputs
    from utamoe.eval.run import EvalSampling, evaluate_model

    predictor, samples, data, out = _model_and_split(
        args, f"eval-{args.split}", batch_size=args.batch_size, max_per_task=args.max_per_task,
        max_new_tokens=args.max_new_tokens)
    sampling = EvalSampling(temperature=args.temperature, top_k=args.top_k,
                            cfg_scale=args.cfg_scale, seed=args.seed,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    result = evaluate_model(predictor, samples, sampling, max_per_task=args.max_per_task,
                            world_config=world_config_of(data))
    result.split, result.model, result.data = args.split, str(args.model), str(data)
    command = ["utamoe", "eval", "--model", str(args.model), "--data", str(data), "--split",
               args.split, "--out", str(out), *sampling.cli_args(), "--device", args.device]
    if args.max_per_task:
        command += ["--max-per-task", str(args.max_per_task)]
    paths = write_eval_outputs(result, out, command=shlex.join(command))
    print_summary(result, paths)
    return 0


def _model_and_split(args: argparse.Namespace, out_name: str, **counts):
    """Check counts >= 1, the split exists; load the model and the split's samples.

    Returns (predictor, samples, data dir, output dir)."""
    from pathlib import Path

    from utamoe.data.formats import DataFormatError, list_splits, load_split
    from utamoe.predict import InputError, Predictor

    for name, value in counts.items():
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    data = Path(args.data)
    splits = list_splits(data)
    if args.split not in splits:
        raise DataFormatError(data, None, f"no split '{args.split}' here (found: "
                              f"{', '.join(splits) or 'none'}); pass --split with one of them")
    predictor = Predictor.load(args.model, args.device)
    samples, _ = load_split(data / f"{args.split}.jsonl")
    if not samples:
        raise InputError(f"{data / (args.split + '.jsonl')} has no samples; pass --split with a "
                         "split that has some")
    out = Path(args.out) if args.out else Path(args.model).resolve().parent / out_name
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
    e.add_argument("--max-new-tokens", type=int, default=48,
                   help="longest text answer in tokens (default 48)")
    _add_sampling_args(e, temperature=1.0, cfg_scale=3.0)
    e.set_defaults(func=cmd_eval)


def cmd_analyze(args: argparse.Namespace) -> int:
    import shlex

    from utamoe.eval.analysis_report import print_analysis_summary, write_analysis_outputs
    from utamoe.eval.analyze import run_analysis

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


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from utamoe.train.config import load_config
    from utamoe.train.run_dir import ARTEFACTS, resume_overrides
    from utamoe.train.trainer import Trainer, TrainingStopped

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
        if any((run_dir / a).exists() for a in ARTEFACTS) and not args.force:
            print(f"error: {run_dir} already holds a run; continue it with --resume {run_dir} "
                  f"or pass --force to start over (its checkpoints, tokenizers, log and model "
                  f"are removed)", file=sys.stderr)
            return 2
    try:
        model_dir = Trainer(cfg, run_dir).run(resume=bool(args.resume), fresh=args.force)
    except TrainingStopped as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return 3
    print(f"model written to {model_dir}")
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from utamoe.predict import InputError
    from utamoe.vision.tokenizer import TokenizerConfig
    from utamoe.vision.tokenizer_train import format_report, train_tokenizer

    for name in ("steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    config = TokenizerConfig.quick() if args.quick else TokenizerConfig()
    _, report = train_tokenizer(args.data, config, out_dir=args.out, steps=args.steps,
                                batch_size=args.batch_size, seed=args.seed)
    print(format_report(report))
    print(f"tokenizer written to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from utamoe.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed)
    return 0


def _add_training_verbs(verbs: argparse._SubParsersAction) -> None:
    d = verbs.add_parser("demo", help="the whole path on ShapesWorld: data, tokenizers, UTAMoE "
                                      "recipe, evaluation (about 10 minutes on 2 CPU cores)")
    d.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    d.add_argument("--quick", action="store_true", help="same path, tiny sizes (~1 minute)")
    d.add_argument("--seed", type=int, default=0)
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
    tr.set_defaults(func=cmd_tokenizer_train)


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from utamoe.predict import InputError, Predictor
    from utamoe.serve.app import ServeConfig, create_app

    key = args.api_key or os.environ.get("UTAMOE_API_KEY")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"warning: listening on {args.host} without an API key (--api-key or "
              "UTAMOE_API_KEY); anyone who reaches it can use the model", file=sys.stderr)
    for name in ("max_batch", "queue_size"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    predictor = Predictor.load(args.model, args.device)
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                         queue_size=args.queue_size, timeout_s=args.timeout, api_key=key)
    app = create_app(predictor, config, model_dir=str(args.model))
    print(f"serving {args.model} on http://{args.host}:{args.port} (page /, API docs /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=int(args.timeout))
    return 0


def _add_serve_verb(verbs: argparse._SubParsersAction) -> None:
    s = verbs.add_parser("serve", help="HTTP API and web page for a model, with request batching",
                         description="Serve a model: JSON API (/docs), Prometheus metrics "
                                     "(/metrics) and a web page (/). See docs/serve.md.")
    s.add_argument("--model", required=True, help="model directory (e.g. RUN/model)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--api-key", help="require this X-API-Key header (or set UTAMOE_API_KEY)")
    s.add_argument("--device", default="cpu", help="torch device (default cpu)")
    s.add_argument("--max-batch", type=int, default=16, help="requests per batch (default 16)")
    s.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a batch waits for more requests (default 10 ms)")
    s.add_argument("--queue-size", type=int, default=64, help="waiting requests before 503 (default 64)")
    s.add_argument("--timeout", type=float, default=120.0, help="a request's deadline in s (default 120)")
    s.set_defaults(func=cmd_serve)


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
    _add_training_verbs(verbs)
    _add_serve_verb(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from utamoe.config import ConfigError
    from utamoe.data.formats import DataFormatError
    from utamoe.predict import InputError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataFormatError, InputError, OSError) as err:
        # Bad input, named by the error itself: no traceback for a user's mistake.
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before training installed its own handler
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
