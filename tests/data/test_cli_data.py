"""`utamoe data shapes` and `utamoe data check` end to end on a tiny dataset."""

import json

from utamoe.cli import main
from utamoe.data import load_dataset


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
