"""Writers for an evaluation (`utamoe.eval.run.EvalResult`): files and a console summary.

    metrics.json       flat headline metrics + per_task + sampling + split/model/data + seconds
    report.md          a table per task, the sampling settings, notes, the command to reproduce
    samples.png        generated images (t2i; edit as input -> output -> target) titled with
                       their prompt and the parser's verdict
    predictions.jsonl  one line per sample: its prompt, target and the model's answer
                       (text) or verdict (images), to see *what* went wrong

The PNG is drawn with matplotlib's object API (Figure + Agg canvas), never pyplot,
so writing it neither needs a display nor changes the caller's backend.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from utamoe.eval.run import EvalResult
from utamoe.eval.scorers import similarity
from utamoe.tasks import get_task

SHEET_T2I, SHEET_EDIT, SHEET_COLS = 12, 6, 6  # 12 t2i images + 6 edits (18 outputs)


def write_eval_outputs(result: EvalResult, out_dir: str | Path, command: str | None = None,
                       ) -> dict[str, Path]:
    """Write the files above into `out_dir` (created); returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "report": out / "report.md",
             "predictions": out / "predictions.jsonl"}
    paths["metrics"].write_text(json.dumps(metrics_dict(result, command), indent=2) + "\n",
                                encoding="utf-8")
    _write_predictions(result, paths["predictions"])
    sheet = out / "samples.png"
    if write_sample_sheet(result, sheet):
        paths["samples"] = sheet
    paths["report"].write_text(markdown_report(result, command, "samples" in paths),
                               encoding="utf-8")
    return paths


def metrics_dict(result: EvalResult, command: str | None = None) -> dict[str, Any]:
    return {**result.headline, "per_task": result.per_task, "counts": result.counts,
            "sampling": result.sampling.to_dict(), "split": result.split, "model": result.model,
            "data": result.data, "seconds": round(result.seconds, 3), "notes": result.notes,
            "command": command, "settings": result.settings}


def _fmt(value: Any) -> str:
    if isinstance(value, float) and not float(value).is_integer():
        return f"{value:.4f}"
    return str(int(value)) if isinstance(value, float) else str(value)


def markdown_report(result: EvalResult, command: str | None = None, sheet: bool = True) -> str:
    lines = ["# utamoe evaluation", "",
             f"- model: `{result.model or '(in memory)'}`",
             f"- data: `{result.data or '(in memory)'}`, split `{result.split or '-'}`",
             f"- samples: {sum(result.counts.values())} "
             f"({', '.join(f'{t}: {n}' for t, n in result.counts.items())})",
             f"- time: {result.seconds:.1f} s", "", "## Headline metrics", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in result.headline.items()]
    for task, metrics in result.per_task.items():
        lines += ["", f"## {get_task(task).title} (`{task}`)", "",
                  f"Scored by `{result.scorers.get(task, '?')}`.", "", "| metric | value |",
                  "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    lines += ["", "## Sampling settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result.sampling.to_dict().items()]
    if result.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in result.notes)]
    if sheet:
        lines += ["", "## Generated images", "", "![generated samples](samples.png)"]
    if command:
        lines += ["", "## Reproduce", "", "```sh", command, "```"]
    return "\n".join(lines) + "\n"


