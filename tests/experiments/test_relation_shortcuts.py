"""experiments/relation_shortcuts.py: partial answerers' best accuracy, and a run's answers read back."""

from __future__ import annotations

import json

import relation_shortcuts as rs

from utamoe.shapes import ShapesWorldConfig, generate_dataset


def test_both_positions_answer_every_relation_question_and_the_word_alone_none():
    questions = rs.drawn(3000, ShapesWorldConfig(), seed=0)
    acc = {name: rs.bayes_accuracy(questions, key) for name, key in rs.KNOWS.items()}
    assert acc["the relation and both positions"] == 1.0
    assert abs(acc["the relation word"] - 0.5) < 0.05  # the generator balances yes and no
    for one in ("the relation and A's position", "the relation and B's position"):
        assert 0.7 < acc[one] < 0.85, acc


def test_model_answers_reads_the_test_split_and_the_predictions(tmp_path):
    test = generate_dataset(ShapesWorldConfig(sizes={"test": 60}))["test"]
    rel = [s for s in test if s.task == "vqa" and s.meta["qtype"] == "relation"]
    (tmp_path / "data").mkdir()
    (tmp_path / "eval").mkdir()
    (tmp_path / "data" / "test.jsonl").write_text("".join(
        json.dumps({"id": s.id, "task": s.task, "prompt": s.prompt, "target": s.target,
                    "meta": s.meta}) + "\n" for s in test))
    # a "model" that always answers yes; an image task's record has no prediction
    (tmp_path / "eval" / "predictions.jsonl").write_text("".join(
        json.dumps({"id": s.id, "prediction": " yes"}) + "\n" for s in rel)
        + json.dumps({"id": "t2i-0", "correct_all": True}) + "\n")
    rows = rs.model_answers(tmp_path, ShapesWorldConfig())
    assert len(rows) == len(rel) > 0
    for (r, a, b, truth, pred), s in zip(rows, rel):
        assert pred == "yes" and truth == s.target and a != b and f" {r} " in s.prompt
