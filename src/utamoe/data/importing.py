"""`utamoe data import`: bring a dataset in the field's formats into the utamoe format, as it is.

    utamoe data import --from llava     llava_v1_5_mix665k.json --images /data/llava --out data/llava
    utamoe data import --from messages  train.jsonl --out data/chat          (LLaMA-Factory, ms-swift)
    utamoe data import --from t2i       pairs/ --out data/pairs              (ImageFolder metadata.csv/jsonl)
    utamoe data import --from hf        saved_dataset/ --out data/hf         (save_to_disk, or parquet)

Records are read one at a time (utamoe.data.sources) and mapped (utamoe.data.mapping) to records
of `<out>/<split>.jsonl`; memory stays bounded whatever the source's size. Images:

- a folder of images that exists is used where it is, never copied: image paths in the source
  resolve against `--images` (by default the source file's folder). When that folder is not
  inside `--out`, the manifest names it (`image_root`, utamoe.data.formats.image_root): the one
  explicit way for a dataset to refer to images outside its directory; paths stay inside it.
- images that exist only as bytes (a Hugging Face dataset's Image column, `data:` URLs) are
  written under `<out>/images/<split>/` (their bytes as they are), which needs the images to
  live in the dataset directory: an import either writes images or refers to an outside
  folder, and records of the other kind are reported as unmappable. A Hugging Face dataset's
  images are written unless `--images` is given.

Every source record that cannot be mapped is reported with its source file and 0-based index
and the reason, in `<out>/import/<split>.rejected.jsonl` (the CLI prints the first ones and
counts them by reason); nothing is dropped silently. `<out>/import/<split>.report.json` says what
the import mapped (records per task, single answers and conversations, images written).

Resumable and idempotent: output is written to `<split>.jsonl.partial`, and every 1,000 source
records the files are flushed and their sizes and the records consumed are saved in
`<out>/import/<split>.state.json`; an import started again with the same source and options
continues from there (a killed import ends with the same files as one that was not), and one
that already finished does nothing. The `.partial` file becomes `<split>.jsonl` only at the end.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from utamoe.data import sources
from utamoe.data.formats import FORMAT_NAME, FORMAT_VERSION, IMAGE_ROOT, MANIFEST, DataFormatError
from utamoe.data.mapping import (
    Msg,
    Options,
    Unmappable,
    llava_messages,
    messages_messages,
    pair_record,
    record_of,
)
from utamoe.fsutil import check_output_dir

KINDS = ("llava", "messages", "t2i", "hf")
TEXT_COLUMNS = ("text", "caption", "prompt", "sentence")
IMAGE_COLUMNS = ("file_name", "image", "image_path", "path", "file", "images")
SAVE_EVERY = 1000
SHOWN = 5  # rejected records kept in the report (all are in the rejected file)
_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8", "jpg"), (b"GIF8", "gif"), (b"BM", "bmp"))


@dataclass(frozen=True)
class ImportOptions:
    kind: str
    split: str = "train"
    images: str | None = None  # the folder image paths resolve against
    task: str | None = None  # default: instruct (llava, messages), t2i (pairs)
    system: str = "prepend"
    prompt: str = "describe the image"
    text_column: str | None = None
    image_column: str | None = None
    hf_split: str | None = None
    test_every: int = 0  # > 0: every k-th source record goes to the `test` split instead


@dataclass
class ImportReport:
    kind: str
    source: str
    out: str
    read: int = 0
    mapped: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> task -> records
    conversations: int = 0
    unmapped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    rejected: list[dict] = field(default_factory=list)  # the first SHOWN
    images_written: int = 0
    image_root: str | None = None
    complete: bool = False
    resumed_at: int = 0
    already_done: bool = False  # the same import had finished: nothing was read again

    def reject(self, row: sources.Row, reason: str) -> dict:
        self.unmapped += 1
        key = re.sub(r"\d+", "N", reason.split(";")[0])[:100]
        self.reasons[key] = self.reasons.get(key, 0) + 1
        entry = {"source": row.file, "index": row.index, "reason": reason}
        if len(self.rejected) < SHOWN:
            self.rejected.append(entry)
        return entry


class ImageStore:
    """Image references of source records -> paths in the dataset (see the module docstring)."""

    def __init__(self, out: Path, split: str, root: Path):
        self.out, self.split, self.root = out.resolve(), split, root.resolve()
        inside = self.root.is_relative_to(self.out)
        self.external = None if inside else self.root
        self.prefix = Path(os.path.relpath(self.root, self.out)) if inside else Path()
        self.written = 0

    def ref(self, value: Any, name: str) -> str:
        if isinstance(value, dict):  # a Hugging Face Image: {"bytes", "path"}
            if value.get("bytes"):
                return self._write(bytes(value["bytes"]), name)
            value = value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return self._write(bytes(value), name)
        if not isinstance(value, str) or not value:
            raise Unmappable(f"an image reference that is not a path: {str(value)[:60]!r}")
        if value.startswith("data:"):
            return self._write(_data_url(value), name)
        if value.split(":", 1)[0] in ("http", "https", "s3", "gs"):
            raise Unmappable(f"image {value[:80]} is a remote URL; download the images and give "
                             "local paths (utamoe reads no network)")
        return self._path(value.removeprefix("file://"))

    def _path(self, value: str) -> str:
        full = Path(value) if os.path.isabs(value) else self.root / value
        if not full.resolve().is_relative_to(self.root):
            raise Unmappable(f"image {value} is outside the image folder {self.root}; pass --images "
                             "with a folder that holds it")
        if not full.is_file():
            raise Unmappable(f"image {value} not found (looked for {full}); pass --images with "
                             "the folder the paths are relative to")
        rel = Path(os.path.relpath(full, self.root)) if full.is_absolute() else Path(value)
        return (self.prefix / rel).as_posix()

    def _write(self, data: bytes, name: str) -> str:
        if self.external is not None:
            raise Unmappable(f"an image given as bytes, in an import that refers to the image "
                             f"folder {self.external} outside --out; import such records with "
                             "--images inside --out")
        ext = next((e for magic, e in _MAGIC if data.startswith(magic)), None)
        if ext is None:
            ext = "webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None
        if ext is None:
            raise Unmappable("image bytes of no known format (PNG, JPEG, GIF, BMP, WebP)")
        rel = Path("images") / self.split / f"{name}.{ext}"
        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.out / rel).write_bytes(data)  # same name, same bytes: rewriting on resume is harmless
        self.written += 1
        return rel.as_posix()


def _data_url(url: str) -> bytes:
    head, _, body = url.partition(",")
    if not head.endswith(";base64"):
        raise Unmappable("a data: URL that is not base64")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as err:
        raise Unmappable(f"a data: URL with broken base64 ({err})") from err


# ---------------------------------------------------------------- sources and mapping


@dataclass
class Source:
    """What one import reads: its files, how many rows each has (None: unknown before reading),
    a reader per file `rows(file, start)`, and the default image folder."""

    files: list[Path]
    rows: Callable[[Path, int], Iterator[sources.Row]]
    image_root: Path
    counts: list[int | None] = field(default_factory=list)

    def read(self, start: int) -> Iterator[sources.Row]:
        """Every row from the `start`-th (over all files, in order)."""
        for k, file in enumerate(self.files):
            n = self.counts[k] if k < len(self.counts) else None
            if n is not None and start >= n:
                start -= n
                continue
            seen = 0
            for row in self.rows(file, start):
                seen = row.index + 1
                yield row
            start = max(0, start - seen) if n is None else 0


def open_source(kind: str, src: Path, opts: ImportOptions) -> Source:
    if not src.exists():
        raise DataFormatError(src, None, "not found; give the source file or folder")
    if kind in ("llava", "messages"):
        if not src.is_file():
            raise DataFormatError(src, None, f"--from {kind} reads a .json or .jsonl file")
        return Source([src], sources.json_rows, src.parent)
    if kind == "t2i":
        file = src if src.is_file() else next(
            (src / n for n in ("metadata.jsonl", "metadata.csv", "metadata.parquet")
             if (src / n).is_file()), None)
        if file is None:
            raise DataFormatError(src, None, "no metadata.jsonl, metadata.csv or metadata.parquet "
                                  "here (Hugging Face's ImageFolder layout); give the file itself")
        return Source([file], sources.table_rows, file.parent)
    if kind == "hf":
        sources.env_offline()
        if sources.is_saved_dataset(src):
            ds = sources.hf_dataset(src, opts.hf_split)
            return Source([src], lambda f, start: sources.hf_rows(ds, str(f), start), src,
                          [len(ds)])
        files = sources.parquet_files(src)
        pq = sources.optional_import("pyarrow.parquet", "reading parquet files")
        return Source(files, sources.parquet_rows, src if src.is_dir() else src.parent,
                      [pq.ParquetFile(f).metadata.num_rows for f in files])
    raise DataFormatError(src, None, f"--from {kind!r}: choose one of {', '.join(KINDS)}")


def _column(row: dict, given: str | None, names: tuple[str, ...], what: str, flag: str) -> str:
    if given is not None:
        if given not in row:
            raise DataFormatError(flag, None, f"no column {given!r}; the records have "
                                  f"{sorted(row)}")
        return given
    found = next((n for n in names if n in row), None)
    if found is None:
        raise DataFormatError(flag, None, f"no {what} column among {sorted(row)}; name it with "
                              f"{flag}")
    return found


class Mapper:
    """One source row -> one utamoe record (images resolved), or Unmappable."""

    def __init__(self, opts: ImportOptions, store: ImageStore):
        self.opts, self.store = opts, store
        self.columns: tuple[str, str] | None = None

    def _options(self, default_task: str) -> Options:
        return Options(task=self.opts.task or default_task, system=self.opts.system,
                       prompt=self.opts.prompt)

    def __call__(self, row: sources.Row, index: int, split: str) -> dict:
        rec = row.record
        if isinstance(rec, sources.BadRow):
            raise Unmappable(str(rec))
        if not isinstance(rec, dict):
            raise Unmappable(f"a record must be an object, got {type(rec).__name__}")
        kind = self.opts.kind
        if kind == "hf":
            kind = "messages" if "messages" in rec else "llava" if "conversations" in rec else "t2i"
        if kind == "llava":
            out = record_of(llava_messages(self._with_image(rec, "image")), self._options("instruct"))
        elif kind == "messages":
            out = record_of(messages_messages(self._with_image(rec, "images")),
                            self._options("instruct"))
        elif {"question", "answer"} <= set(rec) and self.opts.task != "t2i":
            image = rec.get(self.opts.image_column or "image")
            msgs = [Msg("user", str(rec["question"]), [image] if image else []),
                    Msg("assistant", str(rec["answer"]))]
            out = record_of(msgs, self._options("instruct"))
        else:
            if self.columns is None:
                self.columns = (_column(rec, self.opts.image_column, IMAGE_COLUMNS, "image",
                                        "--image-column"),
                                _column(rec, self.opts.text_column, TEXT_COLUMNS, "text",
                                        "--text-column"))
            out = pair_record(rec[self.columns[0]], rec[self.columns[1]], self._options("t2i"))
        return self._finish(out, rec, row, index, split)

    def _with_image(self, rec: dict, key: str) -> dict:
        col = self.opts.image_column
        return {**rec, key: rec.get(col)} if col and col != key and col in rec else rec

    def _finish(self, out: dict, rec: dict, row: sources.Row, index: int, split: str) -> dict:
        names = iter(range(100))
        name = lambda: f"{index:08d}_{next(names)}"  # noqa: E731
        for key in ("image", "target_image"):
            if key in out:
                out[key] = self.store.ref(out[key], name())
        for turn in out.get("turns", ()):
            if "image" in turn:
                turn["image"] = self.store.ref(turn["image"], name())
        meta = dict(out.pop("meta", {}))
        meta["source_index"] = row.index
        if isinstance(rec.get("id"), (str, int)) and rec["id"] != "":
            meta["source_id"] = str(rec["id"])
        return {"id": f"{split}-{index:08d}", **out, "meta": meta}


# ---------------------------------------------------------------- writing, resumably


class _Outputs:
    """The files an import appends to (`<split>.jsonl.partial` per split, the rejected list),
    their sizes saved with the import's state, and cut back to them on resume."""

    def __init__(self, out: Path, splits: list[str], opts_split: str):
        self.paths = {s: out / f"{s}.jsonl.partial" for s in splits}
        self.paths["rejected"] = out / "import" / f"{opts_split}.rejected.jsonl"
        self.files = {}

    def open(self, sizes: dict[str, int] | None) -> None:
        for key, path in self.paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path, "ab" if sizes else "wb")  # noqa: SIM115
            if sizes:
                fh.truncate(sizes.get(key, 0))
                fh.seek(sizes.get(key, 0))
            self.files[key] = fh

    def write(self, key: str, rec: dict) -> None:
        self.files[key].write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode()
                              + b"\n")

    def sync(self) -> dict[str, int]:
        sizes = {}
        for key, fh in self.files.items():
            fh.flush()
            os.fsync(fh.fileno())
            sizes[key] = fh.tell()
        return sizes

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


