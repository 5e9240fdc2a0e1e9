"""The task registry: built-in declarations, validation, group maps, and a task registered
from a test file that trains in a tiny recipe and is scored by `utamoe eval` with its own scorer."""

from __future__ import annotations

import json

import pytest

from utamoe.cli import main
from utamoe.config import ConfigError
from utamoe.data.formats import load_split
from utamoe.tasks import (
    GROUPS,
    ScoreContext,
    Task,
    TaskScore,
    default_tasks,
    get_task,
    group_index,
    register_task,
    task_names,
    unregister_task,
)

from .owndata import write_digits


def test_builtin_tasks_and_their_declarations():
    assert task_names()[:6] == ["caption", "vqa", "pope", "grounding", "t2i", "edit"]
    assert task_names("gen") == ["t2i", "edit", "layout"]
    # UnifiedMLLM's tasks, after the original six, are opt-in: not in a default mixture, and
    # their markers join a run's tokenizer only with their data (so older data and recipes
    # train exactly what they trained before).
    # instruct (free-form instructions of imported data, issue 26) is opt-in for the same reason.
    assert task_names()[6:] == ["reason_edit", "seg", "layout", "dialog", "instruct"]
    assert [get_task(t).opt_in for t in task_names()] == [False] * 6 + [True] * 5
    instruct = get_task("instruct")
    assert (instruct.group, instruct.output, instruct.needs_image) == ("und", "text", False)
    assert instruct.scorer_for(ScoreContext())[0] == "free_form"
    assert default_tasks() == task_names()[:6]
    t2i, edit, vqa = get_task("t2i"), get_task("edit"), get_task("vqa")
    assert (t2i.output, t2i.needs_image, edit.needs_image, vqa.output) == ("image", False, True, "text")
    assert get_task("caption").scorer_for(ScoreContext(benchmark="shapesworld"))[0] == "caption_shapes"
    assert get_task("caption").scorer_for(ScoreContext())[0] == "caption_generic"


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="x y", group="und", layout="answer"), "letters"),
    (dict(name="x", group="audio", layout="answer"), "group"),
    (dict(name="x", group="und", layout="generate"), "does not fit"),
    (dict(name="x", group="gen", layout="edit", needs_image=False), "needs an input image"),
])
def test_bad_declarations_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Task(scorer=lambda s, p, c: {}, **kwargs)


def test_unknown_task_and_duplicate_registration():
    with pytest.raises(ConfigError, match="registered tasks: caption"):
        get_task("ocr")
    with pytest.raises(ConfigError, match="already registered"):
        register_task(get_task("vqa"))


def test_group_index_maps_any_order_and_rejects_other_names():
    assert group_index(GROUPS) == [0, 1]
    assert group_index(("gen", "und")) == [1, 0]
    with pytest.raises(ConfigError, match=r"stages.2.moe.group_names is \['und', 'img'\]"):
        group_index(("und", "img"), "stages.2.moe.group_names")


def parity_scorer(samples, preds, ctx):
    """The new task's own metric: does the answer have the target's parity word?"""
    hits = [(p or "").strip() == s.target for s, p in zip(samples, preds)]
    return TaskScore({"accuracy": sum(hits) / len(hits), "n": len(hits)})


@pytest.fixture
def parity_task():
    register_task(Task("parity", group="und", layout="answer", scorer=parity_scorer,
                       headline={"accuracy": "parity_accuracy"}, title="Digit parity"))
    yield
    unregister_task("parity")


def _add_parity_records(root):
    for split in ("train", "test"):
        path = root / f"{split}.jsonl"
        recs = [json.loads(x) for x in path.read_text().splitlines()]
        extra = [{"id": r["id"].replace("vqa", "parity"), "task": "parity", "group": "und",
                  "prompt": "odd or even?", "image": r["image"],
                  "target": "even" if ["zero", "two", "four", "six", "eight"].count(r["target"]) else "odd"}
                 for r in recs if r["task"] == "vqa"]
        path.write_text(path.read_text() + "".join(json.dumps(x) + "\n" for x in extra))


def test_a_registered_task_trains_and_is_scored_by_eval(parity_task, tmp_path):
    data = write_digits(tmp_path / "d", {"train": 12, "test": 4})
    _add_parity_records(data)
    samples, _ = load_split(data / "train.jsonl")
    assert sum(s.task == "parity" for s in samples) == 12 and samples[-1].group == "und"
    run = tmp_path / "run"
    sets = [f"data.dir={data}", "tokenizers.image_train={steps: 5, batch_size: 8}",
            "tokenizers.text_vocab_size=300", "model.backbone.config.hidden_size=32",
            "model.backbone.config.intermediate_size=64", "model.backbone.config.num_hidden_layers=1",
            "model.backbone.config.num_attention_heads=2", "model.backbone.config.num_key_value_heads=2",
            "model.vision.config.hidden_size=16", "model.vision.config.intermediate_size=32",
            "model.vision.config.patch_size=16", "train.batch_size=4", "train.log_every=1",
            "train.warmup_steps=1", "stages=[{name: joint, steps: 3, mixture: {parity: 1, vqa: 1}}]"]
    assert main(["train", "--config", "joint_dense", "--out", str(run),
                 *[a for s in sets for a in ("--set", s)]]) == 0
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("task_loss_parity" in r for r in log)
    assert main(["eval", "--model", str(run / "model"), "--data", str(data),
                 "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "parity_accuracy" in metrics and metrics["per_task"]["parity"]["n"] == 4
    assert "Digit parity (`parity`)" in (tmp_path / "eval" / "report.md").read_text()
