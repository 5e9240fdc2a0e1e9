"""Progress in a log file: when the output is not a terminal, long work prints a plain line at
its start, at intervals and at its end (done/total, rate, time left, its fields), not nothing."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import pytest
from rich.console import Console

from utamoe.config import ConfigError
from utamoe.progress import Progress


def test_a_log_file_gets_lines_with_step_rate_and_time_left():
    buf = io.StringIO()
    with Progress(console=Console(file=buf), unit="step", every_s=0.05) as p:
        job = p.add_task("stage1", total=10, loss="-")
        for step in range(1, 11):
            time.sleep(0.02)
            p.update(job, completed=step, loss=f"{3.0 / step:.3f}")
    lines = buf.getvalue().splitlines()
    assert 2 <= len(lines) <= 10, lines  # at intervals, not one per step
    first, middle, last = lines[0], lines[1], lines[-1]
    assert re.match(r"\[\d\d:\d\d:\d\d\] stage1: 1/10 \(10%\), .*loss 3\.000$", first), first
    assert re.search(r"stage1: \d/10 \(\d+%\), [\d.]+ step/s, 0:00:00 elapsed, 0:00:0\d left, loss",
                     middle), middle
    assert "stage1: 10/10 (100%)" in last and last.endswith("done, loss 0.300"), last
    assert "━" not in buf.getvalue()  # no bar drawn into the file


def test_a_terminal_gets_the_bar_and_no_lines():
    buf = io.StringIO()
    with Progress(console=Console(file=buf, force_terminal=True), every_s=0) as p:
        job = p.add_task("eval", total=3)
        for _ in range(3):
            p.advance(job)
    assert "eval: " not in buf.getvalue() and "eval" in buf.getvalue()


def test_a_stopped_task_says_so_and_a_disabled_one_prints_nothing():
    buf = io.StringIO()
    with Progress(console=Console(file=buf), every_s=100) as p:
        job = p.add_task("codec", total=50)
        p.advance(job, 5)
    assert buf.getvalue().splitlines()[-1].endswith("stopped")
    quiet = io.StringIO()
    with Progress(console=Console(file=quiet), disable=True) as p:
        p.advance(p.add_task("x", total=2), 2)
    assert quiet.getvalue() == ""


def test_the_cli_prints_progress_lines_into_a_pipe(tmp_path):
    out = subprocess.run([sys.executable, "-m", "utamoe.cli", "data", "shapes", "--out",
                          str(tmp_path / "d"), "--sizes", "train=3", "val=1",
                          "test=1", "heldout=0", "--tasks", "vqa", "t2i"], capture_output=True,
                         text=True, timeout=300, env={"UTAMOE_PROGRESS_SECONDS": "0",
                                                      "PATH": "/usr/bin:/bin",
                                                      "PYTHONPATH": ":".join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert re.search(r"ShapesWorld: \d+/\d+ \(\d+%\)", out.stdout), out.stdout


def test_a_bad_interval_in_the_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("UTAMOE_PROGRESS_SECONDS", "often")
    with pytest.raises(ConfigError, match="UTAMOE_PROGRESS_SECONDS='often'"):
        Progress(console=Console(file=io.StringIO()))
