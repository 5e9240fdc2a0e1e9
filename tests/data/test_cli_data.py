"""`utamoe data shapes` and `utamoe data check` end to end on a tiny dataset."""

import json

from tests.owndata import write_digits
from utamoe.cli import main
from utamoe.data import load_dataset, ondisk
from utamoe.data.check_sample import check_sampled


def test_shapes_then_check(tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["data", "shapes", "--out", str(out), "--seed", "1",
            "--sizes", "train=4", "val=2", "test=2", "heldout=2"]
    assert main(argv) == 0
    assert "wrote 100 samples" in capsys.readouterr().out  # ten tasks by default
    data, _ = load_dataset(out)
    assert {k: len(v) for k, v in data.items()} == {"heldout": 20, "test": 20, "train": 40,
                                                    "val": 20}
    assert {s.task for s in data["train"]} >= {"reason_edit", "seg", "layout", "dialog"}
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["config"]["seed"] == 1
    assert main(argv) == 1  # refuses to overwrite without --force
    assert "--force" in capsys.readouterr().err

    assert main(["data", "check", str(out)]) == 0
    text = capsys.readouterr().out
    assert "grounding" in text and "48x48" in text and "OK" in text

    path = out / "val.jsonl"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace('"task":"', '"task":"x')
    path.write_text("\n".join(lines) + "\n")
    assert main(["data", "check", str(out)]) == 1
    text = capsys.readouterr().out
    assert "val.jsonl:4:" in text and "unknown task" in text and "1 errors" in text


def test_check_rejects_non_datasets(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "no <split>.jsonl" in capsys.readouterr().err


def test_check_sample_validates_every_record_and_decodes_a_sample(tmp_path, capsys):
    """--sample N: counts and shares from every record (a broken record anywhere is found),
    images decoded for N random records per split only."""
    root = write_digits(tmp_path / "d", {"train": 20})
    lines = (root / "train.jsonl").read_text().splitlines()
    lines.append(json.dumps({"id": "bad", "task": "vqa", "group": "und", "prompt": "q",
                             "target": "a", "image": "images/none.png"}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    decoded = []
    read = ondisk.DiskSplit.read

    def counting(self, i, load_images=True):
        decoded.append(i)
        return read(self, i, load_images)

    ondisk.DiskSplit.read = counting
    try:
        result = check_sampled(root, sample=7)
    finally:
        ondisk.DiskSplit.read = read
    assert len(decoded) == 7 and result.sampled == {"train": 7}
    assert {t: s.count for t, s in result.splits["train"].items()} == {
        "caption": 20, "vqa": 20, "pope": 20, "t2i": 20}
    assert result.n_errors == 1 and "images/none.png' not found" in str(result.reports["train"].errors[0])
    assert main(["data", "check", str(root), "--sample", "5"]) == 1
    out = capsys.readouterr().out
    assert "25.0%" in out and "random sample of 5 (train)" in out
