"""The one scoring path: predictions of any tasks -> metrics, per-sample verdicts, and which
scorer produced each task's numbers.

Each task's scorer comes from the task registry (utamoe.tasks): the benchmark's own
scorer when the data is that benchmark's (utamoe.benchmarks; ShapesWorld's scene parser
for ShapesWorld data only), the task's generic scorer otherwise. `utamoe eval`, the demo, the
experiments and `evaluate` below all go through `score_by_task`, so a number means
the same thing wherever it is printed, and the report names its scorer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from utamoe.benchmarks import BenchmarkData
from utamoe.tasks import ScoreContext, get_task


@dataclass
class Scores:
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    verdicts: dict[str, Any] = field(default_factory=dict)  # sample id -> verdict (image tasks)
    scorers: dict[str, str] = field(default_factory=dict)  # task -> scorer name


def context_for(benchmark: BenchmarkData | None = None) -> ScoreContext:
    """The scoring context of a benchmark's data (utamoe.benchmarks: its name and generator
    config, e.g. `find_benchmark(data_dir)`), or of any other data (None)."""
    if benchmark is None:
        return ScoreContext()
    return ScoreContext(benchmark=benchmark.name, benchmark_config=benchmark.config)


def score_by_task(by_task: Mapping[str, Sequence], preds: Mapping[str, Sequence],
                  ctx: ScoreContext) -> Scores:
    out = Scores()
    for task, samples in by_task.items():
        got = list(preds[task])
        if len(got) != len(samples):
            raise ValueError(f"{len(got)} predictions for {len(samples)} '{task}' samples")
        name, score = get_task(task).score(list(samples), got, ctx)
        out.per_task[task] = score.metrics
        out.verdicts.update(score.verdicts)
        out.scorers[task] = name
    return out


def headline_metrics(per_task: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The flat metric names each task declares (docs/evaluation.md); absent ones left out."""
    out = {}
    for task, metrics in per_task.items():
        for key, name in get_task(task).headline.items():
            if key in metrics:
                out[name] = float(metrics[key])
    return out


def evaluate(samples: Sequence, predictions: Sequence[Any] | Mapping[str, Any],
             benchmark: BenchmarkData | None = None) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} for samples of any tasks and their predictions (a list aligned
    with `samples`, or a mapping sample id -> prediction; a missing id counts as no answer).
    Predictions are text for text tasks and HxWx3 images for image tasks. With `benchmark`
    (utamoe.benchmarks.BenchmarkData) the data is scored as that benchmark's, else with the
    generic scorers."""
    if isinstance(predictions, Mapping):
        preds = [predictions.get(s.id) for s in samples]
    else:
        preds = list(predictions)
        if len(preds) != len(samples):
            raise ValueError(f"{len(preds)} predictions for {len(samples)} samples")
    by_task: dict[str, list] = {}
    by_pred: dict[str, list] = {}
    for s, p in zip(samples, preds, strict=True):
        by_task.setdefault(s.task, []).append(s)
        by_pred.setdefault(s.task, []).append(p)
    return score_by_task(by_task, by_pred, context_for(benchmark)).per_task
