"""`utamoe data import` (utamoe.data.importing): small fixtures in the shapes of the field's formats
(LLaVA, `messages`, ImageFolder metadata, a Hugging Face dataset saved to disk and as parquet),
checked against the records the import writes; unmappable records named by file and index; an
import killed mid-way resumes to the same files; an image folder outside the dataset is used
where it is."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utamoe.cli import main
from utamoe.data import importing
from utamoe.data.formats import DataFormatError, image_root, load_split
from utamoe.data.importing import ImportOptions, run_import


def _png(path: Path, value: int = 0, size=(20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def _png_bytes(value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _rejected(out: Path, split: str = "train") -> list[dict]:
    return _records(out / "import" / f"{split}.rejected.jsonl")


LLAVA = [
    {"id": "000000033471", "image": "coco/a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
        {"from": "gpt", "value": "The bus is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "An advertisement."}]},
    {"id": "single-after", "image": "coco/b.jpg", "conversations": [
        {"from": "human", "value": "Describe the image briefly.\n<image>"},
        {"from": "gpt", "value": "A dog on grass."}]},
    {"id": "text-only", "conversations": [
        {"from": "human", "value": "Write a haiku."}, {"from": "gpt", "value": "Snow falls."}]},
    {"id": "no-placeholder", "image": "coco/a.jpg", "conversations": [
        {"from": "human", "value": "Count the wheels."}, {"from": "gpt", "value": "Four."}]},
    {"id": "missing", "image": "coco/zzz.jpg", "conversations": [
        {"from": "human", "value": "<image>What?"}, {"from": "gpt", "value": "x"}]},
    {"id": "starts-with-gpt", "conversations": [
        {"from": "gpt", "value": "Hi"}, {"from": "human", "value": "Hello"}]},
    {"id": "unanswered", "image": "coco/a.jpg", "conversations": [
        {"from": "human", "value": "<image>Q1"}, {"from": "gpt", "value": "A1"},
        {"from": "human", "value": "Q2"}]},
]


@pytest.fixture()
def llava(tmp_path) -> Path:
    folder = tmp_path / "llava"
    _png(folder / "images" / "coco" / "a.jpg", 10)
    _png(folder / "images" / "coco" / "b.jpg", 200)
    (folder / "llava_instruct.json").write_text(json.dumps(LLAVA, indent=1))
    return folder


def test_llava_records_map_to_records_and_conversations(llava, tmp_path):
    out = tmp_path / "out"
    report = run_import(llava / "llava_instruct.json", out,
                        ImportOptions("llava", images=str(llava / "images")))
    recs = _records(out / "train.jsonl")
    assert [r["meta"]["source_id"] for r in recs] == ["000000033471", "single-after", "text-only",
                                                      "no-placeholder"]
    conv, after, text, unmarked = recs
    assert conv["task"] == "instruct" and conv["turns"] == [
        {"role": "user", "text": "What are the colors of the bus?", "image": "coco/a.jpg"},
        {"role": "assistant", "text": "The bus is white and red."},
        {"role": "user", "text": "What feature can be seen on the back of the bus?"},
        {"role": "assistant", "text": "An advertisement."}]
    assert (after["prompt"], after["image"], after["target"]) == (
        "Describe the image briefly.", "coco/b.jpg", "A dog on grass.")
    assert "image" not in text and (text["prompt"], text["target"]) == ("Write a haiku.", "Snow falls.")
    assert unmarked["image"] == "coco/a.jpg"  # no <image>: the first user turn's
    assert report.mapped == {"train": {"instruct": 4}} and report.conversations == 1
    # Every unmappable record: its source file and index, and why.
    rejected = _rejected(out)
    assert [(Path(r["source"]).name, r["index"]) for r in rejected] == [
        ("llava_instruct.json", 4), ("llava_instruct.json", 5), ("llava_instruct.json", 6)]
    assert "coco/zzz.jpg not found" in rejected[0]["reason"]
    assert "alternate user, assistant" in rejected[1]["reason"]
    assert "last turn is a user turn" in rejected[2]["reason"]
    assert report.unmapped == 3 and report.read == 7
    # The images stay where they are: the manifest names their folder, nothing is copied.
    assert not (out / "images").exists()
    assert image_root(out) == llava / "images"
    samples, _ = load_split(out / "train.jsonl")
    assert samples[0].turns[0].image.shape == (16, 20, 3) and samples[2].image is None


def test_messages_with_list_content_system_turns_and_inline_images(tmp_path):
    src = tmp_path / "chat"
    _png(src / "img" / "x.png", 50)
    inline = "data:image/png;base64," + base64.b64encode(_png_bytes(90)).decode()
    rows = [
        {"messages": [{"role": "system", "content": "You are terse."},
                      {"role": "user", "content": "<image>What is shown?"},
                      {"role": "assistant", "content": "A square."}], "images": ["img/x.png"]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Compare"},
                                                   {"type": "image"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
                      {"role": "user", "content": [{"type": "image_url", "image_url": {"url": inline}},
                                                   {"type": "text", "text": "and this?"}]},
                      {"role": "assistant", "content": "Darker."}], "images": ["img/x.png"]},
        {"messages": [{"role": "user", "content": "<image><image>two?"},
                      {"role": "assistant", "content": "no"}], "images": ["img/x.png", "img/x.png"]},
        {"messages": [{"role": "user", "content": [{"type": "image_url",
                                                    "image_url": {"url": "https://x.org/a.png"}}]},
                      {"role": "assistant", "content": "no"}]},
    ]
    (src / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    out = src  # the dataset is written beside its images: inline images can be stored too
    run_import(src / "train.jsonl", out, ImportOptions("messages", split="chat"))
    first, second = _records(out / "chat.jsonl")
    assert (first["prompt"], first["image"], first["target"]) == (
        "You are terse.\nWhat is shown?", "img/x.png", "A square.")
    assert first["meta"]["system"] == "You are terse."
    assert second["turns"][0] == {"role": "user", "text": "Compare", "image": "img/x.png"}
    assert second["turns"][2]["text"] == "and this?"
    written = out / second["turns"][2]["image"]  # the inline image, written as it was
    assert written.read_bytes() == _png_bytes(90) and written.suffix == ".png"
    rejected = _rejected(out, "chat")
    assert [r["index"] for r in rejected] == [2, 3, 4]
    assert "holds 2 images" in rejected[0]["reason"] and "remote URL" in rejected[1]["reason"]
    assert "malformed JSON" in rejected[2]["reason"]
    samples, _ = load_split(out / "chat.jsonl")  # the loader reads both kinds of image
    assert samples[1].turns[2].image.shape == (8, 8, 3)
    # --system meta keeps the system text out of the prompt; an outside image folder (the
    # source's, by default) takes no inline image: that record is reported.
    run_import(src / "train.jsonl", tmp_path / "meta", ImportOptions("messages", system="meta"))
    assert _records(tmp_path / "meta" / "train.jsonl")[0]["prompt"] == "What is shown?"
    assert "given as bytes" in _rejected(tmp_path / "meta")[0]["reason"]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_imagefolder_metadata_gives_t2i_or_caption_records(tmp_path, kind):
    folder = tmp_path / "pairs"
    for i in range(3):
        _png(folder / f"{i}.png", 40 * i)
    rows = [{"file_name": f"{i}.png", "caption": f"a square of shade {i}"} for i in range(3)]
    rows.append({"file_name": "3.png", "caption": "missing"})
    if kind == "csv":
        (folder / "metadata.csv").write_text("file_name,caption\n" + "".join(
            f"{r['file_name']},{r['caption']}\n" for r in rows))
    else:
        (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t2i"
    report = run_import(folder, out, ImportOptions("t2i"))
    recs = _records(out / "train.jsonl")
    assert [(r["task"], r["prompt"], r["target_image"]) for r in recs] == [
        ("t2i", f"a square of shade {i}", f"{i}.png") for i in range(3)]
    assert report.unmapped == 1 and _rejected(out)[0]["index"] == 3
    cap = tmp_path / "cap"
    run_import(folder, cap, ImportOptions("t2i", task="caption", prompt="what is this?"))
    r = _records(cap / "train.jsonl")[1]
    assert (r["task"], r["prompt"], r["image"], r["target"]) == (
        "caption", "what is this?", "1.png", "a square of shade 1")


def _hf_dataset():
    datasets = pytest.importorskip("datasets")
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": _png_bytes(10 * i), "path": None} for i in range(4)],
         "text": [f"shade {i}" for i in range(3)] + [""]},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}))


@pytest.mark.parametrize("form", ["save_to_disk", "parquet"])
def test_hf_dataset_with_image_bytes(tmp_path, form):
    ds = _hf_dataset()
    src = tmp_path / "hf"
    if form == "save_to_disk":
        ds.save_to_disk(str(src))
    else:
        src.mkdir()
        ds.to_parquet(str(src / "train-00000-of-00001.parquet"))
    out = tmp_path / "out"
    report = run_import(src, out, ImportOptions("hf"))
    recs = _records(out / "train.jsonl")
    assert [r["prompt"] for r in recs] == ["shade 0", "shade 1", "shade 2"]
    assert all((out / r["target_image"]).read_bytes() == _png_bytes(10 * i) for i, r in enumerate(recs))
    assert report.images_written == 3 and report.unmapped == 1 and _rejected(out)[0]["index"] == 3
    assert "image_root" not in json.loads((out / "dataset.json").read_text())


def test_hf_dataset_dict_and_messages_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    chat = datasets.Dataset.from_dict({
        "messages": [[{"role": "user", "content": "<image>what?"},
                      {"role": "assistant", "content": "grey"}]],
        "images": [[{"bytes": _png_bytes(128), "path": None}]]},
        features=datasets.Features({
            "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
            "images": datasets.Sequence(datasets.Image())}))
    datasets.DatasetDict({"train": chat, "validation": chat}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataFormatError, match="--hf-split"):
        run_import(tmp_path / "dd", tmp_path / "x", ImportOptions("hf"))
    run_import(tmp_path / "dd", tmp_path / "out", ImportOptions("hf", hf_split="validation"))
    (rec,) = _records(tmp_path / "out" / "train.jsonl")
    assert (rec["task"], rec["prompt"], rec["target"]) == ("instruct", "what?", "grey")
    assert (tmp_path / "out" / rec["image"]).read_bytes() == _png_bytes(128)


def test_import_is_idempotent_and_test_every_splits(llava, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["data", "import", "--from", "llava", str(llava / "llava_instruct.json"), "--out",
            str(out), "--images", str(llava / "images"), "--test-every", "2"]
    assert main(args) == 0
    # Output to a log file (not a terminal): progress lines that end in "done", not "/100".
    lines = [x for x in capsys.readouterr().out.splitlines() if "] importing " in x]
    assert lines and re.search(r": (\d+)/\1 \(100%\), .*, done$", lines[-1]), lines
    assert not any("/100 " in x for x in lines[:-1])
    first = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    assert sorted(first) == ["test.jsonl", "train.jsonl"]
    assert [r["meta"]["source_index"] for r in _records(out / "test.jsonl")] == [1, 3]
    assert main(args) == 0
    assert "already imported" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == first
    assert main(["data", "check", str(out)]) == 0
    # Another import into the same split is refused unless forced.
    other = [*args[:4], str(tmp_path / "elsewhere.json"), *args[5:]]
    (tmp_path / "elsewhere.json").write_text(json.dumps(LLAVA[:3]))
    assert main(other) == 2 and "pass --force" in capsys.readouterr().err
    # A folder of the user's that is not a dataset is not written into (issue 28, item 1).
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert main([*args[:6], str(tmp_path / "mine"), *args[7:]]) == 2
    assert "is not empty and holds no dataset" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


KILLER = """
import os, signal, sys
from utamoe.data import importing
importing.SAVE_EVERY = 7
def progress(n, seen=[0]):
    seen[0] += n
    if seen[0] == 23:
        os.kill(os.getpid(), signal.SIGKILL)
