"""A split read from disk record by record: an index of its lines, built in one pass, and random
access to any record with its images.

Holding a split in memory (`formats.load_split`) keeps every image: right for ShapesWorld
(12,000 images of 48x48), impossible for real data (665,000 images at 384x384 would need
hundreds of GB). A `SplitIndex` keeps per valid record only its byte offset, line, task and
which images it has (about 20 bytes a record: 20 MB for a million records), and
`DiskSplit.read(i)` reads, validates and decodes record i when a batch needs it.

Why an index of the JSONL file and torch.utils.data workers (utamoe.train.data.BatchStream)
rather than Hugging Face datasets or webdataset shards: a batch is a pure function of its
position, so training needs random access to record i, which an offset index gives on the
user's own files as they are; webdataset shards are read in sequence (shuffle buffers, not
positions), and an Arrow copy (datasets) would duplicate every image of the dataset on disk.

The index pass validates every record as `load_split` does (fields, task, group, that each
image file exists inside the dataset or its image root, duplicate ids), without decoding an
image; `on_error` decides what a broken record does (raise, or skip and count it in a
LoadReport). What only decoding finds (an unreadable or oversized image) is found by `read`,
which raises a DataFormatError naming the file and line. The index is a pure function of the
file, so it can be saved and loaded back (`save` / `load`: a resumed run skips the pass) as long
as the file is unchanged (size and modification time are checked).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utamoe.data.formats import MAX_IMAGE_PIXELS as MAX_PIXELS
from utamoe.data.formats import (
    DataFormatError,
    LoadReport,
    OnError,
    Sample,
    image_root,
    overlong,
    parse_record,
    record_to_sample,
)

HAS_IMAGE, HAS_TARGET_IMAGE, HAS_TURN_IMAGE = 1, 2, 4  # `flags` bits
INDEX_VERSION = 1


def _id_hash(sample_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "little",
                          signed=True)


def fingerprint(path: Path) -> dict:
    """What identifies a split file's content for a saved index: its path, size and mtime."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class SplitIndex:
    """The valid records of one split file: offsets[i], lines[i] (1-based), tasks[i] (an index
    into `task_order`, the tasks in order of first appearance) and flags[i] (its images)."""

    path: Path
    offsets: np.ndarray
    lines: np.ndarray
    tasks: np.ndarray
    flags: np.ndarray
    task_order: list[str]
    report: LoadReport
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets)

    def counts(self) -> dict[str, int]:
        """Records per task, in order of first appearance."""
        n = np.bincount(self.tasks, minlength=len(self.task_order))
        return {t: int(n[i]) for i, t in enumerate(self.task_order) if n[i]}

    def by_task(self, wanted=None, max_per_task: int = 0) -> dict[str, np.ndarray]:
        """Record positions per task (file order), tasks in order of first appearance; only the
        `wanted` tasks, at most `max_per_task` each (0: all) -- the selection and order
        utamoe.train.data gives samples held in memory."""
        out = {}
        for i, task in enumerate(self.task_order):
            if wanted is not None and task not in wanted:
                continue
            pos = np.flatnonzero(self.tasks == i)
            if max_per_task > 0:
                pos = pos[:max_per_task]
            if len(pos):
                out[task] = pos
        return out

    # ------------------------------------------------------------------ saving

    def save(self, file: Path) -> None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + ".tmp.npz")
        meta = {"version": INDEX_VERSION, "source": self.source, "task_order": self.task_order,
                "loaded": self.report.loaded, "skipped": self.report.skipped,
                "errors": [[e.line, e.message] for e in self.report.errors]}
        np.savez(tmp, offsets=self.offsets, lines=self.lines, tasks=self.tasks, flags=self.flags,
                 meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        os.replace(tmp, file)

    @classmethod
    def load(cls, file: Path, path: Path, source: dict) -> SplitIndex | None:
        """The index saved in `file` if it was built from this very file (else None)."""
        if not file.is_file():
            return None
        try:
            with np.load(file) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                if meta.get("version") != INDEX_VERSION or meta.get("source") != source:
                    return None
                arrays = {k: z[k] for k in ("offsets", "lines", "tasks", "flags")}
        except (OSError, ValueError, KeyError):
            return None  # a damaged cache is rebuilt, never trusted
        report = LoadReport(str(path), loaded=meta["loaded"], skipped=meta["skipped"])
        report.errors = [DataFormatError(path, line, msg) for line, msg in meta["errors"]]
        return cls(path, task_order=meta["task_order"], report=report, source=source, **arrays)


def build_index(path: str | os.PathLike, on_error: OnError = "raise", max_errors: int = 5,
                progress=None) -> SplitIndex:
    """One pass over a split file: validate every record without decoding images (see the
    module docstring). `progress(n)` is called with the records done, every 10,000."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "split file not found; a split is <dir>/<split>.jsonl")
    root = image_root(path.parent)
    report = LoadReport(str(path), max_errors=max_errors)
    offsets, lines, tasks, flags, hashes = [], [], [], [], []
    order: dict[str, int] = {}
    offset, pending = 0, None
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                sample = record_to_sample(parse_record(raw, path, lineno), root, path, lineno,
                                          load_images=False)
            except DataFormatError as err:
                if on_error == "raise":  # after a duplicate id on an earlier line, if any
                    pending = err
                    break
                report.add(err)
                continue
            offsets.append(start)
            lines.append(lineno)
            tasks.append(order.setdefault(sample.task, len(order)))
            flags.append(_flags(sample))
            hashes.append(_id_hash(sample.id))
            if progress is not None and len(offsets) % 10_000 == 0:
                progress(10_000)
    index = SplitIndex(path, np.asarray(offsets, np.int64), np.asarray(lines, np.int64),
                       np.asarray(tasks, np.int16), np.asarray(flags, np.uint8), list(order),
                       report, fingerprint(path))
    _drop_duplicates(index, np.asarray(hashes, np.int64), on_error)
    if pending is not None:
        raise pending
    report.loaded = len(index)
    return index


def _flags(s: Sample) -> int:
    return ((HAS_IMAGE if s.image_path else 0) | (HAS_TARGET_IMAGE if s.target_image_path else 0)
            | (HAS_TURN_IMAGE if any(t.image_path for t in s.turns or ()) else 0))


def _drop_duplicates(index: SplitIndex, hashes: np.ndarray, on_error: OnError) -> None:
    """Ids must be unique within a split: every record after the first with an id is an error
    (found by 8-byte hashes, confirmed on the records themselves)."""
    _, first = np.unique(hashes, return_index=True)
    if len(first) == len(hashes):
        return
    keep = np.zeros(len(hashes), bool)
    keep[first] = True
    split = DiskSplit(index)
    first_of = {int(hashes[i]): int(i) for i in first}
    for i in np.flatnonzero(~keep):
        j = first_of[int(hashes[i])]
        sid = split.record(int(i))["id"]
        if sid != split.record(j)["id"]:  # two ids, one hash: not a duplicate
            keep[i] = True
            continue
        err = DataFormatError(index.path, int(index.lines[i]), f"duplicate id '{sid}' (first on "
                              f"line {int(index.lines[j])}); ids must be unique within a split")
        if on_error == "raise":
            raise err
        index.report.add(err)
    for name in ("offsets", "lines", "tasks", "flags"):
        setattr(index, name, getattr(index, name)[keep])


class DiskSplit:
    """Random access to the records of an indexed split. The file is opened once per process
    (so a DataLoader's workers each open their own). `draft`: JPEGs decoded at a reduced scale
    still at least that side (utamoe.vision.images.read_image)."""

    def __init__(self, index: SplitIndex, max_pixels: int = MAX_PIXELS, draft: int | None = None):
        self.index, self.max_pixels, self.draft = index, max_pixels, draft
        self.root = image_root(index.path.parent)
        self._fh, self._pid = None, None

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:  # an open file does not travel to another process
        return {**self.__dict__, "_fh": None, "_pid": None}

    def _raw(self, i: int) -> bytes:
        if self._fh is None or self._pid != os.getpid():
            self._fh, self._pid = open(self.index.path, "rb"), os.getpid()  # noqa: SIM115
        self._fh.seek(int(self.index.offsets[i]))
        return self._fh.readline()

    def record(self, i: int) -> dict:
        """Record i as parsed JSON."""
        return parse_record(self._raw(i), self.index.path, int(self.index.lines[i]))

    def read(self, i: int, load_images: bool = True) -> Sample:
        """Record i as a Sample with its images decoded (a DataFormatError names its line)."""
        line = int(self.index.lines[i])
        rec = parse_record(self._raw(i), self.index.path, line)
        return record_to_sample(rec, self.root, self.index.path, line, load_images,
                                self.max_pixels, self.draft)


def overlong_records(split: DiskSplit, positions: np.ndarray,
                     lengths: Callable[[list[Sample]], list[int]], limit: int | None,
                     chunk: int = 1024, progress=None) -> list[tuple[int, DataFormatError]]:
    """(record position, too_long error) of each record at `positions` whose sequence is longer
    than `limit` (utamoe.data.formats.overlong), the records read without their images `chunk`
    at a time: the length check of samples in memory, for a split on disk. `progress(n)` is
    called with the records done."""
    out = []
    if not limit:
        return out
    for start in range(0, len(positions), chunk):
        part = [int(p) for p in positions[start:start + chunk]]
        samples = [split.read(p, load_images=False) for p in part]
        out += [(part[k], err) for k, err in overlong(samples, lengths, limit)]
        if progress is not None:
            progress(len(part))
    return out
