"""Atomic directory writes: a save that is killed half-way never replaces a good directory.

    with atomic_directory(target) as tmp:
        ...write everything into tmp...
    # tmp has been renamed to target (an existing target was moved aside, then removed)

The temporary directory is a sibling of the target (same filesystem, so the rename is
atomic) and is removed if the block raises, whatever the exception.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():  # rename cannot replace a non-empty directory: move it aside first
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
