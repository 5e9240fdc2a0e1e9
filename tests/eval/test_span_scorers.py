"""Scorers of UnifiedMLLM's tasks: gold answers score 1, wrong ones 0, executed edits are
compared with their targets, dialogues are scored turn by turn."""

from __future__ import annotations

import numpy as np

from utamoe.eval.scorers import PSNR_CAP
from utamoe.eval.span_scorers import dialog_turns, seg_generic, span_verdict
from utamoe.shapes import ShapesWorldConfig, make_sample
from utamoe.shapes.scorers import reason_edit_shapes
from utamoe.shapes.world import ALL_TASKS
from utamoe.tasks import ScoreContext
from utamoe.tasks_exec import ExecResult, SpanRouter

WORLD = ShapesWorldConfig(seed=2, tasks=ALL_TASKS)
CTX = ScoreContext(benchmark="shapesworld", benchmark_config=WORLD)
KNOWN = ["t2i", "edit", "seg", "layout"]


def _samples(task, n=6):
    return [make_sample(WORLD, "test", task, i) for i in range(n)]


def test_span_verdicts():
    gold = "<seg>the red circle<box>[0.10,0.10,0.30,0.30]</box></seg>"
    assert span_verdict(gold, gold, KNOWN) == {"task_ok": 1.0, "iou": 1.0, "all_boxes_50": 1.0,
                                               "text_ok": 1.0}
    wrong_task = span_verdict(gold.replace("seg>", "edit>"), gold, KNOWN)
    assert wrong_task["task_ok"] == 0.0 and wrong_task["all_boxes_50"] == 0.0
    unclosed = span_verdict(gold[:-6], gold, KNOWN)
    assert unclosed["task_ok"] == 0.0 and unclosed["iou"] == 0.0
    far = span_verdict("<seg>the red circle<box>[0.60,0.60,0.90,0.90]</box></seg>", gold, KNOWN)
    assert far["task_ok"] == 1.0 and far["iou"] == 0.0 and far["all_boxes_50"] == 0.0


class Oracle:
    """A stand-in edit executor that draws the sample's target for the right span only."""

    name, tag = "oracle", "edit"

    def __init__(self, samples):
        self.by_span = {s.target: s.target_image for s in samples}

    def __call__(self, request):
        for text, image in self.by_span.items():
            if request.text in text and request.boxes:
                return ExecResult(images=[image])
        return ExecResult(images=[np.asarray(request.image).copy()])


def test_reasoning_edits_are_executed_and_compared_with_the_target():
    samples = _samples("reason_edit")
    ctx = ScoreContext("shapesworld", WORLD, SpanRouter({"edit": Oracle(samples)}))
    good = reason_edit_shapes(samples, [s.target for s in samples], ctx)
    assert good["task_accuracy"] == good["box_acc50"] == good["exec_correct"] == 1.0
    assert good["exec_psnr"] == PSNR_CAP and good["gold_exec_correct"] == 1.0
    bad = reason_edit_shapes(samples, ["I cannot"] * len(samples), ctx)
    assert bad["task_accuracy"] == bad["exec_ok"] == bad["exec_correct"] == 0.0
    assert bad["exec_psnr"] < PSNR_CAP  # nothing done: scored as the unedited input
    assert "exec_psnr" not in reason_edit_shapes(samples, [s.target for s in samples], CTX)


def test_segmentation_masks_from_the_predicted_box():
    samples = _samples("seg")
    good = seg_generic(samples, [s.target for s in samples], CTX)
    assert good["task_accuracy"] == 1.0 and good["mask_iou"] > 0.8
    bad = seg_generic(samples, ["<seg>x<box>[0.00,0.00,0.01,0.01]</box></seg>"] * 6, CTX)
    assert bad["task_accuracy"] == 1.0 and bad["box_acc50"] == 0.0 and bad["mask_iou"] < 0.05


def test_dialogues_are_scored_turn_by_turn():
    samples = _samples("dialog")
    gold = [[t.text for t in s.turns[1::2]] for s in samples]
    out = dialog_turns(samples, gold, CTX)
    assert out["turn_accuracy"] == out["dialog_accuracy"] == out["task_turn_accuracy"] == 1.0
    first_wrong = [["nonsense", *g[1:]] for g in gold]
    out = dialog_turns(samples, first_wrong, CTX)
    n_turns = sum(len(g) for g in gold)
    assert out["turn_accuracy"] == (n_turns - len(gold)) / n_turns and out["dialog_accuracy"] == 0.0
    assert dialog_turns(samples, [[] for _ in samples], CTX)["turn_accuracy"] == 0.0
