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

Data too large for memory (`data.loading: disk`, the default for anything that is not a
benchmark's generated data) is read from disk when a batch needs it: `TrainData` then holds a
utamoe.data.ondisk.DiskSplit (an index of the split file) and the record positions per task,
draws positions exactly as it draws samples held in memory (so both give the same batches),
reads, validates and processes the chosen records, and takes the codes of their generation
images from a file computed once (utamoe.train.code_cache). `BatchStream` lets `data.workers`
processes (torch.utils.data) compute the batches of the next positions ahead of the training
loop; since a batch is a pure function of its position, which process computes it changes
nothing. A record that turns out broken only when read (an unreadable image) stops the run with
its file and line (`on_error: raise`), or (`skip`) is reported on stderr with its file and line
and the next record of its task is used instead, which keeps the batch a function of its
position.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import defaultdict

import numpy as np
import torch

from utamoe.data.formats import DataFormatError, Sample
from utamoe.data.ondisk import DiskSplit
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
    """Samples held in memory (a list), or a split read from disk: a DiskSplit with the record
    positions of each task (`disk_tasks`, utamoe.data.ondisk.SplitIndex.by_task)."""

    def __init__(self, samples: list[Sample] | DiskSplit, encoder: Encoder, seed: int,
                 rank: int = 0, disk_tasks: dict[str, np.ndarray] | None = None):
        self.encoder, self.seed, self.rank = encoder, seed, rank
        self.by_task: dict[str, list[Sample]] = defaultdict(list)
        self.disk: DiskSplit | None = None
        self.disk_tasks: dict[str, np.ndarray] = {}
        if isinstance(samples, DiskSplit):
            self.disk, self.disk_tasks = samples, dict(disk_tasks or {})
        else:
            for s in samples:
                self.by_task[s.task].append(_processed(s, encoder.process))
        self.codes: dict[tuple[str, str], list[int]] = {}
        self.code_cache = None  # utamoe.train.code_cache.CodeCache, for a split on disk
        self.on_error = "raise"  # a record found broken when read from disk (see the docstring)
        self.prompt_loss_tasks: tuple[str, ...] = ()  # utamoe.train.levers.add_prompt_loss
        # The benchmark the data is from (utamoe.benchmarks.BenchmarkData), whose hooks these
        # use: `stream` draws fresh samples from its generator instead of cycling the dataset
        # (image_tokenizer encodes their generation targets); `extra_questions` appends up to
        # k more questions about each image after its answer.
        self.benchmark = None
        self.stream = False
        self.image_tokenizer = None
        self.extra_questions = 0
        self.extra_question_kinds: dict[str, float] = {}
        # `text_scene_questions`: the share of question samples shown as text only (the
        # benchmark's `scene_text`: the scene written before the question, the image blank).
        self.text_scene_questions = 0.0
        # utamoe.data.packing: None = right-padded rows; N = rows of <= N tokens (0: one row).
        self.pack_tokens: int | None = None

    def samples(self) -> list[Sample]:
        """The samples held in memory (none for a split on disk: it is read batch by batch)."""
        return [s for samples in self.by_task.values() for s in samples]

    @property
    def tasks(self) -> list[str]:
        """The tasks it has samples of, in memory or on disk (what a saved model records as
        trained, utamoe.eval)."""
        return [t for t in (self.disk_tasks if self.disk is not None else self.by_task)
                if self._has(t)]

    def _count(self, task: str) -> int:
        return len(self.disk_tasks[task]) if self.disk is not None else len(self.by_task[task])

    def _has(self, task: str) -> bool:
        return bool(self.disk_tasks.get(task) is not None if self.disk is not None
                    else self.by_task.get(task))

    def _read(self, task: str, i: int) -> tuple[Sample, int]:
        """Record i of `task` of the split on disk, processed, with its position; a broken one
        raises, or with on_error "skip" is reported and the task's next record is used."""
        positions = self.disk_tasks[task]
        for k in range(len(positions)):
            pos = int(positions[(i + k) % len(positions)])
            try:
                return _processed(self.disk.read(pos), self.encoder.process), pos
            except DataFormatError as err:
                if self.on_error == "raise":
                    raise
                print(f"[data] skipped (on_error: skip), the next {task} record used instead: "
                      f"{err}", file=sys.stderr, flush=True)
        raise DataFormatError(self.disk.index.path, None, f"no {task} record can be read; fix "
                              "the records reported above")

    def _chosen(self, names: list[str], tasks, rng: np.random.Generator):
        """The samples of a batch (task indices `tasks` into `names`) and their codes: one
        draw per sample, the same draws for samples in memory and on disk."""
        if self.disk is None:
            return [self.by_task[names[t]][rng.integers(len(self.by_task[names[t]]))]
                    for t in tasks], self.codes
        picked = [self._read(names[t], int(rng.integers(self._count(names[t])))) for t in tasks]
        codes = self.code_cache.lookup(picked) if self.code_cache is not None else {}
        return [s for s, _ in picked], codes

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
                if w > 0 and (self._has(t) or (self.stream and t in self.benchmark.stream_tasks()))}
        if not live:
            have = sorted(self.tasks)
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
            chosen, codes = self._chosen(names, tasks, rng)
        if self.text_scene_questions > 0:
            chosen = self._as_scene_text(chosen, rng)
        seqs = training_sequences(self.encoder, chosen, cfg_dropout, rng, codes)
        if self.extra_questions > 0:
            self._add_extra_questions(seqs, chosen, rng)
        if self.prompt_loss_tasks:
            sp = self.encoder.special
            add_prompt_loss(seqs, sp.image_end, sp.sep, self.prompt_loss_tasks)
        if self.pack_tokens is not None:
            return pack(seqs, self.encoder.special.pad, self.pack_tokens)
        return collate(seqs, self.encoder.special.pad)

    def _as_scene_text(self, samples: list[Sample], rng: np.random.Generator) -> list[Sample]:
        """Each sample, or with probability `text_scene_questions` its text-only form where the
        benchmark has one (one draw per sample, from the batch's generator)."""
        out = []
        for s in samples:
            text = self.benchmark.scene_text(s) if rng.random() < self.text_scene_questions else None
            out.append(text or s)
        return out

    def _add_extra_questions(self, seqs: list[TokenSequence], samples: list[Sample],
                             rng: np.random.Generator) -> None:
        """Append the benchmark's extra questions (prompt, `<sep>`, answer with loss, `<eos>`)
        to each sequence, in place; `seqs[i]` is the sequence of `samples[i]`. A task with a
        prompt loss (`prompt_loss_tasks`) gets it on these questions too."""
        sp, enc = self.encoder.special, self.encoder
        for seq, sample in zip(seqs, samples):
            prompt_loss = sample.task in self.prompt_loss_tasks
            for question, answer in self.benchmark.extra_questions(sample, rng, self.extra_questions,
                                                                      self.extra_question_kinds):
                seq.text(enc.words(question) + [sp.sep], loss=prompt_loss)
                seq.text(enc.answer_words(answer) + [sp.eos], loss=True)


