"""`utamoe generate`, `answer` and `chat`: a trained model on the user's prompts and images,
and the sampling arguments they (and `eval`) share."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from utamoe.chat import ChatSession, model_reply, run_chat
from utamoe.data.formats import MAX_IMAGE_PIXELS
from utamoe.infer.checks import InputError
from utamoe.infer.predictor import Predictor
from utamoe.infer.sampling import SamplingConfig
from utamoe.tasks_exec import ExecContext, SpanRouter, executors_from_config
from utamoe.vision.images import ImageTooLarge, ImageUnreadable
from utamoe.vision.images import read_image as read_image_file


def _add_sampling_args(p: argparse.ArgumentParser, temperature: float, cfg_scale: float | None) -> None:
    p.add_argument("--temperature", type=float, default=temperature,
                   help=f"sampling temperature, 0 = greedy (default {temperature})")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="keep the most likely tokens holding this probability mass (1 = all)")
    if cfg_scale is not None:
        p.add_argument("--cfg-scale", type=float, default=cfg_scale,
                       help=f"classifier-free guidance scale, 1 = none (default {cfg_scale})")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _sampling(args: argparse.Namespace):
    return SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          cfg_scale=getattr(args, "cfg_scale", 1.0), seed=args.seed)


def read_image(path: str):
    """An image file as an HxWx3 uint8 array (any size and mode: the model's processor resizes)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist")
    try:
        return read_image_file(path, MAX_IMAGE_PIXELS)
    except ImageTooLarge as err:
        got = f" ({err.size[0]}x{err.size[1]})" if err.size else ""
        raise InputError(f"image {path} has more than {MAX_IMAGE_PIXELS:,} pixels; shrink it "
                         f"first{got}") from err
    except ImageUnreadable as err:
        raise InputError(f"cannot read image {path}: {err}") from err


def output_paths(out: str, n_prompts: int, n_images: int):
    """OUT itself for one image; OUT_<prompt>_<image>.png for several."""
    from pathlib import Path

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out} must end in .png")
    if n_prompts * n_images == 1:
        return [[out]]
    return [[out.with_name(f"{out.stem}_{i}_{j}.png") for j in range(n_images)]
            for i in range(n_prompts)]


def cmd_generate(args: argparse.Namespace) -> int:
    from PIL import Image

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
    c.add_argument("--max-new-tokens", type=int, default=96,
                   help="longest answer in tokens (default 96: a span answer with two boxes is "
                        "about 45)")
    c.add_argument("--executor-timeout", type=float, default=300.0,
                   help="seconds an executor may run before its span is reported as timed out "
                        "(default 300)")
    _add_sampling_args(c, temperature=0.0, cfg_scale=None)
    c.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.max_new_tokens < 1 or not args.executor_timeout > 0:
        raise InputError("--max-new-tokens must be at least 1 and --executor-timeout > 0")
    predictor = Predictor.load(args.model, args.device)
    sampling = dataclasses.replace(_sampling(args), max_new_tokens=args.max_new_tokens)
    reply = model_reply(predictor, args.task, sampling)
    specs = dict(item.partition("=")[::2] for item in args.executor)
    router = SpanRouter(executors_from_config(specs, ExecContext(predictor, args.device)),
                        timeout_s=args.executor_timeout)
    session = ChatSession(reply, router, Path(args.out))
    if args.image:
        session.attach(read_image(args.image))
    tty = sys.stdin.isatty()
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 become U+FFFD, not a crash
        sys.stdin.reconfigure(errors="replace")
    run_chat(session, sys.stdin, print, read_image,
             prompt=(lambda: print("you> ", end="", flush=True)) if tty else (lambda: None))
    return 0