def _state_path(out: Path, split: str) -> Path:
    return out / "import" / f"{split}.state.json"


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _manifest(out: Path, store: ImageStore, opts: ImportOptions, report: ImportReport) -> None:
    """Add this import to the dataset's manifest (checked before the import started)."""
    path = out / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": out.name}
    if store.external is not None:
        manifest[IMAGE_ROOT] = str(store.external)
    manifest.setdefault("imports", {})[opts.split] = {
        "from": opts.kind, "source": report.source, "records": report.mapped,
        "unmapped": report.unmapped}
    _atomic_json(path, manifest)


def _check_target(out: Path, store: ImageStore, splits: list[str], force: bool) -> None:
    """The import may write here: not a benchmark's dataset, one image root for the dataset,
    and no split it writes already there (unless --force)."""
    path = out / MANIFEST
    manifest = _read_json(path)
    if manifest.get("generator"):
        raise DataFormatError(path, None, f"{out} holds a benchmark's generated dataset; import "
                              "into another directory")
    have = manifest.get(IMAGE_ROOT)
    want = str(store.external) if store.external is not None else None
    others = [p.stem for p in out.glob("*.jsonl") if p.stem not in splits]
    if have != want and others:
        raise DataFormatError(path, None, f"its splits {others} refer to images in "
                              f"{have or 'the dataset directory'}, this import's are in "
                              f"{want or 'the dataset directory'}; a dataset has one image root: "
                              "import into another directory")
    done = [s for s in splits if (out / f"{s}.jsonl").exists()]
    if done and not force:
        raise DataFormatError(out / f"{done[0]}.jsonl", None, "exists, written by something else "
                              "(or an import with other options); pass --force to replace it")


