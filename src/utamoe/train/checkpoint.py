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

from utamoe.fsutil import disk_errors

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
    with disk_errors(root, f"checkpoint {name}"):
        accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with disk_errors(root, f"checkpoint {name}"):
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


MODEL_FILES = ("pytorch_model.bin", "model.safetensors")  # what Accelerate's save_state writes


class OldNames(ValueError):
    """A checkpoint with an older utamoe's parameter names that do not map onto the model's."""


def convert_old_names(ckpt: Path, expected: set[str], rename) -> Path | None:
    """Rename an older utamoe's parameter names in a checkpoint's model file with `rename`
    (utamoe.model.io.current_name), when that gives exactly the names of the model (`expected`);
    the original file is kept beside it as `<file>.old-names`. Returns the converted file;
    None when its names are current; OldNames when they are old but do not fit the model."""
    import torch
    from safetensors.torch import load_file, save_file

    file = next((ckpt / f for f in MODEL_FILES if (ckpt / f).is_file()), None)
    if file is None:
        return None
    safetensors = file.suffix == ".safetensors"
    state = load_file(str(file)) if safetensors else torch.load(file, map_location="cpu",
                                                                  weights_only=True)
    renamed = {rename(k): v for k, v in state.items()}
    if set(renamed) == set(state):
        return None
    if set(renamed) != expected:
        raise OldNames(f"{file} holds an older utamoe's parameter names that do not map onto "
                       f"this model's (e.g. {sorted(set(renamed) - expected)[:3]})")
    tmp, backup = file.with_name(f".{file.name}.tmp"), file.with_name(file.name + ".old-names")
    save_file(renamed, str(tmp)) if safetensors else torch.save(renamed, tmp)
    if not backup.exists():  # copied, not moved: a kill at any point leaves a loadable file
        shutil.copy2(file, backup)
    os.replace(tmp, file)
    return file


def read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())
