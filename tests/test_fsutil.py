"""Directory writes never delete what they do not own (issue 28, items 1, 14 and 17): every
command that writes a directory refuses an existing one of another kind unless told to replace
it, what it writes is readable as any directory the user makes (the umask, not 0700), and a full
disk is said in words, the last checkpoint kept."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest
from accelerate import Accelerator

from utamoe.cli import main
from utamoe.demo import QUICK_OVERRIDES
from utamoe.fsutil import (
    NotOurs,
    WriteFailed,
    atomic_directory,
    check_output_dir,
    disk_errors,
    holds_format,
)
from utamoe.train.checkpoint import latest_checkpoint

from .owndata import write_digits


def _dataset(root):
    root.mkdir(parents=True)
    (root / "train.jsonl").write_text('{"id": "a"}\n')
    (root / "images").mkdir()
    (root / "images" / "a.png").write_bytes(b"png")
    return root


def _write(target, **kw):
    with atomic_directory(target, holds_format("kind.json", "mine"), "a test artefact", **kw) as tmp:
        (tmp / "kind.json").write_text(json.dumps({"format": "mine"}))


def test_a_foreign_directory_is_refused_and_kept(tmp_path):
    data = _dataset(tmp_path / "data")
    with pytest.raises(NotOurs, match="is not a test artefact"):
        _write(data)
    assert (data / "train.jsonl").read_text() == '{"id": "a"}\n'
    assert (data / "images" / "a.png").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary left behind


def test_own_kind_empty_and_new_targets_are_written(tmp_path):
    _write(tmp_path / "new")
    _write(tmp_path / "new")  # its own kind: replaced
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty")
    assert json.loads((tmp_path / "new" / "kind.json").read_text()) == {"format": "mine"}
    assert (tmp_path / "empty" / "kind.json").is_file()


def test_replace_is_the_explicit_way_over_a_foreign_directory(tmp_path):
    data = _dataset(tmp_path / "data")
    _write(data, replace=True)
    assert not (data / "train.jsonl").exists() and (data / "kind.json").is_file()


def test_a_file_at_the_target_is_refused(tmp_path):
    (tmp_path / "f").write_text("keep")
    with pytest.raises(NotOurs, match="not a directory"):
        _write(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "keep"


def test_written_directories_follow_the_umask_not_0700(tmp_path):
    old = os.umask(0o022)
    try:
        _write(tmp_path / "out")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_check_output_dir(tmp_path):
    check_output_dir(tmp_path / "new", ("metrics.json",), "eval output")
    data = _dataset(tmp_path / "data")
    with pytest.raises(NotOurs, match="holds no eval output"):
        check_output_dir(data, ("metrics.json",), "eval output")
    (data / "metrics.json").write_text("{}")
    check_output_dir(data, ("metrics.json",), "eval output")


@pytest.mark.parametrize("argv", [
    ["tokenizer", "train", "--data", "{d}", "--out", "{d}"],
    ["train", "--config", "utamoe", "--set", "data.dir={d}", "--out", "{d}"],
    ["data", "shapes", "--out", "{d}/images"],
    ["eval", "--model", "{d}/nope", "--data", "{d}", "--split", "train", "--out", "{d}"],
    ["analyze", "--model", "{d}/nope", "--data", "{d}", "--split", "train", "--out", "{d}"],
], ids=["tokenizer train", "train", "data shapes", "eval", "analyze"])
def test_commands_refuse_to_write_over_a_dataset(tmp_path, capsys, argv):
    data = _dataset(tmp_path / "data")
    before = sorted(p.relative_to(data).as_posix() for p in data.rglob("*"))
    code = main([a.replace("{d}", str(data)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and str(data) in err, err
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == before
    assert (data / "train.jsonl").read_text() == '{"id": "a"}\n'


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:659] . PytorchStreamWriter failed writing "
                 "file data/3: file write failed"),
    RuntimeError("basic_ios::clear: iostream error"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_a_full_disk_is_named_in_words(tmp_path, error):
    """Issue 28, item 14: torch's C++ writer reported a full disk as basic_ios::clear or
    inline_container.cc tracebacks that never said "disk"."""
    said = r"cannot write the checkpoint to .*(disk is full|write failed) \(\d+ MB free\)"
    with pytest.raises(WriteFailed, match=said), disk_errors(tmp_path, "the checkpoint"):
        raise error
    with pytest.raises(ValueError, match="unrelated"), disk_errors(tmp_path, "x"):
        raise ValueError("unrelated")


def test_a_full_disk_during_training_keeps_the_checkpoint_and_says_resume(tmp_path, capsys, monkeypatch):
    data = write_digits(tmp_path / "d", {"train": 8})
    sets = [f"data.dir={data}", *QUICK_OVERRIDES, "train.ckpt_every=4"]
    real, saves = Accelerator.save_state, {"n": 0}

    def full_after_one(self, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] > 1:
            raise RuntimeError("[enforce fail at inline_container.cc:659] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", full_after_one)
    run = tmp_path / "run"
    code = main(["train", "--config", "utamoe", "--out", str(run), *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err
    assert code == 2 and "disk" in err and f"--resume {run}" in err and "Traceback" not in err, err
    assert latest_checkpoint(run / "checkpoints").name == "step-4"