def run_import(src: str | os.PathLike, out: str | os.PathLike, opts: ImportOptions,
               force: bool = False, progress: Callable[[int], None] | None = None) -> ImportReport:
    """Import `src` into the dataset directory `out` (see the module docstring)."""
    src, out = Path(src), Path(out)
    if opts.kind not in KINDS:
        raise DataFormatError(src, None, f"--from {opts.kind!r}: choose one of {', '.join(KINDS)}")
    if opts.system not in ("prepend", "meta") or opts.test_every < 0:
        raise DataFormatError(src, None, "--system is prepend or meta; --test-every is >= 0")
    source = open_source(opts.kind, src, opts)
    # A new or empty folder, a dataset (or a stopped import), or the source's own folder (the
    # dataset beside its images); never among other files of the user's (issue 28, item 1).
    beside = out.resolve() in (src.resolve(), src.resolve().parent)
    if not force and not beside:
        check_output_dir(out, (MANIFEST, "import"), "dataset")
    out.mkdir(parents=True, exist_ok=True)
    # A Hugging Face dataset holds its images' bytes: they are written into the dataset unless
    # --images names the folder its image paths are relative to.
    default_root = out if opts.kind == "hf" else source.image_root
    store = ImageStore(out, opts.split, Path(opts.images) if opts.images else default_root)
    splits = [opts.split] + (["test"] if opts.test_every else [])
    key = {"source": sources.fingerprint(source.files), "options": asdict(opts)}
    report_path = out / "import" / f"{opts.split}.report.json"
    finished = _read_json(report_path)
    if not force and finished.get("key") == key and all((out / f"{s}.jsonl").exists() for s in splits):
        return ImportReport(**{**finished["report"], "already_done": True})
    state = _read_json(_state_path(out, opts.split))
    ours = state.get("key") == key  # a stopped import of this very source and options
    resume = state if ours and not force and _intact(out, splits, state) else None
    if not ours:
        _check_target(out, store, splits, force)
    report = ImportReport(opts.kind, str(src), str(out))
    if resume is not None:
        report = ImportReport(**resume["report"])
        report.resumed_at = resume["consumed"]
    outputs = _Outputs(out, splits, opts.split)
    outputs.open(resume["sizes"] if resume else None)
    store.written = report.images_written
    try:
        _copy(source, Mapper(opts, store), outputs, report, opts, key, out, store, progress)
    finally:
        outputs.close()
    for s in splits:
        os.replace(outputs.paths[s], out / f"{s}.jsonl")
    report.complete, report.image_root = True, str(store.external) if store.external else None
    _manifest(out, store, opts, report)
    _atomic_json(report_path, {"key": key, "report": asdict(report)})
    _state_path(out, opts.split).unlink(missing_ok=True)
    return report


