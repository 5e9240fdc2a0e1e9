"""Progress of long work, in a terminal and in a log file alike.

`Progress` is rich's progress display; in a terminal it draws its bars as usual. When the output
is not a terminal (`utamoe demo > log.txt`, a batch job's log, a pipe), rich would show nothing
until the end, so instead each task prints a plain line when it starts, every `every_s` seconds
(default 30, or the UTAMOE_PROGRESS_SECONDS environment variable), and when it finishes:

    [12:04:31] stage2: 120/400 (30%), 2.41 step/s, 0:00:50 elapsed, 0:01:56 left, loss 2.315

Every utamoe stage that takes long (image tokenizer training, training stages, encoding images
to codes, evaluation, analysis, writing a dataset) uses it.
"""

from __future__ import annotations

import datetime
import os
import time

import rich.progress

from utamoe.config import ConfigError


def _every_s() -> float:
    raw = os.environ.get("UTAMOE_PROGRESS_SECONDS", "30")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"UTAMOE_PROGRESS_SECONDS={raw!r}: give a number of seconds >= 0")
    return value


def _clock(seconds: float | None) -> str:
    return "?" if seconds is None else str(datetime.timedelta(seconds=int(seconds)))


class Progress(rich.progress.Progress):
    def __init__(self, *columns, unit: str = "it", every_s: float | None = None,
                 disable: bool = False, **options):
        super().__init__(*columns, disable=disable, **options)
        # Plain lines instead of bars: an enabled display on a console that is not a terminal.
        self.plain = not disable and not self.console.is_terminal
        if self.plain:
            self.disable = True  # rich draws nothing; the tasks still count and time themselves
        self.unit = unit
        self.every_s = every_s if every_s is not None else _every_s()
        self._last: dict[rich.progress.TaskID, float] = {}
        self._ended: set[rich.progress.TaskID] = set()

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._maybe_line(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_line(task_id)

    def stop(self) -> None:
        super().stop()
        if self.plain:
            for task in self.tasks:
                if task.id not in self._ended and task.id in self._last:
                    self._line(task, "stopped")

    def _maybe_line(self, task_id) -> None:
        if not self.plain or task_id in self._ended:
            return
        task = self._tasks[task_id]
        now = time.monotonic()
        if task.finished:
            self._ended.add(task_id)
            self._line(task, "done")
        elif task_id not in self._last or now - self._last[task_id] >= self.every_s:
            self._last[task_id] = now
            self._line(task)

    def _line(self, task, end: str = "") -> None:
        self._last.setdefault(task.id, time.monotonic())
        done = f"{task.completed:g}"
        if task.total:
            done += f"/{task.total:g} ({100 * task.completed / task.total:.0f}%)"
        speed = task.finished_speed or task.speed
        rate = "-" if not speed else (f"{speed:.2f} {self.unit}/s" if speed >= 1
                                      else f"{1 / speed:.2f} s/{self.unit}")
        parts = [f"{task.description}: {done}", rate, f"{_clock(task.elapsed)} elapsed"]
        parts.append(end if end else f"{_clock(task.time_remaining)} left")
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                  for k, v in task.fields.items() if v not in ("", None)]
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        self.console.file.write(f"[{stamp}] {', '.join(parts)}\n")
        self.console.file.flush()
