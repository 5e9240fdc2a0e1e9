"""A pure predictor: load a model once, then answer questions about images and draw or edit
images, batched, from arrays or PIL images to text and arrays. No file is read or written
after loading: file I/O belongs to the callers (the CLI verbs, the server).

    from utamoe.predict import Predictor
    p = Predictor.load("runs/demo/model")
    p.answer(image, ["what color is the circle?", "how many shapes are there?"])
    images = p.generate(["a red circle at the top left"], SamplingConfig(seed=1))
    edited = p.edit(image, ["make the circle blue"])

Images may be of any size and mode (PIL, or arrays HxW / HxWx1 / HxWx3 / HxWx4): the
model's image processor converts and resizes them. Generated images are HxWx3 uint8
at the model's resolution. Sampling is described by `SamplingConfig` (greedy text by
default); a call with the same inputs and seed returns the same outputs.

Threads: one Predictor may be shared by several threads. Its calls are serialised by
an internal lock (a model call already uses every core through PyTorch's intra-op
threads, and an oracle-routed model binds a routing session to its layers for the
duration of a call), so concurrent calls are safe but do not run in parallel; to batch
concurrent requests, collect them and make one call (as the server does).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from utamoe.model.generation import SamplingConfig, generate_images, generate_text
from utamoe.tasks import get_task


class InputError(ValueError):
    """Bad input to a predictor or a CLI verb (a path, an image, a prompt); the message says
    what to do."""


def _texts(texts: Sequence[str] | str, what: str) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise InputError(f"give at least one {what}")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"{what} number {i + 1} is empty")
    return [t.strip() for t in texts]


def _is_one_image(images) -> bool:
    from PIL import Image

    return isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)
                                               and images.dtype != object)


class Predictor:
    def __init__(self, model, text_tokenizer):
        if model.image_tokenizer is None:
            raise InputError("the model has no image tokenizer; it cannot read or draw images")
        self.model = model.eval()
        self.tokenizer = text_tokenizer
        self.encoder = model.sequence_encoder(text_tokenizer)
        self.processor = model.processor
        self._lock = threading.Lock()

    @property
    def lock(self) -> threading.Lock:
        """The lock every call holds: code that drives the model directly (an executor's own
        decoding loop) holds it too, to be as thread-safe as a Predictor call."""
        return self._lock

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu") -> Predictor:
        """A predictor for a directory written by `utamoe train` / `utamoe demo` (DIR/model)."""
        from utamoe.model.io import load_model_dir

        path = Path(model_dir)
        if not path.is_dir():
            raise InputError(f"model directory {path} does not exist (give the DIR/model that "
                             f"`utamoe demo` or `utamoe train` wrote)")
        _check_device(device)
        model, tok = load_model_dir(path, device)
        if tok is None:
            raise InputError(f"{path} has no text_tokenizer/ directory; re-save the model with "
                             "its tokenizer")
        if model.image_tokenizer is None:
            raise InputError(f"{path} has no image_tokenizer/ directory; it cannot read or draw "
                             "images")
        return cls(model, tok)

    def _images(self, images, n: int, what: str) -> list[np.ndarray]:
        """One image for every row, or one per row; each converted by the processor."""
        if images is None:
            raise InputError(f"{what} needs an input image")
        rows = [images] * n if _is_one_image(images) else list(images)
        if len(rows) != n:
            raise InputError(f"{len(rows)} images for {n} {what}s; give one image, or one per {what}")
        try:
            return [self.processor(img) for img in rows]
        except (ValueError, TypeError) as err:
            raise InputError(f"cannot use the image for {what}: {err}") from err

    def _fits(self, task: str, texts: list[str], what: str, new_tokens: int) -> None:
        """A prompt plus what the model must generate has to fit the model's positions."""
        limit = getattr(self.model.lm.config, "max_position_embeddings", None)
        if not limit:
            return
        spec = get_task(task)
        image = _blank(self.processor.size) if spec.layout == "answer" and spec.needs_image else None
        codes = [0] * self.model.config.code_grid ** 2 if spec.layout == "edit" else None
        for i, text in enumerate(texts):
            n = len(self.encoder.prefix(task, text, image, input_codes=codes).input_ids)
            if n + new_tokens > limit:
                raise InputError(f"{what} number {i + 1} takes {n} tokens; with the {new_tokens} "
                                 f"tokens to generate that is over the model's {limit} positions; "
                                 f"shorten it")

    def answer(self, images, questions: Sequence[str] | str, task: str = "vqa",
               sampling: SamplingConfig | None = None) -> list[str]:
        """Text answers: one image for all questions or one per question (None for a
        text-only task); `task` is a registered task with a text output."""
        spec = _task(task)
        if spec.output != "text":
            raise InputError(f"task {task!r} produces images; use generate()")
        sampling = check_sampling(sampling or SamplingConfig())
        questions = _texts(questions, "question")
        self._fits(task, questions, "question", sampling.max_new_tokens)
        rows = self._images(images, len(questions), "question") if spec.needs_image \
            else [None] * len(questions)
        with self._lock, torch.no_grad():
            return generate_text(self.model, self.encoder, [task] * len(questions), questions,
                                 rows, sampling)

    def converse(self, histories: Sequence[Sequence], task: str = "dialog",
                 sampling: SamplingConfig | None = None) -> list[str]:
        """The next assistant answer of each conversation: a history is a list of
        utamoe.data.conversations.Turn (user / assistant alternating, ending with a user turn;
        images on user turns). Answers keep their task spans."""
        from utamoe.model.generation import complete_text

        spec = _task(task)
        if spec.output != "text":
            raise InputError(f"task {task!r} produces images; a conversation is a text task")
        sampling = check_sampling(sampling or SamplingConfig())
        seqs = []
        for i, turns in enumerate(histories):
            turns = [_checked_turn(t, self.processor, i) for t in turns]
            if not turns or turns[-1].role != "user":
                raise InputError(f"conversation {i + 1} must end with a user turn to answer")
            try:
                seqs.append(self.encoder.conversation(task, turns))
            except ValueError as err:
                raise InputError(f"conversation {i + 1}: {err}") from None
        limit = getattr(self.model.lm.config, "max_position_embeddings", None)
        for i, seq in enumerate(seqs):
            if limit and len(seq.input_ids) + sampling.max_new_tokens > limit:
                raise InputError(f"conversation {i + 1} takes {len(seq.input_ids)} tokens; with "
                                 f"{sampling.max_new_tokens} to generate that is over the model's "
                                 f"{limit} positions; start a new conversation")
        if not seqs:
            raise InputError("give at least one conversation")
        with self._lock, torch.no_grad():
            return complete_text(self.model, self.encoder, seqs, sampling)

    def generate(self, prompts: Sequence[str] | str, sampling: SamplingConfig | None = None,
                 images=None, task: str | None = None) -> list[np.ndarray]:
        """One image per prompt (t2i; with `images`, the prompts are edit instructions)."""
        task = task or ("t2i" if images is None else "edit")
        spec = _task(task)
        if spec.output != "image":
            raise InputError(f"task {task!r} produces text; use answer()")
        sampling = check_sampling(sampling or SamplingConfig())
        prompts = _texts(prompts, "prompt")
        self._fits(task, prompts, "prompt", self.model.config.code_grid ** 2)
        edits = self._images(images, len(prompts), "instruction") if spec.needs_image else None
        with self._lock, torch.no_grad():
            return generate_images(self.model, self.encoder, prompts, sampling, edit_images=edits,
                                   task=task)

    def edit(self, images, instructions: Sequence[str] | str,
             sampling: SamplingConfig | None = None) -> list[np.ndarray]:
        """Edited images: one input image for all instructions or one per instruction."""
        return self.generate(instructions, sampling, images=images, task="edit")


