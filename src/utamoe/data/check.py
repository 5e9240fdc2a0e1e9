"""`utamoe data check`: validate any dataset directory and summarise it per split and task.

Loading runs in skip mode so that one pass finds every broken record; images are decoded one
at a time and only their sizes kept, so memory does not grow with the dataset. The summary
shows counts, the share of each task in its split, task groups, image sizes and one example
per task, then the first errors of each split with file and line, so a user fixing their own
data sees what is wrong and where without reading the loader. For an imported dataset it also
says what the import mapped (`import_summary`). A dataset too large to decode every image is
checked with `--sample N` (utamoe.data.check_sample).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from utamoe.data.formats import (
    DataFormatError,
    LoadReport,
    Sample,
    image_root,
    list_splits,
    load_split,
    located,
    overlong,
    read_manifest,
    read_record_image,
)

SPLIT_ORDER = ("train", "val", "test", "heldout")


@dataclass
class TaskSummary:
    count: int = 0
    input_sizes: Counter = field(default_factory=Counter)
    target_sizes: Counter = field(default_factory=Counter)
    example: Sample | None = None


@dataclass
class CheckResult:
    root: str
    manifest: dict
    splits: dict[str, dict[str, TaskSummary]]
    reports: dict[str, LoadReport]
    sampled: dict[str, int] | None = None  # split -> records whose images were decoded (--sample)
    imports: dict[str, dict] = field(default_factory=dict)  # import_summary

    @property
    def empty(self) -> list[str]:
        """Splits without a single sample (empty or blank-only files): nothing to train on."""
        return [name for name, tasks in self.splits.items() if not tasks]

    @property
    def n_errors(self) -> int:
        return sum(r.skipped for r in self.reports.values()) + len(self.empty)


def _size(img) -> str | None:
    return None if img is None else f"{img.shape[1]}x{img.shape[0]}"


def check_dataset(root: str | Path, max_errors: int = 5,
                  lengths: Callable[[list[Sample]], list[int]] | None = None,
                  limit: int | None = None) -> CheckResult:
    """Load every split in skip mode and summarise it (raises DataFormatError only when the
    directory itself is not a dataset). With `lengths` (samples -> their sequences' token
    counts for a model) and `limit` (its positions), a longer sample is a broken record."""
    root = Path(root)
    manifest = read_manifest(root)
    images = image_root(root)  # the dataset directory, or the image root its manifest names
    splits, reports = {}, {}
    for name in split_names(root):
        # Records first (fields, paths: no pixels), then each image decoded alone and only its
        # size kept: memory does not grow with the number or the size of the images.
        samples, reports[name] = load_split(root / f"{name}.jsonl", "skip", load_images=False,
                                            max_errors=max_errors)
        tasks: dict[str, TaskSummary] = {}
        too_long = dict(overlong(samples, lengths, limit)) if lengths is not None else {}
        for k, s in enumerate(samples):
            try:
                if k in too_long:
                    raise too_long[k]
                sizes = _image_sizes(s, images)
            except DataFormatError as err:
                reports[name].add(err)
                reports[name].loaded -= 1
                continue
            t = tasks.setdefault(s.task, TaskSummary(example=s))
            t.count += 1
            for key, counter in (("image", t.input_sizes), ("target_image", t.target_sizes)):
                if key in sizes:
                    counter[sizes[key]] += 1
        splits[name] = tasks
    return CheckResult(str(root), manifest, splits, reports, imports=import_summary(root))


def split_names(root: Path) -> list[str]:
    """The splits of a dataset directory, the usual ones first in their natural order."""
    names = sorted(list_splits(root), key=lambda n: (SPLIT_ORDER.index(n)
                                                      if n in SPLIT_ORDER else 99, n))
    if not names:
        raise DataFormatError(root, None, "no <split>.jsonl files found; is this a dataset?")
    return names


def import_summary(root: str | Path) -> dict[str, dict]:
    """split -> what `utamoe data import` wrote into it (the manifest's `imports` and the
    import's report): format, source, records per task, conversations, records it could not
    map by reason and the file listing them; {} for a dataset that was not imported."""
    root = Path(root)
    out = {}
    for split, info in (read_manifest(root).get("imports") or {}).items():
        path = root / "import" / f"{split}.report.json"
        try:
            report = json.loads(path.read_text(encoding="utf-8")).get("report", {})
        except (OSError, ValueError):
            report = {}
        out[split] = {"from": info.get("from"), "source": info.get("source"),
                      "records": info.get("records", {}), "unmapped": info.get("unmapped", 0),
                      "conversations": report.get("conversations"),
                      "reasons": report.get("reasons", {}),
                      "rejected_file": str(root / "import" / f"{split}.rejected.jsonl")}
    return out


def _image_sizes(sample: Sample, images: Path) -> dict[str, str]:
    """"WxH" of the sample's input and target images (paths relative to `images`), each decoded
    (a damaged file is found) and dropped; a conversation's turn images are decoded too."""
    path, line = located(sample)
    where = (Path(path), line)
    paths = {"image": sample.image_path, "target_image": sample.target_image_path}
    paths.update({f"turns[{k}].image": t.image_path for k, t in enumerate(sample.turns or ())})
    return {key: _size(read_record_image(images, rel, key, *where))
            for key, rel in paths.items() if rel is not None}


def _sizes(c: Counter) -> str:
    return ", ".join(f"{k} ({v})" if len(c) > 1 else k for k, v in c.most_common()) or "-"


def _example(s: Sample | None, width: int = 60) -> str:
    if s is None:
        return ""
    if s.turns is not None:
        text = f"{len(s.turns)} turns: {s.prompt} -> {s.turns[1].text}"
    else:
        text = f"{s.prompt} -> {s.target if s.target is not None else s.target_image_path}"
    return text if len(text) <= width else text[: width - 3] + "..."


def print_check(result: CheckResult, console=None) -> None:
    """Print the summary table and the errors with rich."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    name = result.manifest.get("name", "dataset")
    table = Table(title=escape(f"{name} at {result.root}"))  # a name is text, not rich markup
    for col in ("split", "task", "group", "samples", "share", "input images", "target images"):
        table.add_column(col)
    examples: dict[str, Sample | None] = {}
    for split, tasks in result.splits.items():
        total = max(1, sum(t.count for t in tasks.values()))
        for task, t in sorted(tasks.items()):
            group = t.example.group if t.example else ""
            table.add_row(*map(escape, (split, task, group, str(t.count),
                                        f"{100 * t.count / total:.1f}%", _sizes(t.input_sizes),
                                        _sizes(t.target_sizes))))
            examples.setdefault(task, t.example)
        if not tasks:
            table.add_row(escape(split), "-", "", "0", "-", "-", "-")
    console.print(table)
    if result.sampled is not None:
        console.print("every record validated; images decoded for a random sample of "
                      + ", ".join(f"{n} ({s})" for s, n in result.sampled.items())
                      + " records (--sample): image sizes are the sample's")
    _print_imports(result.imports, console)
    console.print("examples (prompt -> target):")
    for task, sample in examples.items():
        console.print(f"  {task:<10} {_example(sample, 100)}", markup=False, highlight=False)
    for split, report in result.reports.items():
        if report.skipped:
            console.print(f"[red]{escape(split)}: {report.skipped} broken record(s) skipped; first "
                          f"{len(report.errors)}:[/red]")
            for err in report.errors:
                console.print(f"  {err}", markup=False, highlight=False, soft_wrap=True)
    for name in result.empty:
        console.print(f"[red]split '{escape(name)}' has no samples[/red] (an empty or blank-only "
                      "file)")
    status = "[green]OK[/green]" if result.n_errors == 0 else f"[red]{result.n_errors} errors[/red]"
    total = sum(t.count for tasks in result.splits.values() for t in tasks.values())
    console.print(f"{total} valid samples in {len(result.splits)} split(s); {status}")


def _print_imports(imports: dict[str, dict], console) -> None:
    for split, info in imports.items():
        mapped = "; ".join(f"{s}: " + ", ".join(f"{t} {n}" for t, n in tasks.items())
                           for s, tasks in info["records"].items())
        conv = f", {info['conversations']} conversations" if info.get("conversations") else ""
        console.print(f"imported ({split}) from {info['from']} {info['source']}: {mapped}{conv}; "
                      f"{info['unmapped']} source records not mapped", markup=False,
                      highlight=False, soft_wrap=True)
        for reason, n in sorted(info["reasons"].items(), key=lambda kv: -kv[1])[:5]:
            console.print(f"  {n:>8}  {reason}", markup=False, highlight=False)
        if info["unmapped"]:
            console.print(f"  listed with source file and index in {info['rejected_file']}",
                          markup=False, highlight=False, soft_wrap=True)
