"""A utamoe model as lmms-eval sees one: its two questions, answered through the Predictor.

lmms-eval (the field's harness for understanding benchmarks) asks a model two things, each a
list of requests whose `args` tuple names the prompt and where the image comes from:

    generate_until(requests)  args = (context, gen_kwargs, doc_to_visual, doc_id, task, split):
                              an open answer to `context` about the document's image, cut at
                              `gen_kwargs["until"]`; greedy unless `do_sample` / `temperature`
    loglikelihood(requests)   args = (context, continuation or doc_to_target, doc_to_visual,
                              doc_id, task, split): (negative log-likelihood, is greedy) of
                              the continuation (its leading delimiter dropped: a utamoe answer
                              starts right after `<sep>`), for multiple choice. Negative:
                              lmms-eval 0.7 picks the option with the *smallest* first value
                              (`np.argmin` in its api/task.py, because its models return a
                              loss; its docstring says log-probability, lmms-eval issue 370)

`HarnessModel` answers them with a Predictor, one utamoe task for every request (`task`, by
default the model's `default_text_task`); it needs no lmms-eval to run, so its logic is tested
everywhere. utamoe.eval.lmms_model registers it with lmms-eval (`--model utamoe`). Each
request draws from its own generator seeded with `seed` (Predictor.run), so an answer does not
depend on its batch. A document with more than one image is an error (utamoe models read one
image per prompt), never a silent choice of one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from utamoe.eval.settings import eval_settings
from utamoe.infer.checks import InputError, task_spec
from utamoe.infer.predictor import Predictor
from utamoe.infer.sampling import SamplingConfig


class HarnessModel:
    """lmms-eval's questions answered by a utamoe Predictor (see the module docstring)."""

    def __init__(self, predictor: Predictor, task: str | None = None, batch_size: int = 1,
                 seed: int = 0, max_new_tokens: int = 64, settings_path: str | None = None):
        self.predictor = predictor
        self.task = task or predictor.default_text_task
        if predictor.tasks.get(self.task) != "text":
            raise InputError(f"task={self.task!r} is not a text task of this model (it has "
                             f"{', '.join(t for t, o in predictor.tasks.items() if o == 'text')})")
        self.batch_size, self.seed, self.max_new_tokens = int(batch_size), int(seed), max_new_tokens
        self.task_dict: dict = {}  # lmms-eval fills it: task -> split -> documents
        self.settings = eval_settings("lmms-eval", predictor, [self.task], {
            "seed": self.seed, "batch_size": self.batch_size,
            "max_new_tokens_default": max_new_tokens,
            "generation": "each task's generation_kwargs (lmms-eval's results record them)"},
            utamoe_task=self.task)
        if settings_path:
            Path(settings_path).write_text(json.dumps(self.settings, indent=2) + "\n")

    # ------------------------------------------------------------------ the two questions

    def generate_until(self, requests) -> list[str]:
        out = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start:start + self.batch_size]
            reqs, stops = [], []
            for r in chunk:
                context, gen_kwargs, doc_to_visual, doc_id, task, split = r.args
                sampling, until = self._sampling(gen_kwargs or {})
                reqs.append(self._request(context, self._image(doc_to_visual, doc_id, task, split),
                                          sampling, doc_id, task))
                stops.append(until)
            for res, until in zip(self.predictor.run(reqs), stops):
                out.append(_cut(res.text, until))
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for r in requests:
            context, target, doc_to_visual, doc_id, task, split = r.args
            continuation = target if isinstance(target, str) else target(self._doc(task, split, doc_id))
            continuation = continuation.lstrip()  # the harness's delimiter: answers follow <sep>
            image = self._image(doc_to_visual, doc_id, task, split)
            if image is None and task_spec(self.task).needs_image:
                raise InputError(f"{task} document {doc_id} has no image; task={self.task} needs one")
            ((logprob, greedy),) = self.predictor.loglikelihood(self.task, context, continuation,
                                                                 image)
            out.append((-logprob, greedy))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("utamoe answers one round per request; use a single-round task")

    # ------------------------------------------------------------------ inside

    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    def _image(self, doc_to_visual, doc_id: int, task: str, split: str):
        if doc_to_visual is None:
            return None
        visuals = doc_to_visual(self._doc(task, split, doc_id))
        visuals = [v for v in (visuals or []) if v is not None]
        if len(visuals) > 1:
            raise InputError(f"{task} document {doc_id} has {len(visuals)} images; utamoe models "
                             "read one image per prompt")
        return visuals[0] if visuals else None

    def _sampling(self, gen_kwargs: dict) -> tuple[SamplingConfig, list[str]]:
        """lmms-eval's generation kwargs as utamoe sampling (greedy unless asked), and the
        stop strings."""
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        sample = gen_kwargs.get("do_sample", False) or float(gen_kwargs.get("temperature") or 0) > 0
        temperature = float(gen_kwargs.get("temperature") or 1.0) if sample else 0.0
        top_p = gen_kwargs.get("top_p")
        return SamplingConfig(temperature=temperature,
                              top_p=float(top_p) if sample and top_p else 1.0,
                              seed=self.seed,
                              max_new_tokens=int(gen_kwargs.get("max_new_tokens")
                                                 or self.max_new_tokens)), until

    def _request(self, context: str, image, sampling: SamplingConfig, doc_id, task: str):
        try:
            return self.predictor.request(self.task, context, image, sampling)
        except InputError as err:
            raise InputError(f"{task} document {doc_id}: {err}") from None


def _cut(text: str, until: Sequence[str]) -> str:
    cuts = [text.find(s) for s in until if s and s in text]
    return text[:min(cuts)] if cuts else text