importing.run_import(sys.argv[1], sys.argv[2], importing.ImportOptions("messages"),
                     progress=progress)
"""


def test_a_killed_import_resumes_to_the_same_files(tmp_path, monkeypatch):
    src = tmp_path / "big.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}" if i % 5 else ""}]}
            for i in range(40)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", KILLER, str(src), str(tmp_path / "a")], env=env)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "a" / "train.jsonl").exists()
    assert (tmp_path / "a" / "train.jsonl.partial").is_file()
    monkeypatch.setattr(importing, "SAVE_EVERY", 7)
    resumed = run_import(src, tmp_path / "a", ImportOptions("messages"))
    assert resumed.resumed_at == 21  # the last state saved before the kill
    fresh = run_import(src, tmp_path / "b", ImportOptions("messages"))
    for name in ("train.jsonl", "import/train.rejected.jsonl"):
        a, b = (tmp_path / d / name for d in "ab")
        assert a.read_bytes() == b.read_bytes(), name
    assert (resumed.read, resumed.unmapped, resumed.mapped) == (fresh.read, fresh.unmapped, fresh.mapped)
    assert not (tmp_path / "a" / "import" / "train.state.json").exists()


def test_an_image_root_outside_the_dataset_is_explicit_and_contained(llava, tmp_path):
    out = tmp_path / "out"
    run_import(llava / "llava_instruct.json", out, ImportOptions("llava", images=str(llava / "images")))
    # A record that climbs out of the image root is refused, as inside a dataset directory.
    with open(out / "train.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "x", "task": "instruct", "group": "und", "prompt": "q",
                             "target": "a", "image": "../llava_instruct.json"}) + "\n")
    with pytest.raises(DataFormatError, match="image root .* stay inside it"):
        load_split(out / "train.jsonl")
    # Without an image_root the dataset directory is the root, as before.
    manifest = json.loads((out / "dataset.json").read_text())
    del manifest["image_root"]
    (out / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match="coco/a.jpg' not found"):
        load_split(out / "train.jsonl")
