"""Evaluate a model on every task of a split in one run: generate, score, summarise.

`evaluate_model` is what `utamoe eval` and `utamoe demo` call. It groups the
samples by task, generates each task's predictions in batches (text answers for
the understanding tasks, images for t2i and edit; KV cache on, no grad), and
scores them with the project's scorers:

    vqa        exact-match accuracy            (utamoe.eval.metrics)
    pope       accuracy, precision/recall/F1 of "yes"
    caption    object-level F1 (order-free)
    grounding  Acc@IoU>=0.5, mean IoU
    t2i        GenEval-style facets + correct_all (scene parser, utamoe.eval.geneval)
    edit       parser score (facets + correct_all) + PSNR/SSIM against the target image

The parser-based scores need the ShapesWorld config that generated the data
(`world_config`, read from the dataset manifest by the CLI); without it image
tasks still get PSNR/SSIM against their targets and a note says what was skipped.

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

import numpy as np

from utamoe.data.formats import TASKS, Sample
from utamoe.data.shapes.world import ShapesWorldConfig
from utamoe.eval.geneval import (
    FACETS,
    GenerationScore,
    aggregate,
    failed_score,
    image_similarity,
    scene_from_meta,
    score_edit,
    score_generation,
)

# A prediction is a text answer (und tasks) or an HxWx3 uint8 image (gen tasks);
# None means "no answer" and is scored as wrong.
Prediction = Any
# predict_fn(task, samples, start) -> one prediction per sample; `start` is the index of
# the batch's first sample within its task (the model predictor offsets its seed by it).
PredictFn = Callable[[str, list[Sample], int], Sequence[Prediction]]
TEXT_TASKS = tuple(t for t, g in TASKS.items() if g == "und")
IMAGE_TASKS = tuple(t for t, g in TASKS.items() if g == "gen")


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
    max_new_tokens: int = 48
    temperature: float = 1.0  # images
    top_k: int = 0
    cfg_scale: float = 3.0
    seed: int = 0
    batch_size: int = 32

    def text_config(self, offset: int = 0):
        from utamoe.generation import SamplingConfig

        return SamplingConfig(temperature=self.text_temperature, top_k=self.text_top_k,
                              seed=self.seed + offset, max_new_tokens=self.max_new_tokens)

    def image_config(self, offset: int = 0):
        from utamoe.generation import SamplingConfig

        return SamplingConfig(temperature=self.temperature, top_k=self.top_k,
                              cfg_scale=self.cfg_scale, seed=self.seed + offset)

    def cli_args(self) -> list[str]:
        """The `utamoe eval` options that reproduce these settings (its text answers are greedy)."""
        return ["--batch-size", str(self.batch_size), "--temperature", str(self.temperature),
                "--top-k", str(self.top_k), "--cfg-scale", str(self.cfg_scale),
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
    verdicts: dict[str, GenerationScore] = field(default_factory=dict)  # image sample id ->
    notes: list[str] = field(default_factory=list)
    split: str | None = None
    model: str | None = None
    data: str | None = None


# ---------------------------------------------------------------- prediction


def model_predictor(model, encoder, sampling: EvalSampling) -> PredictFn:
    """The default predict_fn: batched generation with `model` (one call per batch)."""
    from utamoe.generation import generate_images, generate_text

    size = model.config.image_size

    def predict(task: str, batch: list[Sample], offset: int) -> list[Prediction]:
        for s in batch:
            _check_image(s, size)
        if TASKS[task] == "und":
            return generate_text(model, encoder, [task] * len(batch), [s.prompt for s in batch],
                                 [s.image for s in batch], sampling.text_config(offset))
        edits = [s.image for s in batch] if task == "edit" else None
        return generate_images(model, encoder, [s.prompt for s in batch],
                               sampling.image_config(offset), edit_images=edits)

    return predict


def _check_image(s: Sample, size: int) -> None:
    from utamoe.infer import InputError

    if s.image is not None and s.image.shape[:2] != (size, size):
        h, w = s.image.shape[:2]
        raise InputError(f"sample '{s.id}' ({s.image_path or 'in memory'}) is {w}x{h} but the "
                         f"model takes {size}x{size} images; resize the dataset's images")


def _predict_all(by_task: dict[str, list[Sample]], predict_fn: PredictFn, batch_size: int,
                 progress: bool) -> dict[str, list[Prediction]]:
    """Predictions per task, batch by batch, under one rich progress bar."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
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
    with Progress(*columns, disable=not progress, transient=False) as bar:
        job = bar.add_task("eval", total=total, rate="")
        done = 0
        for task, samples in by_task.items():
            bar.update(job, description=f"eval {task}")
            preds: list[Prediction] = []
            for i in range(0, len(samples), batch_size):
                batch = samples[i:i + batch_size]
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


# ---------------------------------------------------------------- scoring


def _score_image_sample(s: Sample, image: Prediction, config: ShapesWorldConfig,
                        ) -> GenerationScore:
    """The parser verdict for one generated image (as utamoe.eval.benchmark scores it)."""
    if image is None:
        return failed_score("no image generated")
    if s.task == "t2i":
        return score_generation(scene_from_meta(s.meta) or s.prompt, image, config)
    return score_edit(s.prompt, image, source_image=s.image, source_scene=scene_from_meta(s.meta),
                      target_image=s.target_image, config=config)