class _Positions(torch.utils.data.Dataset):
    """Item k = the batch at position first + k of one stage (what a worker computes)."""

    def __init__(self, data: TrainData, stage: int, first: int, count: int, args: tuple):
        self.data, self.stage, self.first, self.count, self.args = data, stage, first, count, args

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int):
        return self.first + k, self.data.batch(self.stage, self.first + k, *self.args)


class BatchStream:
    """The batches of one stage at positions first, first + 1, ..., first + count - 1:
    computed by `workers` processes ahead of the loop (torch.utils.data.DataLoader, each
    worker a whole batch), or by `TrainData.batch` in the loop itself when workers is 0.

    `get(position)` returns the batch at a position; positions only go forward (a step
    stopped part-way, e.g. by a non-finite loss, skips the rest of its micro-batches)."""

    def __init__(self, data: TrainData, stage: int, first: int, count: int, batch_size: int,
                 mixture: dict[str, float], cfg_dropout: float, workers: int = 0,
                 prefetch: int = 2):
        self.data, self.stage = data, stage
        self.args = (batch_size, mixture, cfg_dropout)
        self._it, self._last = None, first - 1
        if workers > 0 and count > 0:
            # Its own generator: a loader seeds its workers from the global one otherwise,
            # which would change every random draw of training after it.
            loader = torch.utils.data.DataLoader(
                _Positions(data, stage, first, count, self.args), batch_size=None,
                num_workers=workers, prefetch_factor=prefetch,
                generator=torch.Generator().manual_seed(0))
            self._it = iter(loader)

    def get(self, position: int):
        if position <= self._last:
            raise ValueError(f"batch position {position} was already drawn; positions go forward")
        self._last = position
        if self._it is None:
            return self.data.batch(self.stage, position, *self.args)
        for drawn, batch in self._it:
            if drawn == position:
                return batch
        raise IndexError(f"batch position {position} is past the stage's last position")

    def close(self) -> None:
        """Stop the workers (they also stop when the stream is garbage-collected)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
