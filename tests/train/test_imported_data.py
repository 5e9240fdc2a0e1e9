"""The walk of docs/data_format.md, "From a LLaVA folder to a trained, evaluated model": a folder
in LLaVA's layout is imported (its images used where they are), trained on with the own_data
recipe (read from disk) and evaluated with the generic free-form scorer, in the commands a user
types."""

from __future__ import annotations

import json

from utamoe.cli import main
from utamoe.demo import QUICK_OVERRIDES

from ..owndata import write_llava


def test_llava_folder_to_a_trained_and_evaluated_model(tmp_path, capsys):
    llava = write_llava(tmp_path / "llava", 40)
    data, run = tmp_path / "data" / "llava", tmp_path / "run"
    assert main(["data", "import", "--from", "llava", str(llava / "llava_instruct.json"),
                 "--images", str(llava / "images"), "--out", str(data), "--test-every", "4"]) == 0
    assert "train: instruct 30; test: instruct 10" in capsys.readouterr().out
    assert main(["data", "check", str(data)]) == 0
    sets = [f"data.dir={data}", "data.workers=1", *QUICK_OVERRIDES]
    assert main(["train", "--config", "own_data", "--out", str(run),
                 *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert "the stage trains on ['instruct'] only" in out
    assert (run / "data_cache" / "index-train.npz").is_file()
    assert not list(data.glob("images"))  # nothing was copied
    assert main(["eval", "--model", str(run / "model"), "--data", str(data), "--out",
                 str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["per_task"]["instruct"]["n"] == 10
    assert metrics["per_task"]["instruct"]["answers"] > 10  # conversations score every answer
    assert {"instruct_token_f1", "instruct_exact"} <= set(metrics)
