"""VQ codes of a split's generation images, computed once into a file in the run directory.

A split read from disk (utamoe.data.ondisk) never holds its images, so the codes of its
generation targets (and edit inputs) cannot live in a dict of arrays either: they are encoded
once, before the first step, into `<run>/data_cache/codes-<split>.npy` (a memory-mapped
(items, grid^2) array; 1,024 bytes an image for a 16x16 grid at 4 bytes a code), and each batch
reads the rows of its samples. Encoding goes in chunks of 256 images in the order utamoe.data.
sequences.precompute_codes takes for samples held in memory (tasks in order of first
appearance, records in file order, input before target), so the codes are the same numbers
either way. The pass is resumable: after each chunk the file is flushed and `done` recorded,
and a killed run continues from the last chunk it finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from utamoe.data.formats import Sample
from utamoe.data.ondisk import HAS_IMAGE, HAS_TARGET_IMAGE, DiskSplit
from utamoe.tasks import get_task
from utamoe.vision.processor import pixel_values

CHUNK = 256
KINDS = ("image", "target")


def code_items(split: DiskSplit, by_task: dict[str, np.ndarray]) -> np.ndarray:
    """(record position, kind) of every image that becomes codes, in encoding order."""
    flags = split.index.flags
    items = []
    for task, positions in by_task.items():
        if get_task(task).output != "image":
            continue
        for p in positions:
            for k, bit in enumerate((HAS_IMAGE, HAS_TARGET_IMAGE)):
                if flags[p] & bit:
                    items.append((int(p), k))
    return np.asarray(items, np.int64).reshape(-1, 2)


class _ChunkImages(torch.utils.data.Dataset):
    """Chunk c -> its images, read and processed (what a DataLoader's workers compute)."""

    def __init__(self, split: DiskSplit, items: np.ndarray, process, first: int):
        self.split, self.items, self.process, self.first = split, items, process, first

    def __len__(self) -> int:
        return -(-(len(self.items) - self.first) // CHUNK)

    def __getitem__(self, c: int) -> np.ndarray:
        start = self.first + c * CHUNK
        out = []
        for pos, kind in self.items[start:start + CHUNK]:
            s = self.split.read(int(pos))
            out.append(self.process(s.image if kind == 0 else s.target_image))
        return np.stack(out)


class CodeCache:
    """Codes of the items of `code_items`, in `<dir>/codes-<name>.npy`, looked up by record."""

    def __init__(self, directory: Path, name: str, items: np.ndarray, n_records: int):
        self.file = Path(directory) / f"codes-{name}.npy"
        self.state = self.file.with_suffix(".json")
        self.items = items
        self.rows = np.full((n_records, 2), -1, np.int64)
        self.rows[items[:, 0], items[:, 1]] = np.arange(len(items))
        self._codes, self._pid = None, None

    def __getstate__(self) -> dict:  # a memory map is opened anew in each process
        return {**self.__dict__, "_codes": None, "_pid": None}

    def done(self) -> int:
        if not self.state.is_file() or not self.file.is_file():
            return 0
        try:
            state = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return 0
        return int(state.get("done", 0)) if state.get("items") == len(self.items) else 0

    def build(self, split: DiskSplit, process, image_tokenizer, workers: int = 0,
              progress: Callable[[int], None] | None = None) -> int:
        """Encode what is not encoded yet (see the module docstring); returns how many were."""
        first = self.done()
        if first >= len(self.items):
            return 0
        if first == 0:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            grid = image_tokenizer.grid_size
            np.lib.format.open_memmap(self.file, mode="w+", dtype=np.int32,
                                      shape=(len(self.items), grid * grid)).flush()
        codes = np.load(self.file, mmap_mode="r+")
        device = next(image_tokenizer.parameters()).device
        chunks = torch.utils.data.DataLoader(_ChunkImages(split, self.items, process, first),
                                             batch_size=None, num_workers=workers,
                                             generator=torch.Generator().manual_seed(0))
        for c, images in enumerate(chunks):
            start = first + c * CHUNK
            with torch.no_grad():
                out = image_tokenizer.encode(pixel_values(list(images)).to(device))
            codes[start:start + len(images)] = out.reshape(len(images), -1).cpu().numpy()
            codes.flush()
            self._write_state(start + len(images))
            if progress is not None:
                progress(len(images))
        del codes
        return len(self.items) - first

    def _write_state(self, done: int) -> None:
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"items": len(self.items), "done": done}))
        os.replace(tmp, self.state)

    def lookup(self, chosen: list[tuple[Sample, int]]) -> dict[tuple[str, str], list[int]]:
        """{(sample id, kind): codes} of the chosen (sample, record position) pairs."""
        if not len(self.items):
            return {}
        if self._codes is None or self._pid != os.getpid():
            self._codes, self._pid = np.load(self.file, mmap_mode="r"), os.getpid()
        out = {}
        for sample, pos in chosen:
            for k, kind in enumerate(KINDS):
                row = self.rows[pos, k]
                if row >= 0:
                    out[(sample.id, kind)] = self._codes[row].tolist()
        return out
