"""Evaluate a model on every task of a split in one run: generate, score, summarise.

`evaluate_model` is what `utamoe eval` and `utamoe demo` call. It groups the
samples by task, generates each task's predictions in batches through the
predictor (text answers for text tasks, images for image tasks; KV cache on, no
grad), and scores them with each task's scorer from the task registry
(utamoe.eval.scoring): for a benchmark's data (`benchmark`, found from the dataset
manifest by utamoe.data.formats.find_benchmark) the benchmark's own scorers where it has
them (ShapesWorld: caption object F1, GenEval-style facets of generated images), for any
other data the generic ones (exact match and token F1, COCO caption metrics, PSNR/SSIM
against targets). The result records which scorer produced each task's numbers.

Generation is a replaceable function (`predict_fn(task, samples) -> predictions`)
so that scoring can be tested with known predictions and other predictors (a
served model, a baseline) can be evaluated the same way. The sampling settings
(`EvalSampling`) travel with the result so anyone can reproduce the numbers.
Writers for metrics.json / report.md / samples.png live in utamoe.eval.report.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from utamoe.benchmarks import BenchmarkData
from utamoe.data.conversations import exchanges
from utamoe.data.formats import Sample
from utamoe.eval.scorers import TEXT_ONLY
from utamoe.eval.scoring import context_for, headline_metrics, score_by_task
from utamoe.eval.settings import eval_settings
from utamoe.infer.sampling import SamplingConfig
from utamoe.progress import Progress
from utamoe.tasks import get_task, task_names
from utamoe.tasks_exec import ExecContext, SpanRouter, executors_from_config

# A prediction is a text answer (und tasks) or an HxWx3 uint8 image (gen tasks);
# None means "no answer" and is scored as wrong.
Prediction = Any
# predict_fn(task, samples, start) -> one prediction per sample; `start` is the index of
# the batch's first sample within its task (the model predictor offsets its seed by it).
PredictFn = Callable[[str, list[Sample], int], Sequence[Prediction]]


@dataclass
class EvalSampling:
    """Every setting that decides what the model generates during evaluation.

    Text answers are greedy by default (the usual protocol for VQA/POPE); images are
    sampled with temperature/top-k and classifier-free guidance, seeded per batch
    (`seed` + the index of the batch's first sample within its task), so a run is
    reproducible for the same model, data, batch size and device.
    """

    text_temperature: float = 0.0  # 0 = greedy
    text_top_k: int = 0
    text_top_p: float = 1.0
    max_new_tokens: int = 96  # a span answer with two boxes is ~45 tokens; 48 cut them
    temperature: float = 1.0  # images
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: float = 3.0
    seed: int = 0
    batch_size: int = 32

    def text_config(self, offset: int = 0):
        return SamplingConfig(temperature=self.text_temperature, top_k=self.text_top_k,
                              top_p=self.text_top_p, seed=self.seed + offset,
                              max_new_tokens=self.max_new_tokens)

    def image_config(self, offset: int = 0):
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              cfg_scale=self.cfg_scale, seed=self.seed + offset)

    def cli_args(self) -> list[str]:
        """The `utamoe eval` options that reproduce these settings (its text answers are greedy)."""
        return ["--batch-size", str(self.batch_size), "--temperature", str(self.temperature),
                "--top-k", str(self.top_k), "--top-p", str(self.top_p),
                "--cfg-scale", str(self.cfg_scale),
                "--seed", str(self.seed), "--max-new-tokens", str(self.max_new_tokens)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EvalResult:
    """What one evaluation produced; `headline` holds the flat metric names of the docs."""

    per_task: dict[str, dict[str, float]]
    headline: dict[str, float]
    counts: dict[str, int]
    seconds: float
    sampling: EvalSampling
    samples: list[Sample]
    predictions: list[Prediction]  # aligned with `samples`
    verdicts: dict[str, Any] = field(default_factory=dict)  # image sample id -> its scorer's verdict
    notes: list[str] = field(default_factory=list)
    scorers: dict[str, str] = field(default_factory=dict)  # task -> the scorer of its numbers
    split: str | None = None
    model: str | None = None
    data: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # utamoe.eval.settings: what produced it


# ---------------------------------------------------------------- prediction


def model_predictor(predictor, sampling: EvalSampling) -> PredictFn:
    """The default predict_fn: batched generation with a `utamoe.infer.Predictor`."""

    def predict(task: str, batch: list[Sample], offset: int) -> list[Prediction]:
        images = [s.image for s in batch]
        if all(s.turns is not None for s in batch):
            return _converse(predictor, task, batch, sampling.text_config(offset))
        if any(s.turns is not None for s in batch):  # free-form data mixes both kinds
            return _mixed(predict, task, batch, offset)
        if get_task(task).output == "text":
            return predictor.answer(images, [s.prompt for s in batch], task=task,
                                    sampling=sampling.text_config(offset))
        return predictor.generate([s.prompt for s in batch], sampling.image_config(offset),
                                  images=images if get_task(task).needs_image else None, task=task)

    return predict


def _mixed(predict, task: str, batch: list[Sample], offset: int) -> list[Prediction]:
    """A batch of conversations and single prompts (the `instruct` task): each kind predicted
    as its own batch, the answers back in the batch's order."""
    kinds = [[i for i, s in enumerate(batch) if (s.turns is not None) == conv] for conv in (True, False)]
    out: list[Prediction] = [None] * len(batch)
    for idx in kinds:
        for i, p in zip(idx, predict(task, [batch[i] for i in idx], offset)):
            out[i] = p
    return out


def _converse(predictor, task: str, batch: list[Sample], sampling) -> list[Prediction]:
    """A conversation's prediction: its assistant answers, each given the gold history."""
    histories, owner = [], []
    for i, s in enumerate(batch):
        for history, _ in exchanges(s.turns):
            histories.append(history)
            owner.append(i)
    answers = predictor.converse(histories, task, sampling) if histories else []
    out: list[list[str]] = [[] for _ in batch]
    for i, a in zip(owner, answers):
        out[i].append(a)
    return out


def span_router_for(predictor, executors: dict | None = None):
    """The span router eval runs predicted spans through (the default executors on the
    model, or `executors`: a config mapping task -> executor spec); None without a model."""
    if predictor is None:
        return None
    return SpanRouter(executors_from_config(executors, ExecContext(predictor)))


def _predict_all(by_task: dict[str, list[Sample]], predict_fn: PredictFn, batch_size: int,
                 progress: bool, load=None, text_only=()) -> dict[str, list[Prediction]]:
    """Predictions per task, batch by batch, under one rich progress bar. With `load` (a sample
    without images -> with them), each batch's images are read for it; the tasks in `text_only`
    (scored from text alone) let them go after the batch, the others keep them for scoring."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    total = sum(len(v) for v in by_task.values())
    out: dict[str, list[Prediction]] = {}
    start = time.perf_counter()
    with Progress(*columns, disable=not progress, transient=False, unit="sample") as bar:
        job = bar.add_task("eval", total=total, rate="")
        done = 0
        for task, samples in by_task.items():
            bar.update(job, description=f"eval {task}")
            preds: list[Prediction] = []
            for i in range(0, len(samples), batch_size):
                batch = samples[i:i + batch_size]
                if load is not None:
                    batch = [load(s) for s in batch]
                    if task not in text_only:  # its scorer reads images: keep them
                        samples[i:i + batch_size] = batch
                got = list(predict_fn(task, batch, i))
                if len(got) != len(batch):
                    raise ValueError(f"predict_fn returned {len(got)} predictions for "
                                     f"{len(batch)} '{task}' samples")
                preds.extend(got)
                done += len(batch)
                rate = done / max(time.perf_counter() - start, 1e-9)
                bar.update(job, advance=len(batch), rate=f"{rate:.1f} samples/s")
            out[task] = preds
    return out


# ---------------------------------------------------------------- the entry point


def evaluate_model(predictor, samples: Sequence[Sample], sampling: EvalSampling | None = None,
                   batch_size: int | None = None, max_per_task: int | None = None,
                   progress: bool = True, benchmark: BenchmarkData | None = None,
                   predict_fn: PredictFn | None = None, span_router=None,
                   load=None) -> EvalResult:
    """Generate and score every task in `samples`; see the module docstring.

    `predictor` is a `utamoe.infer.Predictor`; `batch_size` overrides
    `sampling.batch_size` (and is recorded there); `max_per_task` keeps the first N
    samples of each task; `predict_fn` replaces generation with the predictor (then
    `predictor` may be None); `span_router` runs predicted task spans for the scorers that execute
    them (default: `span_router_for(predictor)`, None without a predictor); `load` reads the
    images of samples given without them, a batch at a time (`_predict_all`), so a large split
    of text tasks is evaluated without holding its images.
    """
    import torch

    sampling = dataclasses.replace(sampling or EvalSampling())
    if batch_size is not None:
        sampling.batch_size = batch_size
    if sampling.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {sampling.batch_size}")
    by_task = _group(samples, max_per_task)
    if not by_task:
        raise ValueError("no samples to evaluate")
    if predict_fn is None:
        if predictor is None:
            raise ValueError("evaluate_model needs a predictor or a predict_fn")
        predict_fn = model_predictor(predictor, sampling)
    model = getattr(predictor, "model", None)
    was_training = bool(getattr(model, "training", False))
    if model is not None:
        model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            preds = _predict_all(by_task, predict_fn, sampling.batch_size, progress, load,
                                 _text_scored(by_task, benchmark))
    finally:
        if was_training:
            model.train()
    if span_router is None:
        span_router = span_router_for(predictor)
    ctx = dataclasses.replace(context_for(benchmark), span_router=span_router)
    with torch.no_grad():
        scores = score_by_task(by_task, preds, ctx)
    seconds = time.perf_counter() - start
    ordered = [s for v in by_task.values() for s in v]
    return EvalResult(per_task=scores.per_task, headline=headline_metrics(scores.per_task),
                      counts={t: len(v) for t, v in by_task.items()}, seconds=seconds,
                      sampling=sampling, samples=ordered,
                      predictions=[p for v in preds.values() for p in v],
                      verdicts=scores.verdicts,
                      notes=_notes(scores.scorers, benchmark) + _untrained(predictor, by_task),
                      scorers=scores.scorers,
                      settings=eval_settings("utamoe eval", predictor, list(by_task),
                                             sampling.to_dict()))


def _text_scored(by_task: dict[str, list[Sample]], benchmark: BenchmarkData | None) -> set[str]:
    """The tasks whose scorer reads no image (utamoe.eval.scorers.TEXT_ONLY)."""
    ctx = context_for(benchmark)
    return {t for t in by_task if get_task(t).scorer_for(ctx)[0] in TEXT_ONLY}


def _notes(scorers: dict[str, str], benchmark: BenchmarkData | None) -> list[str]:
    kind = (benchmark.benchmark.note or f"{benchmark.name} data: its own scorers where a task "
            "has one") if benchmark is not None \
        else "no benchmark's data (its manifest names none): generic scorers only"
    return [f"scored as {kind}; " + ", ".join(f"{t}: {n}" for t, n in scorers.items())]


def _untrained(predictor, by_task: dict) -> list[str]:
    """A note naming the evaluated tasks the model was never trained on (its directory records
    what training saw): their numbers measure nothing learned."""
    trained = getattr(predictor, "trained_tasks", None)
    missing = [t for t in by_task if trained is not None and t not in trained]
    if not missing:
        return []
    return [f"never trained on {', '.join(missing)} (no stage of its recipe had them in its "
            "mixture): those numbers measure nothing the model learned"]


def _group(samples: Sequence[Sample], max_per_task: int | None) -> dict[str, list[Sample]]:
    """Samples by task in the registry's order (und first), at most `max_per_task` each."""
    if max_per_task is not None and max_per_task < 1:
        raise ValueError(f"max_per_task must be >= 1, got {max_per_task}")
    by_task: dict[str, list[Sample]] = {t: [] for t in task_names()}
    for s in samples:
        if max_per_task is None or len(by_task[s.task]) < max_per_task:
            by_task[s.task].append(s)
    return {t: v for t, v in by_task.items() if v}
