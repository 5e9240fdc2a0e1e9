"""The on-disk dataset format (JSONL + PNG), its typed record model, validation and loader.

A dataset is a directory holding one `<split>.jsonl` per split, PNG images
referenced by paths relative to the directory, and optionally `dataset.json` (a
manifest: format name and version, generator config). One JSON object per line is
one `Sample`; docs/data_format.md documents every field with examples.

Which tasks exist, their groups and whether they need an input image come from the
task registry (utamoe.tasks). Images are read at their own size and converted to
RGB (any PNG/JPEG mode); resizing to a model's resolution is the model's image
processor's job (utamoe.vision.processor), not the dataset's.

A record may instead be a multi-turn conversation: `turns` (user / assistant, text and
optional images) in place of prompt, image and target (utamoe.data.conversations).

`Sample` is shared by the in-memory ShapesWorld generator and this loader, so a
training pipeline sees the same objects whether data was generated or loaded.
Every loading error is a `DataFormatError` naming the file and line and saying
what to do; `on_error="skip"` keeps going and returns a `LoadReport` that counts
the skipped samples and keeps the first messages, so nothing is dropped silently.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from utamoe.benchmarks import BenchmarkData, benchmark_of_manifest
from utamoe.data.conversations import Turn, check_turns, load_turns
from utamoe.tasks import get_task, is_task, task_names
from utamoe.text.spans import parse_response
from utamoe.vision.images import ImageTooLarge, ImageUnreadable, read_image

FORMAT_NAME = "utamoe-dataset"
FORMAT_VERSION = 1
MANIFEST = "dataset.json"
# Images above this many pixels are refused per record (a decompression bomb, or a photo
# far larger than any model reads); data.max_image_pixels sets it for a run.
MAX_IMAGE_PIXELS = 64_000_000
IMAGE_ROOT = "image_root"  # manifest key: the folder image paths resolve against (image_root())
# A record longer than this is broken (1 MB of text is ~250k tokens, far past any model's
# positions); refused before it is parsed, so one pasted file cannot exhaust memory.
MAX_RECORD_BYTES = 1_000_000
RECORD_KEYS = ("id", "task", "group", "prompt", "image", "target", "target_image", "meta", "turns")

OnError = Literal["raise", "skip"]
# A field that marks a record of another format (named in the unknown-field error).
FOREIGN_FORMATS = {"conversations": "LLaVA-style", "messages": "`messages` (chat) JSONL"}


class DataFormatError(ValueError):
    """A broken record or file; `path` and `line` (1-based, None for a whole file) locate it."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


@dataclass
class Sample:
    """One sample of any task. Images are HxWx3 uint8 arrays in memory; `image_path` and
    `target_image_path` are their paths relative to the dataset directory on disk. A
    conversation has `turns` (its images are on them) and its first user text as `prompt`."""

    id: str
    task: str
    prompt: str
    image: np.ndarray | None = None
    target: str | None = None
    target_image: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    image_path: str | None = None
    target_image_path: str | None = None
    turns: list[Turn] | None = None
    # Where the record was read ("path:line"), for errors found after loading (e.g. a sequence
    # longer than the model's positions); None for generated samples. Not written.
    source: str | None = field(default=None, compare=False)

    @property
    def group(self) -> str:
        return get_task(self.task).group

    @property
    def is_conversation(self) -> bool:
        return self.turns is not None

    def to_record(self) -> dict[str, Any]:
        """The JSON record (paths must be set: `write_split` sets them when it saves images)."""
        rec: dict[str, Any] = {"id": self.id, "task": self.task, "group": self.group}
        if self.turns is not None:
            rec["turns"] = [t.to_record() for t in self.turns]
        else:
            rec["prompt"] = self.prompt
        if self.image_path is not None:
            rec["image"] = self.image_path
        if self.target is not None:
            rec["target"] = self.target
        if self.target_image_path is not None:
            rec["target_image"] = self.target_image_path
        if self.meta:
            rec["meta"] = self.meta
        return rec


