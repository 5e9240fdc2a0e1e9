"""A training split read from disk (`data.loading: disk`, utamoe.data.ondisk, utamoe.train.data):
the same batches and losses as the split held in memory, with or without worker processes;
exact resume after a kill; broken records named by file and line; the VQ-code file resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from utamoe.data.formats import DataFormatError, load_split
from utamoe.data.ondisk import DiskSplit, SplitIndex, build_index, fingerprint
from utamoe.train import code_cache
from utamoe.train.code_cache import CodeCache
from utamoe.train.config import build_config
from utamoe.train.data import BatchStream
from utamoe.train.trainer import Trainer

from ..owndata import write_digits
from .conftest import UTAMOE_STAGES, kill_then_resume, tiny_recipe
from .test_golden_losses import GOLDEN, KEYS, STAGES


def _losses(run_dir) -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{"global_step": r["global_step"], **{k: r[k] for k in KEYS if k in r}}
            for r in recs if "loss" in r]


def test_split_on_disk_with_a_worker_gives_the_golden_curve(tmp_path):
    """The golden recipe (tests/train/test_golden_losses.py) with its split read from disk by a
    worker process: the committed curve, to the same tolerance."""
    from .test_golden_losses import _curve

    original = tiny_recipe

    def on_disk(*args, **kwargs):
        cfg = original(*args, **kwargs)
        cfg["data"].update(loading="disk", workers=1)
        return cfg

    import tests.train.test_golden_losses as golden_test

    golden_test.tiny_recipe, restore = on_disk, golden_test.tiny_recipe
    try:
        curve = _curve(tmp_path)
    finally:
        golden_test.tiny_recipe = restore
    assert (tmp_path / "run" / "data_cache" / "index-train.npz").is_file()
    # The saved model names the tasks it trained on (eval's notes read them), on disk as in memory.
    saved = json.loads((tmp_path / "run" / "model" / "utamoe.json").read_text())
    assert saved["trained_tasks"] == ["caption", "edit", "grounding", "pope", "t2i", "vqa"]
    golden = json.loads(GOLDEN.read_text())
    assert len(curve) == len(golden) == sum(s["steps"] for s in STAGES)
    for got, want in zip(curve, golden):
        for k in KEYS:
            if k in want:
                assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), (got["global_step"], k)


def _trainer(assets, out, loading: str, workers: int = 0, stages=None, **train) -> Trainer:
    cfg = tiny_recipe(assets, out, stages, **train)
    cfg["data"].update(loading=loading, workers=workers)
    trainer = Trainer(build_config(cfg), out, progress=False)
    trainer.setup()
    return trainer


FIELDS = ("input_ids", "code_ids", "attention_mask", "text_labels", "code_labels", "group_ids",
          "task_ids", "pixel_values", "sample_ids", "position_ids")


def _same(x, y) -> None:
    for name in FIELDS:
        a, b = getattr(x, name, None), getattr(y, name, None)
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), name


def test_disk_and_memory_draw_the_same_batches(tiny_assets, tmp_path):
    """Same positions, same samples, same VQ codes (encoded once to a file, in the order and
    chunks of the in-memory encoding), packed or padded."""
    mem = _trainer(tiny_assets, tmp_path / "m", "memory").data
    disk = _trainer(tiny_assets, tmp_path / "d", "disk").data
    assert disk.disk is not None and not disk.samples() and mem.disk is None
    assert disk.code_cache.done() == len(disk.code_cache.items) == len(mem.codes)
    mix = {"caption": 1, "vqa": 1, "t2i": 2, "edit": 1, "grounding": 1}
    for step in range(4):
        _same(mem.batch(0, step, 8, mix, 0.3), disk.batch(0, step, 8, mix, 0.3))
    disk.pack_tokens = mem.pack_tokens = 64
    _same(mem.batch(1, 5, 8, mix, 0.1), disk.batch(1, 5, 8, mix, 0.1))


def test_worker_processes_give_the_batches_of_the_loop(tiny_assets, tmp_path):
    data = _trainer(tiny_assets, tmp_path / "d", "disk").data
    mix = {"vqa": 1, "t2i": 1}
    stream = BatchStream(data, 2, 10, 6, 4, mix, 0.1, workers=2)
    try:
        got = {pos: stream.get(pos) for pos in (10, 11, 13, 15)}  # 12 and 14 skipped
    finally:
        stream.close()
    for pos, batch in got.items():
        _same(batch, data.batch(2, pos, 4, mix, 0.1))
    with pytest.raises(ValueError, match="already drawn"):
        BatchStream(data, 0, 0, 3, 4, mix, 0.1).get(-1)


def test_a_killed_run_on_disk_resumes_exactly(tiny_assets, tmp_path, monkeypatch):
    cfg = tiny_recipe(tiny_assets, tmp_path / "a", UTAMOE_STAGES, ckpt_every=4)
    cfg["data"].update(loading="disk", workers=1)
    Trainer(build_config(cfg), tmp_path / "a", progress=False).run()
    kill_then_resume(build_config({**cfg, "run": {"out": str(tmp_path / "b"), "seed": 0}}),
                     tmp_path / "b", monkeypatch)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_the_index_is_saved_and_rebuilt_when_the_file_changes(tiny_assets, tmp_path):
    split = tmp_path / "data"
    write_digits(split, {"train": 6})
    path = split / "train.jsonl"
    index = build_index(path)
    index.save(tmp_path / "index.npz")
    again = SplitIndex.load(tmp_path / "index.npz", path, fingerprint(path))
    assert again is not None and np.array_equal(again.offsets, index.offsets)
    assert again.counts() == index.counts() == {"caption": 6, "vqa": 6, "pope": 6, "t2i": 6}
    with open(path, "a") as fh:
        fh.write("\n")
    assert SplitIndex.load(tmp_path / "index.npz", path, fingerprint(path)) is None
    samples, _ = load_split(path)  # random access reads what the loader reads
    disk = DiskSplit(index)
    for i in (0, 7, 23):
        s = disk.read(i)
        assert s.id == samples[i].id and np.array_equal(s.image if s.image is not None
                                                        else s.target_image,
                                                        samples[i].image if samples[i].image is not None
                                                        else samples[i].target_image)


def test_broken_records_are_named_by_file_and_line(tmp_path, capsys):
    split = tmp_path / "data"
    write_digits(split, {"train": 4})
    path = split / "train.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(2, lines[0])  # a duplicate id on line 3
    lines.insert(5, "{not json")  # line 6
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"train.jsonl:3: duplicate id"):
        build_index(path)
    index = build_index(path, on_error="skip")
    assert index.report.skipped == 2 and len(index) == len(lines) - 2
    assert [e.line for e in index.report.errors] == [6, 3]
    # An image that breaks after indexing: found when a batch reads it.
    rec = json.loads(lines[0])
    (split / rec["image"]).write_bytes(b"not a png")
    disk = DiskSplit(index)
    with pytest.raises(DataFormatError, match=r"train.jsonl:1: 'image' image .* unreadable"):
        disk.read(0)


def test_on_error_skip_uses_the_next_record_and_says_so(tiny_assets, tmp_path, capsys):
    data = _trainer(tiny_assets, tmp_path / "d", "disk").data
    first = data.disk.record(int(data.disk_tasks["vqa"][0]))
    root = tiny_assets / "data"
    image = root / first["image"]
    saved = image.read_bytes()
    try:
        image.write_bytes(b"broken")
        with pytest.raises(DataFormatError, match="unreadable"):
            data._read("vqa", 0)
        data.on_error = "skip"
        sample, pos = data._read("vqa", 0)
        assert pos == int(data.disk_tasks["vqa"][1])
        assert f"train.jsonl:{int(data.disk.index.lines[data.disk_tasks['vqa'][0]])}" in \
            capsys.readouterr().err
    finally:
        image.write_bytes(saved)


def test_the_code_file_resumes_after_a_kill(tiny_assets, tmp_path, monkeypatch):
    data = _trainer(tiny_assets, tmp_path / "d", "disk").data
    cache = data.code_cache
    items, vq = cache.items, data.code_cache  # encoded by the trainer's setup, in full
    full = np.load(cache.file).copy()
    monkeypatch.setattr(code_cache, "CHUNK", 5)
    again = CodeCache(tmp_path / "again", "train", items, len(data.disk))

    class Killed(BaseException):
        pass

    def dying(n, calls=[0]):  # noqa: B006 - a counter across calls
        calls[0] += 1
        if calls[0] == 2:
            raise Killed

    from utamoe.vision.tokenizer import VQTokenizer

    tok = VQTokenizer.from_pretrained(tiny_assets / "vq")
    with pytest.raises(Killed):
        again.build(data.disk, data.encoder.process, tok, progress=dying)
    assert again.done() == 10
    assert again.build(data.disk, data.encoder.process, tok) == len(items) - 10
    assert vq is cache and np.array_equal(np.load(again.file), full)
    assert again.lookup([(data.disk.read(int(items[0][0])), int(items[0][0]))])
