"""Progress bars for long work: steps done, loss, rate and time left (utamoe.progress: plain
lines at intervals when the output is a log file)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from utamoe.progress import Progress


class RateColumn(ProgressColumn):
    """Items per second (or seconds per item when slower than one per second)."""

    def __init__(self, unit: str = "it"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text(f"- {self.unit}/s")
        if speed >= 1:
            return Text(f"{speed:.2f} {self.unit}/s")
        return Text(f"{1 / speed:.2f} s/{self.unit}")


def bar(*fields: str, unit: str = "it", enabled: bool = True) -> Progress:
    """A progress bar with description, bar, done/total, extra text fields, rate and time left."""
    extra = [TextColumn(f"{f} {{task.fields[{f}]}}") for f in fields]
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *extra, RateColumn(unit), TextColumn("left"), TimeRemainingColumn(),
                    disable=not enabled, unit=unit)


class StageProgress:
    """One training stage's bar: step, loss, steps per second, time left."""

    def __init__(self, name: str, total: int, done: int = 0, enabled: bool = True):
        self.progress = bar("loss", unit="step", enabled=enabled)
        self.task = self.progress.add_task(name, total=total, completed=done, loss="-")

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.progress.stop()
        return False

    def update(self, step: int, loss: float | None) -> None:
        fields = {} if loss is None else {"loss": f"{loss:.3f}"}
        self.progress.update(self.task, completed=step, **fields)