def located(sample: Sample) -> tuple[str, int | None]:
    """(file, line) of a loaded sample's record, for an error found after loading."""
    path, _, line = (sample.source or "").rpartition(":")
    return path or f"sample {sample.id}", int(line) if line.isdigit() else None


def too_long(sample: Sample, n: int, limit: int) -> DataFormatError:
    """The error of a sample whose sequence (`n` tokens) is over a model's `limit` positions."""
    return DataFormatError(*located(sample), f"sample {sample.id!r} is {n} tokens long; the "
                           f"model has {limit} positions (max_position_embeddings): shorten "
                           "it or split it")


def overlong(samples: list[Sample], lengths: Callable[[list[Sample]], list[int]],
             limit: int | None) -> list[tuple[int, DataFormatError]]:
    """(index in `samples`, too_long error) of each sample whose sequence is longer than `limit`
    positions; `lengths(samples)` counts their tokens for a model (utamoe.data.sequences.
    Encoder.lengths). The one length check of training (in memory and on disk) and data check."""
    if not limit or not samples:
        return []
    return [(k, too_long(s, n, limit)) for k, (s, n) in enumerate(zip(samples, lengths(samples)))
            if n > limit]


@dataclass
class LoadReport:
    """What loading one file did: how many samples loaded and skipped, the first errors."""

    path: str
    loaded: int = 0
    skipped: int = 0
    errors: list[DataFormatError] = field(default_factory=list)
    max_errors: int = 5

    def add(self, err: DataFormatError) -> None:
        self.skipped += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(err)

    def summary(self) -> str:
        text = f"{self.path}: {self.loaded} loaded, {self.skipped} skipped"
        return "\n  ".join([text, *(str(e) for e in self.errors)])


# ---------------------------------------------------------------- validation


def _fail(path: Path, line: int, msg: str) -> DataFormatError:
    return DataFormatError(path, line, msg)


