"""The demo's verdict per task: each headline number against its goal, and the VQA question
types below the floor named."""

from __future__ import annotations

from utamoe.demo import TARGETS, verdicts


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