def _similarity_only(pairs: list[tuple[Sample, Prediction]]) -> dict[str, float]:
    """PSNR/SSIM against targets, for data without a ShapesWorld config."""
    rows = []
    for s, img in pairs:
        if s.target_image is None or img is None:
            continue
        size = s.target_image.shape[0]
        rows.append(image_similarity(img, s.target_image, ShapesWorldConfig(image_size=max(size, 24))))
    out: dict[str, float] = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim")} \
        if rows else {}
    return {**out, "n": len(pairs)}


def score_predictions(by_task: dict[str, list[Sample]], preds: dict[str, list[Prediction]],
                      world_config: ShapesWorldConfig | None,
                      ) -> tuple[dict[str, dict[str, float]], dict[str, GenerationScore], list[str]]:
    """(per-task metrics, per-image verdicts, notes) for predictions grouped by task."""
    from utamoe.eval.benchmark import evaluate

    per_task: dict[str, dict[str, float]] = {}
    verdicts: dict[str, GenerationScore] = {}
    notes: list[str] = []
    for task, samples in by_task.items():
        if TASKS[task] == "und":
            per_task.update(evaluate(samples, preds[task], world_config))
        elif world_config is not None:
            scores = [_score_image_sample(s, p, world_config) for s, p in zip(samples, preds[task])]
            verdicts.update({s.id: v for s, v in zip(samples, scores)})
            per_task[task] = aggregate(scores)
        else:
            per_task[task] = _similarity_only(list(zip(samples, preds[task])))
            notes.append(f"{task}: no ShapesWorld config (dataset.json) for this data, so the "
                         "scene-parser scores (facets, correct_all) were skipped"
                         + ("; PSNR/SSIM are against the target images" if "psnr" in
                            per_task[task] else ""))
    return per_task, verdicts, notes


def headline_metrics(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """The flat metric names (see docs/evaluation.md); tasks or scores absent are left out."""
    names = {
        "vqa": {"accuracy": "vqa_accuracy"},
        "pope": {"accuracy": "pope_accuracy", "f1": "pope_f1"},
        "caption": {"f1": "caption_f1"},
        "grounding": {"accuracy": "grounding_acc50"},
        "t2i": {"correct_all": "t2i_correct_all", **{f: f"t2i_{f}" for f in FACETS}},
        "edit": {"correct_all": "edit_correct_all", "psnr": "edit_psnr", "ssim": "edit_ssim"},
    }
    out = {}
    for task, mapping in names.items():
        for key, name in mapping.items():
            if key in per_task.get(task, {}):
                out[name] = float(per_task[task][key])
    return out


# ---------------------------------------------------------------- the entry point


def evaluate_model(model, encoder, samples: Sequence[Sample], sampling: EvalSampling | None = None,
                   batch_size: int | None = None, max_per_task: int | None = None,
                   progress: bool = True, world_config: ShapesWorldConfig | None = None,
                   predict_fn: PredictFn | None = None) -> EvalResult:
    """Generate and score every task in `samples`; see the module docstring.

    `batch_size` overrides `sampling.batch_size` (and is recorded there);
    `max_per_task` keeps the first N samples of each task; `predict_fn` replaces
    generation with the model (then `model` and `encoder` may be None).
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
        if model is None or encoder is None:
            raise ValueError("evaluate_model needs a model and encoder, or a predict_fn")
        predict_fn = model_predictor(model, encoder, sampling)
    was_training = bool(getattr(model, "training", False))
    if model is not None:
        model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            preds = _predict_all(by_task, predict_fn, sampling.batch_size, progress)
    finally:
        if was_training:
            model.train()
    per_task, verdicts, notes = score_predictions(by_task, preds, world_config)
    seconds = time.perf_counter() - start
    ordered = [s for v in by_task.values() for s in v]
    return EvalResult(per_task=per_task, headline=headline_metrics(per_task),
                      counts={t: len(v) for t, v in by_task.items()}, seconds=seconds,
                      sampling=sampling, samples=ordered,
                      predictions=[p for v in preds.values() for p in v],
                      verdicts=verdicts, notes=notes)


def _group(samples: Sequence[Sample], max_per_task: int | None) -> dict[str, list[Sample]]:
    """Samples by task in the registry's order (und first), at most `max_per_task` each."""
    if max_per_task is not None and max_per_task < 1:
        raise ValueError(f"max_per_task must be >= 1, got {max_per_task}")
    by_task: dict[str, list[Sample]] = {t: [] for t in TASKS}
    for s in samples:
        if max_per_task is None or len(by_task[s.task]) < max_per_task:
            by_task[s.task].append(s)
    return {t: v for t, v in by_task.items() if v}


def world_config_of(data_dir) -> ShapesWorldConfig | None:
    """The ShapesWorld config a dataset was generated with (its manifest), or None for
    other data (then image tasks get PSNR/SSIM only)."""
    from utamoe.data.formats import read_manifest

    manifest = read_manifest(data_dir)
    config = manifest.get("config")
    if manifest.get("generator") != "utamoe.data.shapes" or not isinstance(config, dict):
        return None
    return ShapesWorldConfig.from_dict(config)
