"""Score a set of samples of any task against a model's predictions, task by task.

One call evaluates understanding and generation together (a gap users of other
unified-model code bases complain about): text predictions go to the text
metrics, images to the GenEval-style scorer, each task to its own metric.
Ground-truth scenes stored in ShapesWorld samples' `meta` are used when present;
otherwise prompts and input images are parsed, so users' own data in the same
grammar is scored the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from utamoe.data.formats import Sample
from utamoe.data.shapes.world import ShapesWorldConfig
from utamoe.eval import metrics
from utamoe.eval.geneval import (
    aggregate,
    failed_score,
    scene_from_meta,
    score_edit,
    score_generation,
)


def evaluate(samples: Sequence[Sample], predictions: Sequence[Any] | Mapping[str, Any],
             config: ShapesWorldConfig | None = None) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} for `samples` and their predictions (a list aligned with
    `samples`, or a mapping sample id -> prediction; a missing id counts as no answer).
    Predictions are text for und tasks and HxWx3 images for gen tasks."""
    config = config or ShapesWorldConfig()
    if isinstance(predictions, Mapping):
        preds = [predictions.get(s.id) for s in samples]
    else:
        preds = list(predictions)
        if len(preds) != len(samples):
            raise ValueError(f"{len(preds)} predictions for {len(samples)} samples")
    by_task: dict[str, list[tuple[Sample, Any]]] = {}
    for s, p in zip(samples, preds, strict=True):
        by_task.setdefault(s.task, []).append((s, p))
    return {task: _score_task(task, pairs, config) for task, pairs in by_task.items()}


def _score_task(task: str, pairs: list[tuple[Sample, Any]], config: ShapesWorldConfig,
                ) -> dict[str, float]:
    golds = [s.target or "" for s, _ in pairs]
    preds = [p for _, p in pairs]
    if task == "vqa":
        return {**metrics.vqa_accuracy(preds, golds), **_vqa_by_type(pairs)}
    if task == "pope":
        return metrics.pope_metrics(preds, golds)
    if task == "caption":
        return metrics.caption_metrics(preds, golds, config)
    if task == "grounding":
        return metrics.grounding_metrics(preds, golds)
    if task == "t2i":
        return aggregate(_score_t2i(s, p, config) for s, p in pairs)
    if task == "edit":
        return aggregate(_score_edit(s, p, config) for s, p in pairs)
    raise ValueError(f"no scorer for task '{task}'")


def _vqa_by_type(pairs: list[tuple[Sample, Any]]) -> dict[str, float]:
    """`accuracy_<qtype>` for ShapesWorld questions (colour, count, relation, ...): which kind
    of question a model gets wrong is what decides the next experiment."""
    by_type: dict[str, list[bool]] = {}
    for s, p in pairs:
        qtype = (s.meta or {}).get("qtype")
        if qtype:
            by_type.setdefault(str(qtype), []).append(metrics.exact_match(p, s.target or ""))
    return {f"accuracy_{q}": sum(v) / len(v) for q, v in sorted(by_type.items())}


def _score_t2i(sample: Sample, image: Any, config: ShapesWorldConfig):
    spec = scene_from_meta(sample.meta) or sample.prompt
    if image is None:
        return failed_score("no image generated")
    return score_generation(spec, image, config)


def _score_edit(sample: Sample, image: Any, config: ShapesWorldConfig):
    if image is None:
        return failed_score("no image generated")
    return score_edit(sample.prompt, image, source_image=sample.image,
                      source_scene=scene_from_meta(sample.meta),
                      target_image=sample.target_image, config=config)
