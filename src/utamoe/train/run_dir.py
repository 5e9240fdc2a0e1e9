"""What a run directory holds, and the rules that keep it from being lost or mixed up.

    RUN/config.yaml       the resolved recipe, written once when the run starts
    RUN/.lock             held (flock) by the process that trains in RUN
    RUN/checkpoints/      atomic checkpoints (train/checkpoint.py)
    RUN/image_tokenizer/, RUN/text_tokenizer/, RUN/metrics.jsonl, RUN/loss.png,
    RUN/tensorboard/, RUN/model/

- `clean_start` (`--force`) removes exactly these artefacts (nothing else a user keeps
  in the directory), so a new run never appends to an old log, reuses an old
  tokenizer or resumes an old checkpoint.
- `RunLock` refuses a second process on the same run directory, naming the first.
- `resume_overrides` keeps a resumed run what it was: `--set` on resume may only
  change how a run is observed (logging, checkpoint frequency, guards), never what
  it computes; the run's own config.yaml is never rewritten.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path

from utamoe.config import ConfigError

ARTEFACTS = ("checkpoints", "image_tokenizer", "text_tokenizer", "model", "metrics.jsonl",
             "loss.png", "tensorboard", "wandb", "wandb_run_id", "config.yaml", "data_cache")
# Keys `--set` may change on `--resume`: they do not change what the run computes.
RESUME_SAFE = ("train.log_every", "train.ckpt_every", "train.max_bad_steps",
               "train.collapse_share", "train.collapse_patience", "train.report_to",
               "train.wandb_project")


class RunLocked(ConfigError):
    """Another process trains in this run directory."""


def clean_start(run_dir: Path) -> None:
    """Remove every artefact of an earlier run in `run_dir` (and stale temporary copies)."""
    for name in ARTEFACTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for stale in run_dir.glob(".*.tmp-*"):  # an interrupted atomic save of a model/tokenizer
        shutil.rmtree(stale, ignore_errors=True)


def check_run_dir(run_dir: Path, force: bool) -> None:
    """A new run may start in a new or empty directory, or (with `force`) in one that holds an
    earlier run or anything else; a run never starts silently inside a dataset or another
    folder of the user's (its checkpoints would mix with their files)."""
    if force or not run_dir.is_dir():
        return
    if any((run_dir / a).exists() for a in ARTEFACTS):
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                          f"or pass --force to start over (its checkpoints, tokenizers, log and "
                          f"model are removed)")
    if any(p.name != ".lock" for p in run_dir.iterdir()):
        raise ConfigError(f"{run_dir} is not empty and holds no run; give a new or empty --out "
                          "(or pass --force to train in it anyway: nothing of yours is removed)")


def resume_overrides(overrides: list[str], run_dir: Path) -> list[str]:
    """The overrides, if each only changes how the resumed run is observed; else an error."""
    bad = [o for o in overrides if not any(fnmatch.fnmatchcase(o.partition("=")[0].strip(), k)
                                           for k in RESUME_SAFE)]
    if bad:
        raise ConfigError(
            f"--resume continues {run_dir} exactly as it was configured ({run_dir}/config.yaml); "
            f"{', '.join(repr(b) for b in bad)} would change what is resumed. Start a new run "
            f"instead (`utamoe train --config {run_dir}/config.yaml --set ... --out NEW_DIR`); "
            f"on resume only {', '.join(RESUME_SAFE)} may be set")
    return overrides


class RunLock:
    """An exclusive lock on RUN/.lock for the life of a training process (POSIX flock; it is
    released by the OS if the process dies, so a killed run never leaves a stale lock)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path, self.enabled, self.fd = run_dir / ".lock", enabled, None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(f"{self.path.parent} is in use by {holder}: one process trains in a "
                            "run directory at a time (wait for it, or stop it first)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None