def _write_predictions(result: EvalResult, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for s, p in zip(result.samples, result.predictions):
            rec: dict[str, Any] = {"id": s.id, "task": s.task, "prompt": s.prompt}
            if s.group == "gen":
                verdict = result.verdicts.get(s.id)
                if verdict is not None:
                    rec.update(correct_all=verdict.correct_all, facets=verdict.facets,
                               **verdict.extra, **({"error": verdict.error} if verdict.error else {}))
            else:
                rec.update(target=s.target, prediction=p)
            fh.write(json.dumps(rec) + "\n")


# ---------------------------------------------------------------- the image sheet


def verdict_text(score, extra: dict[str, float] | None = None,
                 ) -> tuple[str, str]:
    """(text, colour) for one image's verdict (an object with `facets`, `correct_all`, `extra`
    and `error`, as a benchmark's image scorer gives it): 'correct', or which facets failed."""
    sim = f"\nPSNR {extra['psnr']:.1f} SSIM {extra['ssim']:.2f}" if extra else ""
    if score is None:
        return "not scored" + sim, "dimgray"
    if score.correct_all:
        return "correct" + sim, "forestgreen"
    failed = [k for k, ok in score.facets.items() if not ok]
    if not failed:
        why = "wrong: extra or\nunreadable objects"
    elif len(failed) == len(score.facets):
        why = "wrong: every facet"
    else:
        why = "\n".join(textwrap.wrap("wrong: " + ", ".join(failed), 24))
    return why + sim, "firebrick"


def write_sample_sheet(result: EvalResult, path: str | Path) -> bool:
    """Draw up to 12 t2i images and 6 edits; False (nothing written) when there are none."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pairs = list(zip(result.samples, result.predictions))
    t2i = [(s, p) for s, p in pairs if s.task == "t2i" and p is not None][:SHEET_T2I]
    edit = [(s, p) for s, p in pairs if s.task == "edit" and p is not None][:SHEET_EDIT]
    if not t2i and not edit:
        return False
    per_row = SHEET_COLS // 3
    rows = -(-len(t2i) // SHEET_COLS) + -(-len(edit) // per_row)
    fig = Figure(figsize=(SHEET_COLS * 2.3, rows * 3.0), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, SHEET_COLS, hspace=0.9, wspace=0.12)
    for i, (s, img) in enumerate(t2i):
        ax = fig.add_subplot(grid[i // SHEET_COLS, i % SHEET_COLS])
        _panel(ax, img, _wrap(f"t2i: {s.prompt}"), *verdict_text(result.verdicts.get(s.id)))
    row0 = -(-len(t2i) // SHEET_COLS)
    for i, (s, img) in enumerate(edit):
        r, c = row0 + i // per_row, (i % per_row) * 3
        score = result.verdicts.get(s.id)
        extra = score.extra if score is not None else _similarity(s, img)
        text, colour = verdict_text(score, extra or None)
        _panel(fig.add_subplot(grid[r, c]), s.image, "", "input", "black")
        _panel(fig.add_subplot(grid[r, c + 1]), img, _wrap(f"edit: {s.prompt}", 30),
               text, colour)
        if s.target_image is not None:
            _panel(fig.add_subplot(grid[r, c + 2]), s.target_image, "", "target", "black")
    fig.suptitle(f"utamoe eval: generated samples ({result.split or 'in memory'}); "
                 "green = correct, red = wrong (failed facets)", fontsize=11)
    fig.savefig(path, bbox_inches="tight")
    return True


def _wrap(text: str, width: int = 26) -> str:
    return "\n".join(textwrap.wrap(text, width)[:6])


def _panel(ax, image, title: str, label: str, colour: str) -> None:
    if image is not None:
        ax.imshow(np.asarray(image), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7.5, loc="left")
    ax.set_xlabel(label, fontsize=8, color=colour, fontweight="bold")


def _similarity(sample, image) -> dict[str, float] | None:
    """PSNR / SSIM of an edit without a verdict (data no benchmark scores), for its label."""
    if sample.target_image is None:
        return None
    return similarity(image, sample.target_image)


# ---------------------------------------------------------------- console


def print_summary(result: EvalResult, paths: dict[str, Path] | None = None, console=None) -> None:
    """A rich table of the headline metrics, then where the files went."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"utamoe eval ({result.split or 'in memory'}, "
                        f"{sum(result.counts.values())} samples, {result.seconds:.1f} s)")
    table.add_column("task")
    table.add_column("n", justify="right")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for task, n in result.counts.items():
        names = [k for k in result.headline if k.startswith(task + "_")]
        for j, name in enumerate(names or ["-"]):
            value = _fmt(result.headline[name]) if name in result.headline else "-"
            table.add_row(task if j == 0 else "", str(n) if j == 0 else "",
                          name, value)
    console.print(table)
    s = result.sampling
    console.print(f"sampling: text temperature {s.text_temperature} (greedy at 0), images "
                  f"temperature {s.temperature} top-k {s.top_k} cfg {s.cfg_scale}, seed {s.seed}, "
                  f"batch {s.batch_size}")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    for name, p in (paths or {}).items():
        console.print(f"{name}: {p}")
