"""Local Hugging Face directories, loaded without ever running code they ship.

A model, tokenizer, backbone or encoder directory is data. One whose configuration carries an
`auto_map` (transformers' pointer to Python files inside the directory) would make
transformers ask on the terminal whether to run that code, and run it on a "y": a folder a
user downloaded could then execute anything in `utamoe answer` or `utamoe train`. Every Hugging
Face load in utamoe goes through `pretrained`, which refuses such a directory with an error
naming it and the file, and passes `trust_remote_code=False` and `local_files_only=True` so
that nothing is asked, run or downloaded even if a check here were missed
(docs/errors.md, "Models and inference").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from utamoe.config import ConfigError

# JSON files that can carry `auto_map` (transformers) or name custom classes; a diffusers
# pipeline keeps one per component folder, so the folders one level down are read too.
_CONFIG_SUFFIX = "config.json"
_INDEXES = ("model_index.json",)
_MAX_CONFIG_BYTES = 16_000_000


class RemoteCodeRefused(ConfigError):
    """A directory that asks to run its own Python code; nothing was loaded from it."""


def has_auto_map(value: Any, depth: int = 0) -> bool:
    """Whether a parsed JSON value holds an `auto_map` key at any depth."""
    if depth > 20:  # configs nest a few levels (text_config, vision_config); never deeper
        return False
    if isinstance(value, dict):
        return "auto_map" in value or any(has_auto_map(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(has_auto_map(v, depth + 1) for v in value)
    return False


def _config_files(root: Path) -> list[Path]:
    folders = [root, *(p for p in sorted(root.iterdir()) if p.is_dir())] if root.is_dir() else []
    return [f for d in folders for f in sorted(d.glob("*.json"))
            if (f.name.endswith(_CONFIG_SUFFIX) or f.name in _INDEXES) and f.is_file()]


def refuse_remote_code(path: str | Path, what: str) -> None:
    """Raise RemoteCodeRefused when a configuration file in `path` (or one folder below) has
    an `auto_map`: loading it would mean running the directory's own Python files."""
    for file in _config_files(Path(path)):
        if file.stat().st_size > _MAX_CONFIG_BYTES:
            continue
        try:
            meta = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # not ours to judge: the loader reports a damaged file
        if has_auto_map(meta):
            raise RemoteCodeRefused(
                f"{what}: {file} has an `auto_map`, which asks to run Python code shipped in "
                f"{file.parent}; utamoe never runs code from a model, tokenizer, backbone or "
                "encoder directory. Use a checkpoint whose architecture transformers provides "
                "(no auto_map), or convert it to one")


def refuse_code_in_config(config: Any, what: str) -> None:
    """Raise RemoteCodeRefused when a config mapping (a recipe's or a saved model's
    `config:` of a Hugging Face part) carries an `auto_map`."""
    if has_auto_map(config):
        raise RemoteCodeRefused(f"{what}: the config has an `auto_map`, which asks to run Python "
                                "code from another place; utamoe never runs code named by a "
                                "config or shipped in a model directory. Remove the auto_map")


def pretrained(loader, path: str | Path, what: str, **kwargs):
    """`loader.from_pretrained(path, **kwargs)` from local files only, never running code from
    `path` (see the module docstring); `what` names the config key or flag in errors."""
    refuse_remote_code(path, what)
    return loader.from_pretrained(str(path), trust_remote_code=False, local_files_only=True,
                                  **kwargs)
