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
and each process of a distributed run sees different data. With `pack_tokens` set
(`train.pack`), the same samples are packed into rows (utamoe.data.packing), a
deterministic function of the sequences, so this still holds.

A benchmark's data may also use its training hooks (utamoe.benchmarks): fresh samples drawn
from its generator at every batch (`stream`, `data.stream`) and extra questions about each
image appended to its answer (`extra_questions`, `train.extra_questions`):

    <bos> <pope> <img> <und_slot> x P </img> q1 <sep> a1 <eos> q2 <sep> a2 <eos> ...

A POPE sample carries one answer token, so a batch of 32 probes gives the binding circuit
32 bits of gradient per step while it pays for 32 image encodings; k extra questions give
k + 1 answers per image encoding. Only the answers carry a loss; the first question keeps
the evaluation layout exactly. Both draw from the batch's own generator.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

from utamoe.data.formats import Sample
from utamoe.data.packing import pack
from utamoe.data.sequences import (
    Batch,
    Encoder,
    TokenSequence,
    code_images,
    collate,
    precompute_codes,
    training_sequences,
)
from utamoe.train.levers import add_prompt_loss


def _processed(s: Sample, process) -> Sample:
    images = {k: process(getattr(s, k)) for k in ("image", "target_image") if getattr(s, k) is not None}
    if s.turns is not None:  # a conversation's images are on its turns
        images["turns"] = [dataclasses.replace(t, image=process(t.image)) if t.image is not None
                           else t for t in s.turns]
    return dataclasses.replace(s, **images) if images else s

STREAM_OFFSET = 2**40  # stream sample indices start here, far above any stored split


class TrainData:
    def __init__(self, samples: list[Sample], encoder: Encoder, seed: int, rank: int = 0):
        self.encoder, self.seed, self.rank = encoder, seed, rank
        self.by_task: dict[str, list[Sample]] = defaultdict(list)
        for s in samples:
            self.by_task[s.task].append(_processed(s, encoder.process))
        self.codes: dict[tuple[str, str], list[int]] = {}
        self.prompt_loss_tasks: tuple[str, ...] = ()  # utamoe.train.levers.add_prompt_loss
        # The benchmark the data is from (utamoe.benchmarks.BenchmarkData), whose hooks these
        # use: `stream` draws fresh samples from its generator instead of cycling the dataset
        # (image_tokenizer encodes their generation targets); `extra_questions` appends up to
        # k more questions about each image after its answer.
        self.benchmark = None
        self.stream = False
        self.image_tokenizer = None
        self.extra_questions = 0
        # utamoe.data.packing: None = right-padded rows; N = rows of <= N tokens (0: one row).
        self.pack_tokens: int | None = None

    def samples(self) -> list[Sample]:
        return [s for samples in self.by_task.values() for s in samples]

    def code_images(self) -> list[tuple[str, str, np.ndarray]]:
        """The images that become VQ codes (utamoe.data.sequences.code_images)."""
        return code_images(self.samples())

    def precompute_codes(self, image_tokenizer, batch_size: int = 256, progress=None) -> int:
        """VQ codes of every generation image, computed once; returns how many were new."""
        before = len(self.codes)
        self.codes = precompute_codes(self.samples(), self.encoder, image_tokenizer, batch_size,
                                      progress, done=self.codes)
        return len(self.codes) - before

    def _stream_samples(self, tasks: list[str], rng: np.random.Generator) -> list[Sample]:
        """Fresh samples from the benchmark's generator, one per entry of `tasks`.

        Sample indices are drawn from `rng` (seeded by the batch's position) far above any
        stored split's size, so a batch stays a pure function of its position and, with
        overwhelming probability, never repeats a sample or one of the dataset's."""
        index = rng.integers(STREAM_OFFSET, 2**62, size=len(tasks))
        return [self.benchmark.stream_sample(t, int(i)) for t, i in zip(tasks, index)]

    def _codes_of(self, samples: list[Sample]) -> dict[tuple[str, str], list[int]]:
        """VQ codes of the generation images of `samples`, in one batched encode."""
        if self.image_tokenizer is None:
            return {}
        return precompute_codes(samples, self.encoder, self.image_tokenizer)

    def tasks_available(self, mixture: dict[str, float]) -> dict[str, float]:
        """The mixture restricted to tasks that have samples (error if none do)."""
        live = {t: w for t, w in mixture.items()
                if w > 0 and (self.by_task.get(t) or (self.stream and t in self.benchmark.stream_tasks()))}
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
        if self.stream:
            chosen = self._stream_samples([names[t] for t in tasks], rng)
            codes = self._codes_of(chosen)
        else:
            chosen = [self.by_task[names[t]][rng.integers(len(self.by_task[names[t]]))] for t in tasks]
            codes = self.codes
        seqs = training_sequences(self.encoder, chosen, cfg_dropout, rng, codes)
        if self.extra_questions > 0:
            self._add_extra_questions(seqs, chosen, rng)
        if self.prompt_loss_tasks:
            sp = self.encoder.special
            add_prompt_loss(seqs, sp.image_end, sp.sep, self.prompt_loss_tasks)
        if self.pack_tokens is not None:
            return pack(seqs, self.encoder.special.pad, self.pack_tokens)
        return collate(seqs, self.encoder.special.pad)

    def _add_extra_questions(self, seqs: list[TokenSequence], samples: list[Sample],
                             rng: np.random.Generator) -> None:
        """Append the benchmark's extra questions (prompt, `<sep>`, answer with loss, `<eos>`)
        to each sequence, in place; `seqs[i]` is the sequence of `samples[i]`."""
        sp, enc = self.encoder.special, self.encoder
        for seq, sample in zip(seqs, samples):
            for question, answer in self.benchmark.extra_questions(sample, rng, self.extra_questions):
                seq.text(enc.words(question) + [sp.sep])
                seq.text(enc.answer_words(answer) + [sp.eos], loss=True)
