"""Atomic training checkpoints: a crash or kill while saving never breaks the latest one.

A checkpoint is a directory `checkpoints/step-<N>/` holding Accelerate's state
(model, optimiser, scheduler, per-process random states) and `trainer_state.json`
(stage, step, counters). It is written under a temporary name and renamed into
place only when complete; `checkpoints/latest` (a one-line file replaced with
os.replace, itself atomic) then points at it. Older checkpoints beyond `keep`
are removed only after the new one is in place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"
LATEST = "latest"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(accelerator, root: Path, name: str, state: dict, keep: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tmp, final = root / f".tmp-{name}", root / name
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_atomic(tmp / STATE_FILE, json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _write_atomic(root / LATEST, name + "\n")
        _prune(root, keep, final.name)
    accelerator.wait_for_everyone()
    return final


def _prune(root: Path, keep: int, newest: str) -> None:
    done = sorted((p for p in root.glob("step-*") if (p / STATE_FILE).is_file()),
                  key=lambda p: int(p.name.split("-")[1]))
    for old in done[:-keep]:
        if old.name != newest:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # left by a killed save
        shutil.rmtree(stale, ignore_errors=True)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, newest first (the `latest` pointer's first when it is valid)."""
    done = sorted((p for p in root.glob("step-*") if (p / STATE_FILE).is_file()
                   and p.name.split("-")[1].isdigit()),
                  key=lambda p: int(p.name.split("-")[1]), reverse=True)
    latest = latest_checkpoint(root)
    return ([latest] if latest else []) + [p for p in done if p != latest]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint, or None. Falls back to scanning when `latest` is stale."""
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if (path / STATE_FILE).is_file():
            return path
    done = sorted((p for p in root.glob("step-*") if (p / STATE_FILE).is_file()),
                  key=lambda p: int(p.name.split("-")[1]))
    return done[-1] if done else None


def read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())
