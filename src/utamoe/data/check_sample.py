"""`utamoe data check --sample N`: check a dataset of any size in bounded time and memory.

Every record of every split is validated as the full check does (fields, task, group, that
each image file exists, duplicate ids: utamoe.data.ondisk.build_index, which decodes no image),
so the counts and the share of records per task are exact; only the images of a seeded random
sample of N records per split are decoded (sizes, unreadable or oversized images). With a
model's token counts (`--model`), every record's sequence length is checked too, records read
in chunks without their images. Memory holds the split's index (about 20 bytes a record) and
one image at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from utamoe.data.check import CheckResult, TaskSummary, import_summary, split_names
from utamoe.data.formats import DataFormatError, Sample, read_manifest
from utamoe.data.ondisk import DiskSplit, build_index, overlong_records


def check_sampled(root: str | Path, sample: int, seed: int = 0, max_errors: int = 5,
                  lengths: Callable[[list[Sample]], list[int]] | None = None,
                  limit: int | None = None) -> CheckResult:
    """Validate every record, decode the images of `sample` random records per split. With
    `lengths` and `limit` (as utamoe.data.check.check_dataset), a longer record is broken."""
    if sample < 1:
        raise ValueError(f"--sample must be at least 1, got {sample}")
    root = Path(root)
    manifest = read_manifest(root)
    splits, reports, sampled = {}, {}, {}
    for name in split_names(root):
        index = build_index(root / f"{name}.jsonl", on_error="skip", max_errors=max_errors)
        tasks = {t: TaskSummary(count=n) for t, n in index.counts().items()}
        split = DiskSplit(index)
        too_long = (dict(overlong_records(split, np.arange(len(index)), lengths, limit))
                    if lengths is not None else {})
        for i, err in too_long.items():
            index.report.add(err)
            tasks[index.task_order[index.tasks[i]]].count -= 1
        pick = np.arange(len(index))
        if len(pick) > sample:
            pick = np.sort(np.random.default_rng(seed).choice(len(pick), sample, replace=False))
        for i in pick:
            if int(i) in too_long:
                continue
            try:
                s = split.read(int(i))
            except DataFormatError as err:
                index.report.add(err)
                tasks[index.task_order[index.tasks[i]]].count -= 1
                continue
            t = tasks[s.task]
            t.example = t.example or s
            for img, sizes in ((s.image, t.input_sizes), (s.target_image, t.target_sizes)):
                if img is not None:
                    sizes[f"{img.shape[1]}x{img.shape[0]}"] += 1
        tasks = {t: summary for t, summary in tasks.items() if summary.count}  # all broken: gone
        index.report.loaded = sum(t.count for t in tasks.values())
        splits[name], reports[name], sampled[name] = tasks, index.report, len(pick)
    return CheckResult(str(root), manifest, splits, reports, sampled=sampled,
                       imports=import_summary(root))
