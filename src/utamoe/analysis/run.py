"""`utamoe analyze`: task-conflict diagnostics and routing analysis of a model on a split.

    run_analysis(model, encoder, samples)  -> AnalysisResult
        builds the batches (seeded): n pairs of (understanding batch, generation batch)
        mixing the tasks of each group, for utamoe.analysis.conflict; n batches per task,
        one task each, for utamoe.analysis.routing. VQ codes come from the model's image
        tokenizer, generation prompts are never dropped (cfg dropout 0). The per-task
        batches also give MoME's routing (utamoe.analysis.mome) when the model has a
        MoVE router or MoLE adapters.

The files, figures and console summary of a result are written by
utamoe.analysis.report; this module only computes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utamoe.analysis.conflict import ConflictResult, unified_conflict
from utamoe.analysis.mome import MoMERouting, mome_routing
from utamoe.analysis.routing import RoutingAnalysis, routing_analysis
from utamoe.data.formats import Sample
from utamoe.data.sequences import collate, precompute_codes, training_sequences
from utamoe.infer.checks import InputError
from utamoe.progress import Progress
from utamoe.tasks import task_names


@dataclass
class AnalysisResult:
    conflict: ConflictResult
    routing: RoutingAnalysis
    counts: dict[str, int]  # samples per task that went into the batches
    settings: dict[str, Any]  # batches, batch_size, seed (+ split/model/data from the CLI)
    seconds: float
    notes: list[str] = field(default_factory=list)
    mome: MoMERouting | None = None  # MoVE router weights and MoLE shares (MoME models)


# ---------------------------------------------------------------- batches


def _chunks(items: list, size: int, limit: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)][:limit]


def build_batches(model, encoder, samples: list[Sample], batches: int, batch_size: int,
                  seed: int) -> tuple[list, list, dict[str, list], dict[str, int]]:
    """(und batches, gen batches, {task: batches}, {task: samples used}); see the docstring."""
    if batches < 1 or batch_size < 1:
        raise InputError(f"--batches and --batch-size must be at least 1 (got {batches}, "
                         f"{batch_size})")
    rng = np.random.default_rng(seed)
    pools = {g: [s for s in samples if s.group == g] for g in ("und", "gen")}
    missing = [g for g, pool in pools.items() if not pool]
    if missing:
        have = sorted({s.task for s in samples})
        raise InputError(f"the split has no {' and no '.join(missing)} samples (tasks found: "
                         f"{', '.join(have) or 'none'}); the conflict analysis compares an "
                         f"understanding loss with a generation loss, so it needs both")
    chosen = {g: _chunks([pool[i] for i in rng.permutation(len(pool))], batch_size, batches)
              for g, pool in pools.items()}
    n_pairs = min(len(chosen["und"]), len(chosen["gen"]))
    per_task: dict[str, list[list[Sample]]] = {}
    for task in task_names():
        pool = [s for s in samples if s.task == task]
        if pool:
            per_task[task] = _chunks([pool[i] for i in rng.permutation(len(pool))],
                                     batch_size, batches)
    used = {s.id: s for g in chosen for b in chosen[g][:n_pairs] for s in b}
    used.update({s.id: s for bs in per_task.values() for b in bs for s in b})
    codes = precompute_codes(list(used.values()), encoder, model.image_tokenizer)

    def make(batch: list[Sample]):
        seqs = training_sequences(encoder, batch, 0.0, rng, codes=codes)
        return collate(seqs, encoder.special.pad)

    und = [make(b) for b in chosen["und"][:n_pairs]]
    gen = [make(b) for b in chosen["gen"][:n_pairs]]
    by_task = {t: [make(b) for b in bs] for t, bs in per_task.items()}
    counts = {t: sum(len(b) for b in bs) for t, bs in per_task.items()}
    return und, gen, by_task, counts


def run_analysis(model, encoder, samples: list[Sample], batches: int = 4, batch_size: int = 16,
                 seed: int = 0, progress: bool = True) -> AnalysisResult:
    """Conflict diagnostics and routing analysis of `model` on `samples` (see the docstring)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    start = time.perf_counter()
    und, gen, by_task, counts = build_batches(model, encoder, samples, batches, batch_size, seed)
    notes = []
    if len(und) < batches:
        notes.append(f"the split holds enough samples for {len(und)} pair(s) of understanding "
                     f"and generation batches of {batch_size}, not {batches}")
    columns = (TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task("gradient conflict", total=len(und))
        conflict = unified_conflict(model, und, gen, progress=lambda n: bar.advance(job, n))
        job = bar.add_task("routing", total=sum(len(v) for v in by_task.values()))
        routing = routing_analysis(model, by_task, progress=lambda n: bar.advance(job, n))
        job = bar.add_task("MoME routing", total=sum(len(v) for v in by_task.values()))
        mome = mome_routing(model, by_task, progress=lambda n: bar.advance(job, n))
    settings = {"batches": batches, "batch_size": batch_size, "seed": seed,
                "conflict_pairs": len(und)}
    return AnalysisResult(conflict, routing, counts, settings, time.perf_counter() - start, notes,
                          mome)


# ---------------------------------------------------------------- files
