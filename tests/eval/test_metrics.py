"""Text metrics and their edge cases: empty answers, extra words, malformed boxes."""

import pytest

from utamoe.eval.metrics import (
    box_iou,
    exact_match,
    grounding_iou,
    grounding_metrics,
    normalize_answer,
    pope_metrics,
    token_f1,
    vqa_accuracy,
    yes_no,
)


def test_normalisation():
    assert normalize_answer("  The  RED. ") == "red"
    assert normalize_answer("Two!") == "2"
    assert normalize_answer("an object, at the centre") == "object at center"
    assert normalize_answer(None) == normalize_answer("") == ""


def test_exact_match_edge_cases():
    assert exact_match("Red.", "red")
    assert exact_match("two", "2")
    assert not exact_match("", "red")
    assert not exact_match(None, "red")
    assert not exact_match("", "")  # an empty answer is never right
    assert not exact_match("it is red", "red")  # extra words are wrong under exact match
    assert token_f1("it is red", "red") == pytest.approx(0.5)
    assert token_f1("", "red") == 0.0
    acc = vqa_accuracy(["red", "the circle", "", "3"], ["red", "circle", "square", "three"])
    assert acc["accuracy"] == 0.75 and acc["n"] == 4
    with pytest.raises(ValueError, match="one prediction per sample"):
        vqa_accuracy(["red"], ["red", "blue"])


def test_pope_metrics():
    assert yes_no("Yes, there is.") == "yes" and yes_no("no") == "no"
    assert yes_no("maybe") is None and yes_no("") is None
    preds = ["yes", "Yes.", "no", "", "no", "yes"]
    golds = ["yes", "yes", "yes", "yes", "no", "no"]
    m = pope_metrics(preds, golds)
    # tp=2 fp=1 fn=2; correct: 2 yes + 1 no = 3 of 6; one invalid answer.
    assert m["accuracy"] == 0.5
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(4 / 7)
    assert m["invalid"] == 1 and m["yes_ratio"] == pytest.approx(0.5)
    assert pope_metrics(["no", "no"], ["no", "no"])["f1"] == 0.0




def test_boxes_and_grounding():
    assert box_iou((0, 0, 1, 1), (0, 0, 0.5, 1)) == pytest.approx(0.5)
    assert box_iou((0, 0, 0.1, 0.1), (0.5, 0.5, 1, 1)) == 0.0
    assert box_iou((0.2, 0.2, 0.2, 0.4), (0.2, 0.2, 0.2, 0.4)) == 0.0  # degenerate
    gold = "[0.35,0.35,0.65,0.65]"
    assert grounding_iou("[0.35, 0.35, 0.65, 0.65]", gold) == pytest.approx(1.0)
    assert grounding_iou("the box is (0.35,0.35,0.65,0.65)", gold) == pytest.approx(1.0)
    for malformed in ("", None, "[0.35,0.35,0.65]", "[0.65,0.35,0.35,0.65]", "center",
                      "[0.35,0.35,0.65,1.65]", "[.35,.35,.65"):
        assert grounding_iou(malformed, gold) == 0.0
    m = grounding_metrics(["[0.35,0.35,0.65,0.65]", "[0.40,0.40,0.70,0.70]", "[oops]", ""],
                          [gold] * 4)
    # IoU of the shifted box: 0.25^2 / (2 * 0.3^2 - 0.25^2) = 0.532 -> counted.
    assert m["accuracy"] == 0.5 and m["malformed"] == 2
    assert grounding_metrics(["[0.45,0.45,0.75,0.75]"], [gold])["accuracy"] == 0.0