def _checked_turn(turn, processor, i: int):
    """A turn with its image through the model's processor; a clear error for a bad one."""
    import dataclasses

    from utamoe.data.conversations import ROLES

    if getattr(turn, "role", None) not in ROLES or not isinstance(getattr(turn, "text", None), str):
        raise InputError(f"conversation {i + 1}: a turn needs a role ({', '.join(ROLES)}) and a "
                         "text (utamoe.data.conversations.Turn)")
    if turn.image is None:
        return turn
    try:
        return dataclasses.replace(turn, image=processor(turn.image))
    except (ValueError, TypeError) as err:
        raise InputError(f"conversation {i + 1}: cannot use the image: {err}") from err


@functools.cache
def _blank(size: int) -> np.ndarray:
    """A blank image, for measuring how long a prompt's sequence is."""
    return np.zeros((size, size, 3), np.uint8)


def _task(name: str):
    from utamoe.config import ConfigError

    try:
        return get_task(name)
    except ConfigError as err:
        raise InputError(str(err)) from None


def check_sampling(cfg: SamplingConfig) -> SamplingConfig:
    """Sampling settings a user typed, checked: no NaN, nothing negative that would silently
    mean something else."""
    import math

    checks = [("temperature", math.isfinite(cfg.temperature) and cfg.temperature >= 0,
               "a number >= 0 (0 = greedy)"),
              ("top_k", cfg.top_k >= 0, "an integer >= 0 (0 = no top-k filter)"),
              ("cfg_scale", math.isfinite(cfg.cfg_scale) and cfg.cfg_scale >= 0,
               "a number >= 0 (1 = no guidance)"),
              ("max_new_tokens", cfg.max_new_tokens >= 1, "an integer >= 1"),
              ("seed", cfg.seed >= 0, "an integer >= 0")]
    for name, ok, want in checks:
        if not ok:
            raise InputError(f"--{name.replace('_', '-')} {getattr(cfg, name)} is invalid: give {want}")
    return cfg


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
