"""Training data: samples by task, images processed and VQ codes computed once, deterministic
mixture batches.

Every image goes through the model's image processor once, here (resize to the
model's resolution, RGB), so a dataset of any image size and mode trains like
ShapesWorld; generation images (targets, edit inputs) are then encoded to VQ codes
once, not at every epoch.

Batch k of stage s on process r is drawn from a random generator seeded with
(seed, s, k, r): which tasks (by the stage's mixture weights), which samples,
which generation prompts are dropped for classifier-free guidance. A batch is
therefore a pure function of its position, so a resumed run sees exactly the
batches the uninterrupted run would have seen, with no sampler state to save,
and each process of a distributed run sees different data.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import torch

from utamoe.data.formats import Sample
from utamoe.data.sequences import Batch, Encoder, collate, training_sequences
from utamoe.tasks import get_task
from utamoe.vision.processor import pixel_values


def _processed(s: Sample, process) -> Sample:
    images = {k: process(getattr(s, k)) for k in ("image", "target_image") if getattr(s, k) is not None}
    return dataclasses.replace(s, **images) if images else s


class TrainData:
    def __init__(self, samples: list[Sample], encoder: Encoder, seed: int, rank: int = 0):
        self.encoder, self.seed, self.rank = encoder, seed, rank
        self.by_task: dict[str, list[Sample]] = defaultdict(list)
        for s in samples:
            self.by_task[s.task].append(_processed(s, encoder.process))
        self.codes: dict[tuple[str, str], list[int]] = {}

    def code_images(self) -> list[tuple[str, str, np.ndarray]]:
        """(sample id, "image" | "target", image) of every image that becomes VQ codes: the
        targets and inputs of the tasks that produce images."""
        return [(s.id, kind, img) for task, samples in self.by_task.items()
                if get_task(task).output == "image" for s in samples
                for kind, img in (("image", s.image), ("target", s.target_image))
                if img is not None]

    def precompute_codes(self, image_tokenizer, batch_size: int = 256, progress=None) -> int:
        """VQ codes of every generation image (see `code_images`), computed once."""
        todo = [item for item in self.code_images() if item[:2] not in self.codes]
        device = next(image_tokenizer.parameters()).device
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            with torch.no_grad():
                codes = image_tokenizer.encode(pixel_values([img for _, _, img in chunk]).to(device))
            for (sid, kind, _), c in zip(chunk, codes.reshape(len(chunk), -1).tolist()):
                self.codes[(sid, kind)] = c
            if progress is not None:
                progress(len(chunk))
        return len(todo)

    def tasks_available(self, mixture: dict[str, float]) -> dict[str, float]:
        """The mixture restricted to tasks that have samples (error if none do)."""
        live = {t: w for t, w in mixture.items() if w > 0 and self.by_task.get(t)}
        if not live:
            have = sorted(t for t, v in self.by_task.items() if v)
            raise ValueError(f"no training samples for any task of the mixture {mixture}; "
                             f"the dataset has: {have}")
        return live

    def batch(self, stage: int, step: int, batch_size: int, mixture: dict[str, float],
              cfg_dropout: float) -> Batch:
        live = self.tasks_available(mixture)
        names = sorted(live)
        weights = np.array([live[t] for t in names], dtype=np.float64)
        rng = np.random.default_rng([self.seed, stage, step, self.rank])
        tasks = rng.choice(len(names), size=batch_size, p=weights / weights.sum())
        chosen = [self.by_task[names[t]][rng.integers(len(self.by_task[names[t]]))] for t in tasks]
        seqs = training_sequences(self.encoder, chosen, cfg_dropout, rng, self.codes)
        return collate(seqs, self.encoder.special.pad)
