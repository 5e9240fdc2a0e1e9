"""The predictor: a loaded model behind one door. Everything that runs a model on user input
(the CLI verbs, evaluation, chat, executors, the server's batcher) comes through here, so every
prompt gets the same checks and every call the same lock. No file is read or written after
loading: file I/O belongs to the callers.

    from utamoe.infer import Predictor, SamplingConfig
    p = Predictor.load("runs/demo/model")
    p.answer(image, ["what color is the circle?", "how many shapes are there?"])
    images = p.generate(["a red circle at the top left"], SamplingConfig(seed=1))
    edited = p.edit(image, ["make the circle blue"])

    reqs = [p.request("vqa", "what color is it?", image), p.request("t2i", "a red circle")]
    results = p.run(reqs, trace=True)     # one mixed batch, each request drawing alone

Images may be of any size and mode (PIL, or arrays HxW / HxWx1 / HxWx3 / HxWx4): the
model's image processor converts and resizes them. Generated images are HxWx3 uint8
at the model's resolution. Sampling is described by `SamplingConfig` (greedy text by
default); a call with the same inputs and seed returns the same outputs. `answer`,
`converse` and `generate` sample their prompts as one batch (one generator, utamoe.infer.
engine's shared sampling); `run` gives each request its own generator.

Threads: one Predictor may be shared by several threads. Its calls are serialised by
an internal lock (a model call already uses every core through PyTorch's intra-op
threads, and an oracle-routed model binds a routing session to its layers for the
duration of a call), so concurrent calls are safe but do not run in parallel; to batch
concurrent requests, collect them and make one `run` call (as the server does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from utamoe.infer.checks import (
    InputError,
    blank,
    check_device,
    check_sampling,
    checked_turn,
    is_one_image,
    task_spec,
    texts,
)
from utamoe.infer.engine import CellConstraint, Engine, Request, Result
from utamoe.infer.sampling import SamplingConfig
from utamoe.infer.scoring import Continuation, continuation_logprobs
from utamoe.model.io import load_model_dir, read_config


class Predictor:
    def __init__(self, model, text_tokenizer):
        if model.image_tokenizer is None:
            raise InputError("the model has no image tokenizer; it cannot read or draw images")
        self.model = model.eval()
        self.tokenizer = text_tokenizer
        self.encoder = model.sequence_encoder(text_tokenizer)
        self.processor = model.processor
        self.engine = Engine(self.model, self.encoder)
        self._lock = threading.Lock()
        # The tasks the model's training saw (from its directory; None when not recorded).
        self.trained_tasks: list[str] | None = None

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu") -> Predictor:
        """A predictor for a directory written by `utamoe train` / `utamoe demo` (DIR/model)."""
        path = Path(model_dir)
        if not path.is_dir():
            raise InputError(f"model directory {path} does not exist (give the DIR/model that "
                             f"`utamoe demo` or `utamoe train` wrote)")
        check_device(device)
        model, tok = load_model_dir(path, device)
        if tok is None:
            raise InputError(f"{path} has no text_tokenizer/ directory; re-save the model with "
                             "its tokenizer")
        if model.image_tokenizer is None:
            raise InputError(f"{path} has no image_tokenizer/ directory; it cannot read or draw "
                             "images")
        predictor = cls(model, tok)
        predictor.trained_tasks = read_config(path)[1].get("trained_tasks")
        return predictor

    # ------------------------------------------------------------------ what the model knows

    @property
    def tasks(self) -> dict[str, str]:
        """The registered tasks this model has a marker for -> their output ("text" / "image")."""
        return {t: task_spec(t).output for t in self.encoder.special.tasks}

    @property
    def code_grid(self) -> int:
        """The side of a generated image's code grid."""
        return self.model.config.code_grid

    @property
    def group_names(self) -> list[str]:
        """The TA-MoE groups of the backbone (the names a trace's group ids index); [] if dense."""
        moe = self.model.config.moe
        return list(moe.group_names) if moe is not None else []

    @property
    def default_text_task(self) -> str:
        """The text task a chat or a harness uses when none is named: `dialog` when the model has
        conversations, else `vqa`, else its first text task."""
        text = [t for t, out in self.tasks.items() if out == "text"]
        for task in ("dialog", "vqa"):
            if task in text:
                return task
        if not text:
            raise InputError("the model has no text task; it cannot answer")
        return text[0]

    @property
    def precision(self) -> dict[str, str]:
        """The device and dtype the model computes in (what an evaluation records)."""
        param = next(self.model.parameters())
        return {"device": str(param.device), "dtype": str(param.dtype).removeprefix("torch.")}

    def prompt_template(self, task: str) -> str:
        """What the model reads for a prompt of `task`, as tokens: markers, `{prompt}` where the
        prompt's words go, runs of image slots as `<slot> x N` (docs and evaluation records)."""
        spec = task_spec(task)
        image = blank(self.processor.size) if spec.layout == "answer" and spec.needs_image else None
        codes = [0] * self.code_grid ** 2 if spec.layout == "edit" else None
        seq = self.encoder.prefix(task, "x", image, input_codes=codes)
        tokens = self.tokenizer.convert_ids_to_tokens(seq.input_ids)
        start, end = seq.prompt_span
        tokens[start:end] = ["{prompt}"]
        out: list[str] = []
        for tok in tokens:
            if out and out[-1].split(" x ")[0] == tok and tok.startswith("<"):
                n = int(out[-1].split(" x ")[1]) if " x " in out[-1] else 1
                out[-1] = f"{tok} x {n + 1}"
            else:
                out.append(tok)
        return " ".join(out)

    # ------------------------------------------------------------------ the plain calls

    def answer(self, images, questions: Sequence[str] | str, task: str = "vqa",
               sampling: SamplingConfig | None = None) -> list[str]:
        """Text answers: one image for all questions or one per question (None for a
        text-only task); `task` is a registered task with a text output."""
        spec = task_spec(task)
        if spec.output != "text":
            raise InputError(f"task {task!r} produces images; use generate()")
        sampling = check_sampling(sampling or SamplingConfig())
        questions = texts(questions, "question")
        self._fits(task, questions, "question", sampling.max_new_tokens, images is not None)
        if spec.needs_image:
            rows = self._images(images, len(questions), "question")
        else:  # an optional image (utamoe.tasks): None for every row, or one (or None) per row
            rows = self._optional_images(images, len(questions))
        reqs = [Request(task, q, img, sampling) for q, img in zip(questions, rows)]
        return [r.text for r in self._generate(reqs, shared_sampling=True)]

    def converse(self, histories: Sequence[Sequence], task: str = "dialog",
                 sampling: SamplingConfig | None = None) -> list[str]:
        """The next assistant answer of each conversation: a history is a list of
        utamoe.data.conversations.Turn (user / assistant alternating, ending with a user turn;
        images on user turns). Answers keep their task spans."""
        spec = task_spec(task)
        if spec.output != "text":
            raise InputError(f"task {task!r} produces images; a conversation is a text task")
        sampling = check_sampling(sampling or SamplingConfig())
        reqs = [self._conversation(task, turns, sampling, i) for i, turns in enumerate(histories)]
        if not reqs:
            raise InputError("give at least one conversation")
        return [r.text for r in self._generate(reqs, shared_sampling=True)]

    def generate(self, prompts: Sequence[str] | str, sampling: SamplingConfig | None = None,
                 images=None, task: str | None = None) -> list[np.ndarray]:
        """One image per prompt (t2i; with `images`, the prompts are edit instructions)."""
        task = task or ("t2i" if images is None else "edit")
        spec = task_spec(task)
        if spec.output != "image":
            raise InputError(f"task {task!r} produces text; use answer()")
        sampling = check_sampling(sampling or SamplingConfig())
        prompts = texts(prompts, "prompt")
        self._fits(task, prompts, "prompt", self.code_grid ** 2)
        edits = self._images(images, len(prompts), "instruction") if spec.needs_image \
            else [None] * len(prompts)
        reqs = [Request(task, p, img, sampling) for p, img in zip(prompts, edits)]
        return [r.image for r in self._generate(reqs, shared_sampling=True)]

    def edit(self, images, instructions: Sequence[str] | str,
             sampling: SamplingConfig | None = None) -> list[np.ndarray]:
        """Edited images: one input image for all instructions or one per instruction."""
        return self.generate(instructions, sampling, images=images, task="edit")

    # ------------------------------------------------------------------ requests, batched

    def request(self, task: str, prompt: str, image=None, sampling: SamplingConfig | None = None,
                *, input_codes: Sequence[int] | None = None,
                constraint: CellConstraint | None = None) -> Request:
        """A checked request for `run` (the server's and the executors' way in): the same checks
        as `answer` / `generate` (task, prompt, image, sampling, length); the image processed."""
        spec = task_spec(task)
        if task not in self.encoder.special.tasks:
            raise InputError(f"task {task!r} is not a task this model knows (it has markers for "
                             f"{', '.join(self.encoder.special.tasks)})")
        sampling = check_sampling(sampling or SamplingConfig())
        (prompt,) = texts([prompt], "prompt")
        new = sampling.max_new_tokens if spec.output == "text" else self.code_grid ** 2
        self._fits(task, [prompt], "prompt", new)
        if spec.needs_image and image is None and input_codes is None:
            raise InputError(f"task {task!r} needs an input image")
        if image is not None:
            (image,) = self._images(image, 1, "prompt")
        return Request(task, prompt, image, sampling, input_codes=input_codes,
                       constraint=constraint)

    def conversation_request(self, turns: Sequence, task: str = "dialog",
                             sampling: SamplingConfig | None = None) -> Request:
        """A checked request for `run` whose answer is the next assistant turn of `turns` (the
        same checks as `converse`: roles, images, the model's task marker, length)."""
        if task not in self.encoder.special.tasks:
            raise InputError(f"task {task!r} is not a task this model knows (it has markers for "
                             f"{', '.join(self.encoder.special.tasks)})")
        if task_spec(task).output != "text":
            raise InputError(f"task {task!r} produces images; a conversation is a text task")
        return self._conversation(task, turns, check_sampling(sampling or SamplingConfig()), 0)

    def prompt_tokens(self, request: Request) -> int:
        """How many tokens the model reads before it answers `request` (its prompt's sequence:
        markers, text and image slots or codes), as an API's usage counts them."""
        codes = request.input_codes
        if codes is None and request.image is not None and task_spec(request.task).layout == "edit":
            codes = [0] * self.code_grid ** 2  # an edit reads its input image as a code grid
        # Tokenising only (no model call), so no lock: a server asks this while a batch runs.
        if request.turns is not None:
            return len(self.encoder.conversation(request.task, request.turns).input_ids)
        return len(self.encoder.prefix(request.task, request.prompt, request.image,
                                       input_codes=codes).input_ids)

    def run(self, requests: Sequence[Request], *, trace: bool = False,
            on_step: Callable[[int, tuple], None] | None = None) -> list[Result]:
        """Requests (from `request`) decoded together in one batch, each drawing from its own
        generator, so each gets what it would get alone (utamoe.infer.engine)."""
        return self._generate(list(requests), trace=trace, on_step=on_step)

    def loglikelihood(self, task: str, prompts: Sequence[str] | str,
                      continuations: Sequence[str] | str, images=None) -> list[tuple[float, bool]]:
        """(log-probability, is greedy) of each continuation after its prompt of a text `task`,
        one image for all or one per prompt (utamoe.infer.scoring): what multiple-choice
        evaluation asks (score each option, take the most likely)."""
        spec = task_spec(task)
        if spec.output != "text":
            raise InputError(f"task {task!r} produces images; only text answers are scored")
        prompts = texts(prompts, "prompt")
        continuations = [continuations] if isinstance(continuations, str) else list(continuations)
        if len(continuations) != len(prompts):
            raise InputError(f"{len(continuations)} continuations for {len(prompts)} prompts")
        rows = self._images(images, len(prompts), "prompt") if spec.needs_image \
            else [None] * len(prompts)
        for p, c in zip(prompts, continuations):
            self._fits(task, [p], "prompt", len(self.encoder.words(c)))
        items = [Continuation(task, p, c, img) for p, c, img in zip(prompts, continuations, rows)]
        with self._lock:
            return continuation_logprobs(self.model, self.encoder, items)

    def image_codes(self, image) -> list[int]:
        """An image's VQ codes at the model's size (raster order)."""
        (image,) = self._images(image, 1, "image")
        with self._lock, torch.no_grad():
            return self.encoder.image_codes(image)

    # ------------------------------------------------------------------ inside

    def _generate(self, requests: list[Request], **options) -> list[Result]:
        with self._lock, torch.no_grad():
            return self.engine.generate(requests, **options)

    def _conversation(self, task: str, turns: Sequence, sampling: SamplingConfig,
                      i: int) -> Request:
        turns = [checked_turn(t, self.processor, i) for t in turns]
        if not turns or turns[-1].role != "user":
            raise InputError(f"conversation {i + 1} must end with a user turn to answer")
        try:
            n = len(self.encoder.conversation(task, turns).input_ids)
        except ValueError as err:
            raise InputError(f"conversation {i + 1}: {err}") from None
        self._check_length(n, sampling.max_new_tokens, f"conversation {i + 1} takes {n} "
                           "tokens; with {new} to generate that is over the model's {limit} "
                           "positions; start a new conversation")
        return Request(task, turns=turns, sampling=sampling)

    def _images(self, images, n: int, what: str) -> list[np.ndarray]:
        """One image for every row, or one per row; each converted by the processor."""
        if images is None:
            raise InputError(f"{what} needs an input image")
        rows = [images] * n if is_one_image(images) else list(images)
        if len(rows) != n:
            raise InputError(f"{len(rows)} images for {n} {what}s; give one image, or one per {what}")
        try:
            return [self.processor(img) for img in rows]
        except (ValueError, TypeError) as err:
            raise InputError(f"cannot use the image for {what}: {err}") from err

    def _optional_images(self, images, n: int) -> list[np.ndarray | None]:
        """Images of a task whose image is optional: None, one image for every row, or one
        image or None per row."""
        if images is None:
            return [None] * n
        if is_one_image(images):
            return self._images(images, n, "question")
        rows = list(images)
        if len(rows) != n:
            raise InputError(f"{len(rows)} images for {n} questions; give one image, or one "
                             "(or None) per question")
        return [None if img is None else self._images(img, 1, "question")[0] for img in rows]

    def _fits(self, task: str, prompts: list[str], what: str, new_tokens: int,
              with_image: bool = False) -> None:
        """A prompt plus what the model must generate has to fit the model's positions (with
        an image block when the task needs one, or takes an optional one it is given)."""
        spec = task_spec(task)
        image = blank(self.processor.size) if spec.layout == "answer" and (
            spec.needs_image or with_image) else None
        codes = [0] * self.code_grid ** 2 if spec.layout == "edit" else None
        for i, text in enumerate(prompts):
            n = len(self.encoder.prefix(task, text, image, input_codes=codes).input_ids)
            self._check_length(n, new_tokens, f"{what} number {i + 1} takes {n} tokens; with the "
                               "{new} tokens to generate that is over the model's {limit} "
                               "positions; shorten it")

    def _check_length(self, n: int, new_tokens: int, message: str) -> None:
        limit = getattr(self.model.lm.config, "max_position_embeddings", None)
        if limit and n + new_tokens > limit:
            raise InputError(message.format(new=new_tokens, limit=limit))
