"""The demo's verdict per task: each headline number against its goal, and the VQA question
types below the floor named; the demo's folder holds one demo (one seed, one size)."""

from __future__ import annotations

from utamoe.cli import main
from utamoe.demo import TARGETS, _check_out, _recipe, verdicts
from utamoe.train.config import dump_config


def test_verdicts_name_what_works_and_what_does_not():
    metrics = {**{k: v + 0.01 for k, v in TARGETS.items()}, "pope_accuracy": 0.55, "pope_f1": 0.64}
    lines = verdicts(metrics, {"accuracy": 0.9, "accuracy_count": 0.5, "accuracy_color": 0.95})
    assert len(lines) == len(TARGETS)
    pope = next(x for x in lines if x.startswith("pope"))
    assert "does not work yet" in pope and "F1 of 'yes' 0.640" in pope
    vqa = next(x for x in lines if x.startswith("vqa"))
    assert vqa.endswith("question types below 0.7: count 0.50") and "works" in vqa
    assert all("-> works" in x for x in lines if not x.startswith(("pope", "vqa")))
    assert verdicts({"vqa_accuracy": 0.9}) == ["vqa: vqa_accuracy 0.900 (goal 0.85) -> works"]


def test_a_folder_with_a_demo_of_another_seed_or_size_is_refused(tmp_path, capsys):
    """Issue 28, item 7: `demo` resumed the seed-0 model on seed-1 data, and `demo --quick` then
    `demo` ended in "start again with --force", a flag demo did not have."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "config.yaml").write_text(dump_config(_recipe(out, out / "data", 0, quick=True)))
    (out / "text_tokenizer").mkdir()
    for argv, what in ((["--seed", "1", "--quick"], "run.seed 0 there, 1 here"),
                       ([], "another seed or size")):
        assert main(["demo", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert what in err and "--force" in err, err
    assert (out / "config.yaml").is_file() and (out / "text_tokenizer").is_dir()  # untouched
    _check_out(out, _recipe(out, out / "data", 0, quick=True), force=False)  # the same recipe
    _check_out(out, _recipe(out, out / "data", 1, quick=True), force=True)  # starts it over
    assert not (out / "config.yaml").exists() and not (out / "text_tokenizer").exists()


def test_demo_never_writes_into_a_folder_that_holds_no_demo(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["demo", "--quick", "--out", str(tmp_path), "--force"]) == 2
    assert "holds no demo" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
