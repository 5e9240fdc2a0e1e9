"""Scorers of UnifiedMLLM's tasks: answers that are task spans, executed results, dialogues.

    span metrics     task_accuracy: the answer's spans are well formed (no parse error) and
                     name the gold spans' tags in order; box_iou / box_acc50: IoU of each
                     gold box with the answer's box at the same place (0 when missing), and
                     the share of answers whose boxes all reach IoU 0.5; text_accuracy: the
                     span texts equal the gold ones (normalised)
    reason_edit      span metrics, and with a span router in the ScoreContext (utamoe eval
                     builds one from the model) the predicted span *executed* on the input
                     image: exec_psnr / exec_ssim against the target image (an answer that
                     does not execute counts as the unedited input), exec_ok (it ran);
                     gold_exec_*: the gold span executed, the executor's own ceiling
    reason_edit_shapes  the same plus exec_correct: the executed image parses (ShapesWorld's
                     scene parser) to exactly the target scene; ShapesWorld data only
    seg              span metrics and mask_iou: the mask of the predicted span (the router's
                     seg executor, else the built-in box segmenter) against the target mask
    layout_shapes    GenEval-style facets and correct_all of the generated image against the
                     layout's scene (ShapesWorld), plus PSNR / SSIM against the target
    dialog_turns     per assistant turn, with the gold history: a span turn is right when its
                     spans are (task_accuracy and every box IoU >= 0.5), a box answer when its
                     IoU >= 0.5, any other answer on exact match; turn_accuracy,
                     dialog_accuracy (every turn right), task_turn_accuracy, answer_turn_accuracy
                     and accuracy_<kind> when meta.kinds names each turn's kind

A dialogue's prediction is the list of its assistant turns' answers, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from utamoe.data.conversations import exchanges
from utamoe.eval import metrics
from utamoe.eval.scorers import similarity
from utamoe.tasks import ScoreContext
from utamoe.tasks_exec import registered_tags
from utamoe.tasks_exec.builtin import box_mask
from utamoe.text.boxes import parse_box
from utamoe.text.spans import parse_response
from utamoe.vision.processor import to_rgb


def _known_tags(ctx: ScoreContext) -> tuple[str, ...]:
    if ctx.span_router is not None:
        return ctx.span_router.tags
    return tuple(registered_tags())


def span_verdict(pred: str | None, gold: str, tags: Sequence[str]) -> dict[str, float]:
    """task_ok, box IoU (mean over the gold boxes), all_boxes_50 and text_ok of one answer."""
    g, p = parse_response(gold, tags), parse_response(pred or "", tags)
    task_ok = p.ok and [s.tag for s in p.spans] == [s.tag for s in g.spans] and bool(g.spans)
    ious = []
    for k, gs in enumerate(g.spans):
        ps = p.spans[k] if k < len(p.spans) else None
        for j, box in enumerate(gs.boxes):
            have = ps is not None and j < len(ps.boxes)
            ious.append(metrics.box_iou(ps.boxes[j], box) if have else 0.0)
    text_ok = task_ok and all(metrics.normalize_answer(a.text) == metrics.normalize_answer(b.text)
                              for a, b in zip(p.spans, g.spans))
    iou = float(np.mean(ious)) if ious else float(task_ok)
    return {"task_ok": float(task_ok), "iou": iou,
            "all_boxes_50": float(task_ok and all(v >= 0.5 for v in ious)), "text_ok": float(text_ok)}


def span_metrics(samples, preds, ctx: ScoreContext) -> dict[str, float]:
    tags = _known_tags(ctx)
    rows = [span_verdict(p, s.target or "", tags) for s, p in zip(samples, preds)]
    mean = (lambda k: float(np.mean([r[k] for r in rows]))) if rows else (lambda k: 0.0)
    return {"task_accuracy": mean("task_ok"), "box_iou": mean("iou"),
            "box_acc50": mean("all_boxes_50"), "text_accuracy": mean("text_ok"), "n": len(rows)}


def _executed(ctx: ScoreContext, answer: str | None, image, kind: str):
    """The first image (kind "images") or mask ("masks") the router made of `answer`, or None."""
    if ctx.span_router is None or not answer:
        return None
    _, outcomes = ctx.span_router.run(answer, images=[image])
    for o in outcomes:
        if o.ok and getattr(o.result, kind):
            return getattr(o.result, kind)[0]
    return None


def _exec_rows(samples, answers, ctx: ScoreContext, judge) -> list[dict[str, float]]:
    rows = []
    for s, answer in zip(samples, answers):
        out = _executed(ctx, answer, s.image, "images")
        row = {"ok": float(out is not None)}
        out = out if out is not None else s.image  # nothing done: the unedited input
        row.update(similarity(out, s.target_image))
        if judge is not None:
            row["correct"] = float(judge(out, s))
        rows.append(row)
    return rows


def reason_edit_scores(samples, preds, ctx: ScoreContext, judge=None) -> dict[str, float]:
    """Span metrics, and with a span router the predicted (and the gold) span executed: exec_ok,
    PSNR / SSIM against the target, and `exec_correct` when a `judge(image, sample) -> bool`
    (a benchmark's, e.g. ShapesWorld's scene check) says whether the result is right."""
    out = span_metrics(samples, preds, ctx)
    if ctx.span_router is None:
        return out
    for prefix, answers in (("exec", preds), ("gold_exec", [s.target for s in samples])):
        rows = _exec_rows(samples, answers, ctx, judge)
        for key in rows[0] if rows else ():
            name = {"ok": "ok", "psnr": "psnr", "ssim": "ssim", "correct": "correct"}[key]
            out[f"{prefix}_{name}"] = float(np.mean([r[key] for r in rows]))
    return out


def reason_edit_generic(samples, preds, ctx: ScoreContext) -> dict[str, float]:
    return reason_edit_scores(samples, preds, ctx)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _predicted_mask(ctx: ScoreContext, answer: str | None, image) -> np.ndarray | None:
    if ctx.span_router is not None and "seg" in ctx.span_router.tags:
        return _executed(ctx, answer, image, "masks")
    spans = [s for s in parse_response(answer or "", ["seg"]).spans if s.boxes]
    return box_mask(image, spans[0].boxes) if spans else None


def seg_generic(samples, preds, ctx: ScoreContext) -> dict[str, float]:
    out = span_metrics(samples, preds, ctx)
    ious = []
    for s, p in zip(samples, preds):
        if s.target_image is None:
            continue
        gold = to_rgb(s.target_image)[..., 0] > 127
        mask = _predicted_mask(ctx, p, s.image)
        ious.append(0.0 if mask is None or mask.shape != gold.shape else mask_iou(mask > 0, gold))
    if ious:
        out["mask_iou"] = float(np.mean(ious))
    return out


def turn_correct(pred: str | None, gold: str, tags: Sequence[str]) -> tuple[str, bool]:
    """(kind of gold answer: "task" / "box" / "text", whether `pred` gets it right)."""
    if parse_response(gold, tags).spans:
        v = span_verdict(pred, gold, tags)
        return "task", bool(v["all_boxes_50"])
    if gold.strip().startswith(("[", "(")) and parse_box(gold) is not None:
        return "box", metrics.grounding_iou(pred, gold) >= 0.5
    return "text", metrics.exact_match(pred, gold)


def dialog_turns(samples, preds, ctx: ScoreContext) -> dict[str, float]:
    tags = _known_tags(ctx)
    turns, dialogs, by_kind, by_meta = [], [], {}, {}
    for s, answers in zip(samples, preds):
        golds = [a.text for _, a in exchanges(s.turns or [])]
        answers = list(answers or [])
        kinds = list((s.meta or {}).get("kinds") or [])
        right = []
        for k, gold in enumerate(golds):
            kind, ok = turn_correct(answers[k] if k < len(answers) else None, gold, tags)
            right.append(ok)
            by_kind.setdefault(kind, []).append(ok)
            if k < len(kinds):
                by_meta.setdefault(str(kinds[k]), []).append(ok)
        turns += right
        dialogs.append(all(right) and bool(right))
    mean = lambda v: float(np.mean(v)) if v else 0.0  # noqa: E731
    out = {"turn_accuracy": mean(turns), "dialog_accuracy": mean(dialogs), "n": len(samples),
           "turns": len(turns), "task_turn_accuracy": mean(by_kind.get("task", [])),
           "answer_turn_accuracy": mean(by_kind.get("text", []) + by_kind.get("box", []))}
    out.update({f"accuracy_{k}": mean(v) for k, v in sorted(by_meta.items())})
    return out