def _intact(out: Path, splits: list[str], state: dict) -> bool:
    """Whether the partial files of a stopped import still hold what its state says."""
    sizes = state.get("sizes", {})
    return all((out / f"{s}.jsonl.partial").is_file()
               and (out / f"{s}.jsonl.partial").stat().st_size >= sizes.get(s, 0) for s in splits)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _copy(source: Source, mapper: Mapper, outputs: _Outputs, report: ImportReport,
          opts: ImportOptions, key: dict, out: Path, store: ImageStore, progress) -> None:
    """Map every row from where the import stands, saving the state every SAVE_EVERY rows."""
    def save() -> None:
        report.images_written = store.written
        _atomic_json(_state_path(out, opts.split), {"key": key, "consumed": report.read,
                                                   "sizes": outputs.sync(), "report": asdict(report)})

    for row in source.read(report.read):
        index = report.read
        split = "test" if opts.test_every and index % opts.test_every == opts.test_every - 1 \
            else opts.split
        try:
            rec = mapper(row, index, split)
        except Unmappable as err:
            outputs.write("rejected", report.reject(row, str(err)))
        else:
            outputs.write(split, rec)
            counts = report.mapped.setdefault(split, {})
            counts[rec["task"]] = counts.get(rec["task"], 0) + 1
            report.conversations += "turns" in rec
        report.read += 1
        if report.read % SAVE_EVERY == 0:
            save()
        if progress is not None:
            progress(1)
    report.images_written = store.written
    outputs.sync()
