"""The on-disk format: round trip, and loader errors that name the file and line."""

import json
import os

import numpy as np
import pytest

from utamoe.data import DataFormatError, Sample, load_dataset, load_split, write_split
from utamoe.data.formats import FORMAT_VERSION, MANIFEST, write_manifest

IMG = np.arange(12 * 12 * 3, dtype=np.uint8).reshape(12, 12, 3)


def good_samples():
    return [
        Sample("a", "vqa", "what color is the circle?", image=IMG, target="red",
               meta={"qtype": "color"}),
        Sample("b", "t2i", "draw a small red circle at top left", target_image=IMG),
        Sample("c", "edit", "remove the red circle", image=IMG, target_image=IMG[::-1]),
    ]


def test_round_trip(tmp_path):
    assert write_split(tmp_path, "train", good_samples()) == 3
    loaded, report = load_split(tmp_path / "train.jsonl")
    assert report.loaded == 3 and report.skipped == 0
    for a, b in zip(good_samples(), loaded, strict=True):
        assert (a.id, a.task, a.prompt, a.target, a.meta) == (b.id, b.task, b.prompt, b.target,
                                                              b.meta)
        for x, y in ((a.image, b.image), (a.target_image, b.target_image)):
            assert (x is None and y is None) or np.array_equal(x, y)
    rec = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[2])
    assert rec == {"id": "c", "task": "edit", "group": "gen", "prompt": "remove the red circle",
                   "image": "images/train/c_input.png", "target_image": "images/train/c_target.png"}


GOOD = {"id": "x", "task": "vqa", "group": "und", "prompt": "q?", "image": "ok.png",
        "target": "red"}
BROKEN = [
    ('{"id": "x", "task": ', "malformed JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({**GOOD, "image": "nope.png"}), "'nope.png' not found"),
    (json.dumps({**GOOD, "image": "junk.png"}), "unreadable"),
    (json.dumps({**GOOD, "image": "/etc/passwd"}), "must be relative"),
    (json.dumps({**GOOD, "task": "segmentation"}), "unknown task 'segmentation'"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "target"}), "missing target"),
    (json.dumps({**GOOD, "task": "t2i", "group": "gen"}), "missing target"),
    (json.dumps({**GOOD, "group": "gen"}), "belongs to group 'und'"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "prompt"}), "missing field 'prompt'"),
    (json.dumps({**GOOD, "answer": "red"}), "unknown field"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "image"}), "needs an input image"),
    (json.dumps({**GOOD, "target": 3}), "must be a string"),
    (json.dumps(GOOD), "duplicate id 'x'"),
]


def write_broken(tmp_path):
    from PIL import Image

    Image.fromarray(IMG).save(tmp_path / "ok.png")
    (tmp_path / "junk.png").write_bytes(b"this is not a png")
    lines = [json.dumps(GOOD)] + [text for text, _ in BROKEN] + [json.dumps({**GOOD, "id": "y"})]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("index", range(len(BROKEN)))
def test_raise_mode_names_file_and_line(tmp_path, index):
    write_broken(tmp_path)
    path = tmp_path / "train.jsonl"
    lines = path.read_text().splitlines()
    # Keep the good first line, then only broken record `index`.
    path.write_text(lines[0] + "\n" + lines[1 + index] + "\n")
    with pytest.raises(DataFormatError) as info:
        load_split(path, on_error="raise")
    err = info.value
    assert err.path == str(path) and err.line == 2
    assert str(err).startswith(f"{path}:2: ")
    assert BROKEN[index][1] in str(err)


def test_skip_mode_counts_every_skip(tmp_path):
    path = write_broken(tmp_path)
    samples, report = load_split(path, on_error="skip", max_errors=3)
    assert [s.id for s in samples] == ["x", "y"]
    assert report.loaded == 2 and report.skipped == len(BROKEN)
    assert [e.line for e in report.errors] == [2, 3, 4]  # the first ones, in order
    assert f"{len(BROKEN)} skipped" in report.summary()
    with pytest.raises(ValueError, match="on_error"):
        load_split(path, on_error="ignore")


def test_bad_encoding_and_blank_lines(tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_bytes(b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"val.jsonl:2: not UTF-8"):
        load_split(path)


def test_dataset_level_errors(tmp_path):
    with pytest.raises(DataFormatError, match="no <split>.jsonl"):
        load_dataset(tmp_path)
    write_split(tmp_path, "train", good_samples())
    write_manifest(tmp_path, "mine")
    data, reports = load_dataset(tmp_path)
    assert list(data) == ["train"] and reports["train"].loaded == 3
    (tmp_path / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(DataFormatError, match="upgrade utamoe"):
        load_dataset(tmp_path)
    with pytest.raises(DataFormatError, match="not found"):
        load_split(tmp_path / "missing.jsonl")


def _one_record_dataset(root, image_rel="img.png"):
    import json as _json

    from PIL import Image as _Image

    root.mkdir(parents=True, exist_ok=True)
    _Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(root / "img.png")
    rec = {"id": "a", "task": "vqa", "group": "und", "prompt": "q", "image": image_rel, "target": "x"}
    (root / "train.jsonl").write_text(_json.dumps(rec) + "\n")
    return root / "train.jsonl"


@pytest.mark.parametrize("load_images", [True, False])
def test_a_symlink_out_of_the_dataset_is_refused_in_every_mode(tmp_path, load_images):
    split = _one_record_dataset(tmp_path / "d", "link.png")
    (tmp_path / "d" / "img.png").rename(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", tmp_path / "d" / "link.png")
    with pytest.raises(DataFormatError, match=r"train.jsonl:1: .*outside the dataset directory"):
        load_split(split, load_images=load_images)


def test_images_over_the_pixel_limit_fail_that_record_only(tmp_path, monkeypatch):
    from PIL import Image as _Image

    split = _one_record_dataset(tmp_path / "d")
    with pytest.raises(DataFormatError, match=r"train.jsonl:1: .*more than 100 pixels.*30x40"):
        load_split(split, max_pixels=100)
    samples, report = load_split(split, on_error="skip", max_pixels=100)
    assert samples == [] and report.skipped == 1
    monkeypatch.setattr(_Image, "MAX_IMAGE_PIXELS", 10)  # PIL's own bomb check fires at open
    with pytest.raises(DataFormatError, match="more than"):
        load_split(split)


def test_data_check_counts_an_empty_split_as_an_error(tmp_path):
    from utamoe.data.check import check_dataset

    _one_record_dataset(tmp_path / "d")
    (tmp_path / "d" / "test.jsonl").write_text("\n  \n")
    result = check_dataset(tmp_path / "d")
    assert result.empty == ["test"] and result.n_errors == 1
