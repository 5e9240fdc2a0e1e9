"""Readers of the field's dataset files, one record at a time (utamoe.data.importing).

Every reader yields `Row(file, index, record)`: the file a record came from and its 0-based
index there (what an unmappable record is reported with), and the record as a dict. Memory
stays bounded whatever the file's size:

    JSON arrays   read incrementally with ijson (LLaVA's instruction files are single arrays
                  of up to a few GB); a file whose first character is not '[' is read as JSONL
    JSONL         line by line
    CSV           csv.DictReader (ImageFolder's metadata.csv)
    parquet       pyarrow, one record batch at a time
    HF datasets   `datasets.load_from_disk` (memory-mapped Arrow), rows in order

`start` skips the first records (a resumed import): JSON and JSONL records are parsed to be
skipped, parquet and HF datasets skip without reading.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utamoe.data.formats import DataFormatError


def optional_import(module: str, why: str):
    """An optional dependency (the `data` extra), or an error that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DataFormatError(module, None, f"{why} needs the {module.split('.')[0]!r} package: "
                              "pip install 'utamoe[data]'") from err


@dataclass
class Row:
    file: str
    index: int  # 0-based, within `file`
    record: Any


class BadRow(ValueError):
    """A row that is not even a record (malformed JSON); `file` and `index` locate it."""

    def __init__(self, file: str, index: int, message: str):
        self.file, self.index = file, index
        super().__init__(message)


def _first_char(path: Path) -> str:
    with open(path, "rb") as fh:
        while chunk := fh.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1].decode("ascii", "replace")
    return ""


def json_rows(path: Path, start: int = 0) -> Iterator[Row]:
    """The records of a JSON array file (incrementally) or of a JSONL file."""
    if _first_char(path) != "[":
        yield from jsonl_rows(path, start)
        return
    ijson = optional_import("ijson", "reading large JSON files record by record")
    with open(path, "rb") as fh:
        index = -1
        try:
            for index, rec in enumerate(ijson.items(fh, "item", use_float=True)):
                if index >= start:
                    yield Row(str(path), index, rec)
        except ijson.JSONError as err:
            raise DataFormatError(path, None, f"malformed JSON after record {index} ({err}); "
                                  "fix the file (records before it were read)") from err


def jsonl_rows(path: Path, start: int = 0) -> Iterator[Row]:
    """The records of a JSONL file; a line that is no JSON comes as a BadRow error record."""
    with open(path, "rb") as fh:
        index = -1
        for raw in fh:
            if not raw.strip():
                continue
            index += 1
            if index < start:
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                rec = BadRow(str(path), index, f"malformed JSON ({err})")
            yield Row(str(path), index, rec)


def csv_rows(path: Path, start: int = 0) -> Iterator[Row]:
    with open(path, newline="", encoding="utf-8") as fh:
        for index, rec in enumerate(csv.DictReader(fh)):
            if index >= start:
                yield Row(str(path), index, rec)


def parquet_rows(path: Path, start: int = 0, batch_rows: int = 256) -> Iterator[Row]:
    pq = optional_import("pyarrow.parquet", "reading parquet files")
    file = pq.ParquetFile(path)
    index = 0
    for g in range(file.num_row_groups):
        n = file.metadata.row_group(g).num_rows
        if index + n <= start:  # a whole row group before the start: not read at all
            index += n
            continue
        for batch in file.iter_batches(batch_size=batch_rows, row_groups=[g]):
            for rec in batch.to_pylist():
                if index >= start:
                    yield Row(str(path), index, rec)
                index += 1


def table_rows(path: Path, start: int = 0) -> Iterator[Row]:
    """Rows of a CSV, JSON / JSONL or parquet file, by its extension."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return csv_rows(path, start)
    if suffix == ".parquet":
        return parquet_rows(path, start)
    if suffix in (".json", ".jsonl"):
        return json_rows(path, start)
    raise DataFormatError(path, None, "not a .csv, .json, .jsonl or .parquet file")


def is_saved_dataset(path: Path) -> bool:
    """A directory written by `datasets`' save_to_disk (a Dataset or a DatasetDict)."""
    return path.is_dir() and any((path / f).is_file() for f in
                                 ("state.json", "dataset_dict.json", "dataset_info.json"))


def hf_dataset(path: Path, split: str | None):
    """A dataset saved with save_to_disk: the Dataset, or one split of a DatasetDict."""
    datasets = optional_import("datasets", "reading Hugging Face datasets")
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None or split not in ds:
            raise DataFormatError(path, None, f"a dataset with splits {sorted(ds)}; choose one "
                                  "with --hf-split")
        ds = ds[split]
    return ds


def hf_rows(ds, name: str, start: int = 0) -> Iterator[Row]:
    """The rows of a `datasets.Dataset`, images as {"bytes", "path"} (not decoded)."""
    datasets = optional_import("datasets", "reading Hugging Face datasets")
    for col, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))
        elif isinstance(feature, datasets.Sequence | list) and isinstance(
                getattr(feature, "feature", None) or (feature[0] if isinstance(feature, list)
                                                      else None), datasets.Image):
            ds = ds.cast_column(col, datasets.Sequence(datasets.Image(decode=False)))
    for index in range(start, len(ds)):
        yield Row(name, index, ds[index])


def parquet_files(path: Path) -> list[Path]:
    """A parquet file, or the parquet files of a folder (sorted, recursively)."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if not files:
        raise DataFormatError(path, None, "no .parquet files here")
    return files


def file_size(path: Path) -> int:
    return sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*"))
               if f.is_file()) if path.exists() else 0


def fingerprint(paths: list[Path]) -> list[list]:
    """What identifies the source's content for a resumed import: paths, sizes, mtimes."""
    out = []
    for p in paths:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        out += [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return out


def env_offline() -> None:
    """Reading local files needs no hub: keep `datasets` from trying one."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
