"""Atomic directory writes that never replace what they do not own.

    with atomic_directory(target, is_own=holds_format("config.json", "my-format"), what="...") as tmp:
        ...write everything into tmp...
    # tmp has been renamed to target (an existing target of the same kind was moved aside, then removed)

The temporary directory is a sibling of the target (same filesystem, so the rename is
atomic) and is removed if the block raises, whatever the exception. It is created with
`mkdir` (the user's umask applies, as for any directory they make), not `mkdtemp` (0700:
another account or a container user could not read the result).

A save replaces only an artefact of its own kind (`is_own`), an empty directory or nothing:
pointed at a dataset or any other folder by mistake it refuses (`NotOurs`, naming the path)
instead of deleting it, unless the caller was told to replace it (`replace=True`, a
`--force`). `check_replaceable` is the same check without writing, for a command to call
before its long work starts.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

IsOwn = Callable[[Path], bool]


class WriteFailed(OSError):
    """A save that could not be written (a full disk, most often); what was saved before is
    untouched. The message names the path, the free space and what to do."""


# How a full disk shows up when the writer is not Python's own file object: torch.save's C++
# stream (inline_container.cc, basic_ios::clear) and safetensors' Rust writer.
_WRITE_FAILURES = ("No space left", "StorageFull", "file write failed", "basic_ios::clear",
                   "inline_container", "PytorchStreamWriter failed", "Disk quota")


@contextmanager
def disk_errors(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a failed write of `what` under `path` (ENOSPC, or a C++ / Rust writer's own error)
    into WriteFailed saying so in words; any other error passes unchanged."""
    try:
        yield
    except Exception as err:
        full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
        if not full and (isinstance(err, OSError) or
                         not any(m in str(err) for m in _WRITE_FAILURES)):
            raise
        raise WriteFailed(f"cannot write {what} to {path}: {_free(Path(path))}; free some space "
                          "(nothing saved before was lost)") from err


def _free(path: Path) -> str:
    """How much room the disk of `path` has, in words."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "the write failed (is the disk full?)"
    state = "the disk is full" if free < 256 * 2**20 else "the write failed"
    return f"{state} ({free / 2**20:.0f} MB free)"


class NotOurs(FileExistsError):
    """The target exists and is not an artefact of the kind being written; nothing was touched."""


def holds_format(file: str, fmt: str | None = None, key: str = "format") -> IsOwn:
    """`is_own` for directories marked by a JSON file `file` whose `key` is `fmt` (any JSON
    object when `fmt` is None)."""

    def is_own(path: Path) -> bool:
        try:
            meta = json.loads((path / file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and (fmt is None or meta.get(key) == fmt)

    return is_own


def check_replaceable(target: str | os.PathLike, is_own: IsOwn, what: str,
                      replace: bool = False) -> None:
    """Raise NotOurs when writing `what` at `target` would replace something else: a file, or
    a non-empty directory that `is_own` does not recognise (unless `replace`)."""
    target = Path(target)
    if not (target.exists() or target.is_symlink()) or replace:
        return
    if not target.is_dir():
        raise NotOurs(f"{target} exists and is not a directory; {what} is a directory: give "
                      "another path")
    if target.is_symlink() or (any(target.iterdir()) and not is_own(target)):
        raise NotOurs(f"{target} exists and is not {what} (it would be replaced, and everything "
                      "in it deleted); give a new or empty directory, or remove it yourself")


def check_output_dir(target: str | os.PathLike, own_files: tuple[str, ...], what: str) -> None:
    """For commands that write named files into a directory (evaluation, analysis, a dataset):
    refuse an existing non-empty directory that holds none of `own_files` (its own kind's
    files would be written over the user's; NotOurs), and a path that is a file."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotOurs(f"{target} exists and is not a directory; give a directory for {what}")
    if target.is_dir() and any(target.iterdir()) and \
            not any((target / f).exists() for f in own_files):
        raise NotOurs(f"{target} is not empty and holds no {what} (it has none of "
                      f"{', '.join(own_files)}); give a new or empty directory")


@contextmanager
def atomic_directory(target: str | os.PathLike, is_own: IsOwn, what: str = "an artefact",
                     replace: bool = False) -> Iterator[Path]:
    """A temporary sibling of `target`, renamed over it when the block ends without error.
    `target` may be replaced only when it is empty or `is_own(target)`, or with `replace`."""
    check_replaceable(target, is_own, what, replace)
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if target.exists() or target.is_symlink():  # rename cannot replace a non-empty directory
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            _remove(old)
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
