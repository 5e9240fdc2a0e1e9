"""Records a loader must survive (issue 28, items 9 and 13, and the `data check` notes): each is
an error naming file:line, skipped and counted under `on_error: skip`, never a traceback that
stops the whole command."""

from __future__ import annotations

import json
import os
import tracemalloc

import pytest
from PIL import Image

from utamoe.cli import main
from utamoe.data.check import check_dataset
from utamoe.data.formats import MAX_RECORD_BYTES, load_split
from utamoe.model.io import save_model_dir

from ..model.helpers import tiny_model


def _ok(i: int) -> str:
    return json.dumps({"id": f"ok{i}", "task": "caption", "group": "und", "prompt": "describe",
                       "target": "a circle", "image": "x.png"})


HOSTILE = {
    "deep nesting": '{"id": "a", "task": "caption", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "5000-digit number": '{"id": "a", "task": "caption", "meta": {"n": ' + "9" * 5000 + "}}",
    "long image path": json.dumps({"id": "a", "task": "caption", "group": "und", "prompt": "p",
                                   "target": "t", "image": "x" * 5000 + ".png"}),
    "NUL in a path": json.dumps({"id": "a", "task": "caption", "group": "und", "prompt": "p",
                                 "target": "t", "image": "x\u0000.png"}),
    "lone surrogate": '{"id": "a", "task": "caption", "group": "und", "prompt": "p\\ud800", '
                      '"target": "t", "image": "x.png"}',
    "huge record": json.dumps({"id": "a", "task": "caption", "group": "und",
                               "prompt": "word " * (MAX_RECORD_BYTES // 5 + 10), "target": "t",
                               "image": "x.png"}),
    "a directory as image": json.dumps({"id": "a", "task": "caption", "group": "und",
                                        "prompt": "p", "target": "t", "image": "images"}),
    "a FIFO as image": json.dumps({"id": "a", "task": "caption", "group": "und", "prompt": "p",
                                   "target": "t", "image": "fifo"}),
    "llava record": json.dumps({"id": "a", "image": "x.png", "conversations": []}),
    "box out of range in a turn": json.dumps({
        "id": "a", "task": "dialog", "group": "und",
        "turns": [{"role": "user", "text": "segment it", "image": "x.png"},
                  {"role": "assistant", "text": "<seg>the circle<box>[0.0,0.0,2.0,0.5]</box></seg>"}]}),
    "unclosed span in a target": json.dumps({"id": "a", "task": "grounding", "group": "und",
                                             "prompt": "where?", "image": "x.png",
                                             "target": "<seg>the circle<box>[0.1,0.1,0.2,0.2]</box>"}),
}
WHAT = {"deep nesting": "unreadable JSON", "5000-digit number": "unreadable JSON",
        "long image path": "cannot be used", "NUL in a path": "NUL character",
        "lone surrogate": "unpaired surrogate", "huge record": "the limit is 1,000,000",
        "a directory as image": "is a directory", "a FIFO as image": "not a regular file",
        "llava record": "LLaVA-style", "box out of range in a turn": "turns[1].text",
        "unclosed span in a target": "field 'target': <seg> at 0 is never closed"}


@pytest.fixture
def dataset(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "images").mkdir()
    os.mkfifo(tmp_path / "fifo")
    return tmp_path


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_record_fails_alone(dataset, kind, capsys):
    split = dataset / "train.jsonl"
    split.write_text("\n".join([_ok(0), HOSTILE[kind], _ok(1)]) + "\n")
    samples, report = load_split(split, on_error="skip")
    assert [s.id for s in samples] == ["ok0", "ok1"] and report.skipped == 1
    assert "train.jsonl:2: " in str(report.errors[0]) and WHAT[kind] in str(report.errors[0])
    assert main(["data", "check", str(dataset)]) == 1  # reported, not a traceback
    assert WHAT[kind] in capsys.readouterr().out.replace("\n", "")


def test_markup_in_a_manifest_name_is_printed_as_text(dataset, capsys):
    (dataset / "train.jsonl").write_text(_ok(0) + "\n")
    (dataset / "dataset.json").write_text(json.dumps({"name": "[bold red]x[/oops] [/]"}))
    assert main(["data", "check", str(dataset)]) == 0
    assert "[bold red]x[/oops] [/]" in capsys.readouterr().out


def test_data_check_keeps_sizes_not_pixels(tmp_path):
    """Issue 28, item 10 (the part of it here; reading data at scale is the streaming path's):
    `data check` decodes each image to validate it and keeps only its size."""
    lines = []
    for i in range(6):
        Image.new("RGB", (1500, 1500), (i, 0, 0)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"id": f"s{i}", "task": "caption", "group": "und",
                                 "prompt": "describe", "target": "t", "image": f"{i}.png"}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    tracemalloc.start()
    try:
        result = check_dataset(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.splits["train"]["caption"].input_sizes == {"1500x1500": 6}
    assert peak < 3 * 1500 * 1500 * 3, peak  # six decoded images are 40 MB; one is 6.75 MB


def test_data_check_with_a_model_finds_records_past_its_positions(dataset, tmp_path, capsys):
    """Issue 28, item 9: records longer than the model's positions passed `data check`."""
    model, tok, _ = tiny_model()  # 256 positions
    save_model_dir(model, tmp_path / "m", tok)
    long_turns = [{"role": r, "text": "what color is the circle ?" if r == "user" else "red"}
                  for _ in range(40) for r in ("user", "assistant")]
    long_turns[0]["image"] = "x.png"
    lines = [_ok(0), json.dumps({"id": "talk", "task": "vqa", "group": "und", "turns": long_turns})]
    (dataset / "train.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["data", "check", str(dataset)]) == 0  # without a model: nothing to measure
    capsys.readouterr()
    assert main(["data", "check", str(dataset), "--model", str(tmp_path / "m")]) == 1
    out = capsys.readouterr().out.replace("\n", "")
    assert "train.jsonl:2: sample 'talk' is" in out and "the model has 256 positions" in out
    # --sample (issue 26) measures every record too, not only those whose images it decodes.
    assert main(["data", "check", str(dataset), "--sample", "1",
                 "--model", str(tmp_path / "m")]) == 1
    out = capsys.readouterr().out.replace("\n", "")
    assert "train.jsonl:2: sample 'talk' is" in out and "1 valid samples" in out