def _check_fields(rec: Any, path: Path, line: int) -> None:
    """Types and presence of the record's fields (not the images)."""
    if not isinstance(rec, dict):
        raise _fail(path, line, f"a record must be a JSON object, got {type(rec).__name__}")
    unknown = [k for k in rec if k not in RECORD_KEYS]
    if unknown:
        foreign = next((f for key, f in FOREIGN_FORMATS.items() if key in rec), None)
        hint = (f"; this looks like {foreign} data, which is converted to utamoe's format first "
                "(docs/data_format.md)") if foreign else " (put extra information under 'meta')"
        raise _fail(path, line, f"unknown field(s) {unknown}; valid fields are "
                    f"{', '.join(RECORD_KEYS)}{hint}")
    conversation = "turns" in rec
    for key in ("id", "task", "group") + (() if conversation else ("prompt",)):
        if key not in rec:
            raise _fail(path, line, f"missing field '{key}'; every record needs id, task, "
                        "group and prompt (or turns, for a conversation)")
        if not isinstance(rec[key], str):
            raise _fail(path, line, f"field '{key}' must be a string, got {rec[key]!r}")
    if not rec["id"]:
        raise _fail(path, line, "field 'id' is empty; give every sample a unique id")
    _check_unicode(rec, path, line)
    task = rec["task"]
    if not is_task(task):
        raise _fail(path, line, f"unknown task '{task}'; use one of {', '.join(task_names())} "
                    "(or register your own task with utamoe.tasks.register_task)")
    spec = get_task(task)
    if rec["group"] != spec.group:
        raise _fail(path, line, f"task '{task}' belongs to group '{spec.group}', "
                    f"but the record says group '{rec['group']}'")
    for key in ("image", "target", "target_image"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise _fail(path, line, f"field '{key}' must be a string or null, got {rec[key]!r}")
    if not isinstance(rec.get("meta", {}), dict):
        raise _fail(path, line, "field 'meta' must be a JSON object")
    if conversation:
        _check_conversation(rec, spec, path, line)
        _check_spans(rec, path, line)
        return
    if spec.needs_image and not rec.get("image"):
        raise _fail(path, line, f"task '{task}' needs an input image: set 'image' to a PNG "
                    "path relative to the dataset directory")
    if spec.output == "text" and not rec.get("target"):
        raise _fail(path, line, f"missing target: task '{task}' needs a non-empty text "
                    "'target' (the expected answer)")
    if spec.output == "image" and not rec.get("target_image"):
        raise _fail(path, line, f"missing target: task '{task}' needs 'target_image', a PNG "
                    "path relative to the dataset directory")
    _check_spans(rec, path, line)


def _check_unicode(rec: dict, path: Path, line: int) -> None:
    """Every text field must be encodable text: JSON allows an unpaired surrogate (`"\\ud800"`),
    which no tokenizer or file can take."""
    texts = [(k, rec.get(k)) for k in ("id", "prompt", "target", "image", "target_image")]
    turns = rec.get("turns") if isinstance(rec.get("turns"), list) else []
    texts += [(f"turns[{k}].{f}", t.get(f)) for k, t in enumerate(turns) if isinstance(t, dict)
              for f in ("text", "image")]
    for key, value in texts:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise _fail(path, line, f"field '{key}' holds an unpaired surrogate "
                            f"({value[e.start]!r} at character {e.start}); write the text as "
                            "valid Unicode") from None


def _check_spans(rec: dict, path: Path, line: int) -> None:
    """Task spans and boxes in answers (a text target, assistant turns) must be what the span
    router accepts at inference (utamoe.text.spans): a box outside [0, 1], an unclosed or
    mismatched span is an error here, not a surprise after training. Tags are the registered
    tasks' names; a tag the data layer cannot judge (an executor's own) is left alone."""
    answers = [("target", rec.get("target"))]
    turns = rec.get("turns") or []
    answers += [(f"turns[{k}].text", t["text"]) for k, t in enumerate(turns) if t["role"] == "assistant"]
    for key, text in answers:
        if not isinstance(text, str) or "<" not in text:
            continue
        errors = [e for e in parse_response(text, task_names()).errors if e.kind != "unknown_tag"]
        if errors:
            raise _fail(path, line, f"field '{key}': {errors[0].message} ({errors[0].kind}); the "
                        "span router would refuse this answer at inference, fix the span")


def _check_conversation(rec: dict, spec, path: Path, line: int) -> None:
    """A conversation record: turns instead of prompt / image / target, on a text task."""
    both = [k for k in ("prompt", "image", "target") if k in rec]
    if both:
        raise _fail(path, line, f"a conversation (a record with 'turns') has no {both}: its "
                    "text and images are in its turns; drop those fields")
    if spec.output != "text":
        raise _fail(path, line, f"task '{spec.name}' produces images; only text tasks (e.g. "
                    "dialog) take conversations")
    check_turns(rec["turns"], lambda msg: _fail(path, line, msg))
    if spec.needs_image and not any(t.get("image") for t in rec["turns"]):
        raise _fail(path, line, f"task '{spec.name}' needs an input image: give a user turn "
                    "an 'image' (a PNG path relative to the dataset directory)")


def _image_path(root: Path, rel: str, key: str, path: Path, line: int) -> Path:
    """The file a record's image path names, checked to exist, to be a regular file and to stay
    inside the dataset directory (or the image root its manifest names) after resolving
    symlinks (a link out of it is refused)."""
    where = ("the dataset directory" if root == path.parent
             else f"the image root {root} (image_root in {MANIFEST})")
    if "\x00" in rel:
        raise _fail(path, line, f"'{key}' path {rel!r} contains a NUL character; fix the path")
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        raise _fail(path, line, f"'{key}' path '{rel}' must be relative to {where} and stay "
                    "inside it")
    full = root / rel
    try:
        exists, regular = full.exists(), full.is_file()
        outside = (exists and _links_below(root, rel)
                   and not full.resolve().is_relative_to(_real(root)))
    except (OSError, ValueError) as e:  # a name too long for the filesystem, a NUL byte
        raise _fail(path, line, f"'{key}' path '{rel[:60]}{'...' if len(rel) > 60 else ''}' "
                    f"cannot be used ({getattr(e, 'strerror', None) or e}); fix the path") from None
    if not exists:
        raise _fail(path, line, f"'{key}' image '{rel}' not found (looked for {full}); fix "
                    "the path or add the file")
    if outside:
        raise _fail(path, line, f"'{key}' image '{rel}' resolves to {full.resolve()}, outside "
                    f"{where} (a symlink?); copy the file into it")
    if not regular:
        kind = "a directory" if full.is_dir() else "not a regular file (a FIFO, device or socket)"
        raise _fail(path, line, f"'{key}' image '{rel}' is {kind}; give the path of an image file")
    return full


@functools.lru_cache(maxsize=64)
def _real(root: Path) -> Path:
    return root.resolve()


def _links_below(root: Path, rel: str) -> bool:
    """Whether a component of `rel` below `root` is a symlink (only then can the path lead out
    of the root: `..` is refused before). The root itself is resolved once (`_real`): a
    million records need not each resolve a long path."""
    cur = os.fspath(root)
    for part in Path(rel).parts:
        cur = os.path.join(cur, part)
        if os.path.islink(cur):
            return True
    return False


def read_record_image(root: Path, rel: str, key: str, path: Path, line: int,
                      max_pixels: int = MAX_IMAGE_PIXELS, draft: int | None = None) -> np.ndarray:
    """The image a record's field `key` names (checked as `_image_path` does), decoded; an
    error names the record's file and line. `draft`: a JPEG is decoded at the smallest DCT
    scale still at least that side (utamoe.vision.images.read_image)."""
    full = _image_path(root, rel, key, path, line)
    try:
        return read_image(full, max_pixels, draft)
    except ImageTooLarge as e:
        got = f" ({e.size[0]}x{e.size[1]})" if e.size else ""
        raise _fail(path, line, f"'{key}' image '{rel}' has more than {max_pixels:,} pixels "
                    "(data.max_image_pixels); shrink it, or raise the limit if the image is "
                    f"meant to be this large{got}") from e
    except ImageUnreadable as e:
        raise _fail(path, line, f"'{key}' image '{rel}' is unreadable ({e}); re-save it "
                    "as PNG") from e


def record_to_sample(rec: Any, root: Path, path: Path, line: int,
                     load_images: bool = True, max_pixels: int = MAX_IMAGE_PIXELS,
                     draft: int | None = None) -> Sample:
    """Validate one parsed JSON record and build its Sample (raises DataFormatError); `draft`:
    JPEGs decoded at the smallest DCT scale still at least that side (utamoe.vision.images)."""
    _check_fields(rec, path, line)
    turns = None
    if "turns" in rec:
        def read(rel: str, key: str):
            if load_images:
                return read_record_image(root, rel, key, path, line, max_pixels, draft)
            _image_path(root, rel, key, path, line)
            return None

        turns = load_turns(rec["turns"], read)
    images = {}
    for key in ("image", "target_image"):
        rel = rec.get(key)
        if rel is None:
            images[key] = None
        elif load_images:
            images[key] = read_record_image(root, rel, key, path, line, max_pixels, draft)
        else:
            _image_path(root, rel, key, path, line)
            images[key] = None
    prompt = rec["prompt"] if turns is None else turns[0].text
    return Sample(id=rec["id"], task=rec["task"], prompt=prompt, image=images["image"],
                  target=rec.get("target"), target_image=images["target_image"],
                  meta=dict(rec.get("meta") or {}), image_path=rec.get("image"),
                  target_image_path=rec.get("target_image"), turns=turns,
                  source=f"{path}:{line}")


def with_images(sample: Sample, split: str | os.PathLike,
                max_pixels: int = MAX_IMAGE_PIXELS, draft: int | None = None) -> Sample:
    """A sample loaded without its images (`load_images=False`) with them read now (errors
    name the split file and the sample): evaluation reads a batch's images when it needs them."""
    split = Path(split)
    try:
        read = record_to_sample(sample.to_record(), image_root(split.parent), split, None, True,
                                max_pixels, draft)
    except DataFormatError as err:
        raise DataFormatError(split, None, f"sample '{sample.id}': {err.message}") from err
    read.source = sample.source  # still the record's file:line
    return read


# ---------------------------------------------------------------- loading


def load_split(path: str | os.PathLike, on_error: OnError = "raise", load_images: bool = True,
               max_errors: int = 5, max_pixels: int = MAX_IMAGE_PIXELS, draft: int | None = None,
               ) -> tuple[list[Sample], LoadReport]:
    """Load one JSONL split file; image paths resolve against its directory.

    `on_error="raise"` stops at the first broken record with a DataFormatError;
    `"skip"` drops broken records, counting them (and keeping the first
    `max_errors` messages) in the returned LoadReport.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    report = LoadReport(str(path), max_errors=max_errors)
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    if not path.is_file():
        raise DataFormatError(path, None, "split file not found; a split is <dir>/<split>.jsonl")
    root = image_root(path.parent)
    with open(path, "rb") as fh:  # bytes: a bad encoding is reported per line, not fatal
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue  # blank lines (e.g. a trailing newline) carry no record
            try:
                sample = _parse_line(raw, path, lineno, seen, load_images, max_pixels, root, draft)
            except DataFormatError as err:
                if on_error == "raise":
                    raise
                report.add(err)
                continue
            seen[sample.id] = lineno
            samples.append(sample)
    report.loaded = len(samples)
    return samples, report


def parse_record(raw: bytes, path: Path, lineno: int) -> Any:
    """One line of a split file as parsed JSON (DataFormatError naming the line if it is not,
    or if it is over MAX_RECORD_BYTES): in memory (load_split) and on disk (data.ondisk) alike."""
    if len(raw) > MAX_RECORD_BYTES:
        raise _fail(path, lineno, f"the record is {len(raw):,} bytes; the limit is "
                    f"{MAX_RECORD_BYTES:,} (far more text than a model reads): split or shorten it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(path, lineno, f"not UTF-8 text ({e.reason}); save the file as UTF-8") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(path, lineno, f"malformed JSON ({e.msg} at column {e.colno}); each line "
                    "must be one complete JSON object") from e
    except (ValueError, RecursionError) as e:  # a 5000-digit number, nesting deeper than Python's stack
        raise _fail(path, lineno, f"unreadable JSON ({type(e).__name__}: {str(e)[:120]}); "
                    "numbers of at most 4300 digits and nesting of a few levels") from e


def _parse_line(raw: bytes, path: Path, lineno: int, seen: Mapping[str, int],
                load_images: bool, max_pixels: int, root: Path, draft: int | None) -> Sample:
    rec = parse_record(raw, path, lineno)
    sample = record_to_sample(rec, root, path, lineno, load_images, max_pixels, draft)
    if sample.id in seen:
        raise _fail(path, lineno, f"duplicate id '{sample.id}' (first on line "
                    f"{seen[sample.id]}); ids must be unique within a split")
    return sample


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The dataset's manifest, or {} when it has none; a newer format version is an error."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, f"malformed JSON ({e.msg})") from e
    if not isinstance(manifest, dict):
        raise DataFormatError(path, None, "the manifest must be a JSON object")
    version = manifest.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataFormatError(path, None, f"format_version {version!r} is newer than this "
                              f"utamoe reads ({FORMAT_VERSION}); upgrade utamoe")
    return manifest


def image_root(root: str | os.PathLike) -> Path:
    """The folder a dataset's image paths resolve against: the dataset directory itself, or the
    `image_root` its manifest names. A dataset refers to images outside its directory only when
    its manifest says so explicitly (`utamoe data import --images DIR` writes it, so that a
    folder of images that already exists is used where it is, not copied); paths still stay
    inside that root. A relative image_root is relative to the dataset directory."""
    root = Path(root)
    external = read_manifest(root).get(IMAGE_ROOT)
    if external is None:
        return root
    if not isinstance(external, str) or not external:
        raise DataFormatError(root / MANIFEST, None, f"'{IMAGE_ROOT}' must be a folder path (a "
                              f"string), got {external!r}")
    folder = root / external  # an absolute path stays absolute
    if not folder.is_dir():
        raise DataFormatError(root / MANIFEST, None, f"'{IMAGE_ROOT}' {external} is not a folder "
                              f"(looked for {folder}); fix it to where the images are")
    return folder


def find_benchmark(root: str | os.PathLike) -> BenchmarkData | None:
    """The benchmark whose generator wrote the dataset in `root` (from its manifest), with the
    generator's config; None for any other data (utamoe.benchmarks)."""
    return benchmark_of_manifest(read_manifest(root))


def list_splits(root: str | os.PathLike) -> list[str]:
    """Split names of a dataset directory: the stems of its *.jsonl files."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(root, None, "not a directory; a dataset is a directory of "
                              "<split>.jsonl files")
    return sorted(p.stem for p in root.glob("*.jsonl"))


def load_dataset(root: str | os.PathLike, splits: Iterable[str] | None = None,
                 on_error: OnError = "raise", load_images: bool = True,
                 ) -> tuple[dict[str, list[Sample]], dict[str, LoadReport]]:
    """Load every split (or the named ones) of a dataset directory."""
    root = Path(root)
    read_manifest(root)
    names = list(splits) if splits is not None else list_splits(root)
    if not names:
        raise DataFormatError(root, None, "no <split>.jsonl files found")
    data, reports = {}, {}
    for name in names:
        data[name], reports[name] = load_split(root / f"{name}.jsonl", on_error, load_images)
    return data, reports


# ---------------------------------------------------------------- writing


def _save_png(array: np.ndarray, full: Path) -> None:
    from PIL import Image

    full.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(full, format="PNG")


def write_split(root: str | os.PathLike, split: str, samples: Iterable[Sample],
                progress: Callable[[int], None] | None = None) -> int:
    """Write `<root>/<split>.jsonl` and the samples' images under `<root>/images/<split>/`.

    In-memory images are saved as `<id>_input.png` / `<id>_target.png` and the sample's
    paths are set to them; samples with only paths keep them. Returns the count.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(root / f"{split}.jsonl", "w", encoding="utf-8") as fh:
        for s in samples:
            if not is_task(s.task):
                raise ValueError(f"sample '{s.id}': unknown task '{s.task}'")
            for attr, suffix in (("image", "input"), ("target_image", "target")):
                array = getattr(s, attr)
                if array is not None:
                    rel = f"images/{split}/{s.id}_{suffix}.png"
                    _save_png(array, root / rel)
                    setattr(s, f"{attr}_path", rel)
            for k, turn in enumerate(s.turns or ()):
                if turn.image is not None:
                    turn.image_path = f"images/{split}/{s.id}_turn{k}.png"
                    _save_png(turn.image, root / turn.image_path)
            fh.write(json.dumps(s.to_record(), separators=(",", ":")) + "\n")
            n += 1
            if progress is not None:
                progress(1)
    return n


def write_manifest(root: str | os.PathLike, name: str, extra: Mapping[str, Any] | None = None,
                   ) -> None:
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": name,
                **dict(extra or {})}
    path = Path(root) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
