"""ShapesWorld's own scorers (registered by its benchmark, utamoe.shapes.benchmark): they read
captions and generated images with the scene parser, exactly, so they apply to ShapesWorld data
only (on other data a parser that finds no scene reports a confident zero; those tasks keep
their generic scorers, utamoe.eval.scorers).

    caption_shapes      object-level precision/recall/F1 (order-free) via the caption grammar
    t2i_shapes          GenEval-style facets + correct_all via the parser, per-image verdicts
    edit_shapes         the same for edits, plus PSNR / SSIM against the target
    reason_edit_shapes  the generic span and execution metrics, plus exec_correct: the executed
                        image parses to exactly the target scene
    layout_shapes       GenEval-style facets of the generated image against the layout's scene,
                        plus PSNR / SSIM against the target
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from utamoe.eval.metrics import check_lengths
from utamoe.eval.scorers import image_similarity
from utamoe.eval.span_scorers import reason_edit_scores
from utamoe.shapes.geneval import (
    aggregate,
    failed_score,
    scene_from_meta,
    score_edit,
    score_generation,
)
from utamoe.shapes.text import parse_located, split_description
from utamoe.shapes.world import ShapesWorldConfig
from utamoe.tasks import ScoreContext, TaskScore


def _golds(samples) -> list[str]:
    return [s.target or "" for s in samples]


def caption_objects(text: str | None, config: ShapesWorldConfig | None = None,
                    ) -> tuple[Counter, int]:
    """The objects a caption mentions, as a multiset of (shape, color, size, row, col),
    and how many of its phrases are not readable objects."""
    objs: Counter = Counter()
    unreadable = 0
    for phrase in split_description(text or ""):
        obj = parse_located(phrase, config)
        if obj is None:
            unreadable += 1
        else:
            objs[obj.key()] += 1
    return objs, unreadable


def caption_prf(pred: str | None, gold: str, config: ShapesWorldConfig | None = None,
                ) -> dict[str, float]:
    """Order-insensitive object-level counts for one caption: an object is right when all
    its attributes and its position are; unreadable phrases are false positives."""
    p, junk = caption_objects(pred, config)
    g, _ = caption_objects(gold, config)
    tp = sum((p & g).values())
    fp = sum(p.values()) - tp + junk
    fn = sum(g.values()) - tp
    return {"tp": tp, "fp": fp, "fn": fn, **_prf(tp, fp, fn)}


def caption_metrics(preds: Sequence[str | None], golds: Sequence[str],
                    config: ShapesWorldConfig | None = None) -> dict[str, float]:
    """Micro-averaged object precision/recall/F1 over a set, plus the exact-caption rate."""
    check_lengths(preds, golds)
    tp = fp = fn = exact = 0
    for p, g in zip(preds, golds, strict=True):
        r = caption_prf(p, g, config)
        tp, fp, fn = tp + r["tp"], fp + r["fp"], fn + r["fn"]
        exact += r["fp"] == 0 and r["fn"] == 0
    return {**_prf(tp, fp, fn), "exact": exact / max(len(golds), 1), "n": len(golds)}


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else float(fn == 0)
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def caption_shapes(samples, preds, ctx: ScoreContext) -> dict[str, float]:
    return caption_metrics(preds, _golds(samples), ctx.benchmark_config)


def _parser_scores(samples, preds, ctx: ScoreContext, one) -> TaskScore:
    verdicts = {s.id: (one(s, p, ctx.benchmark_config) if p is not None else failed_score("no image generated"))
                for s, p in zip(samples, preds)}
    return TaskScore(aggregate(verdicts[s.id] for s in samples), verdicts)


def _t2i_verdict(s, image, world):
    return score_generation(scene_from_meta(s.meta) or s.prompt, image, world)


def _edit_verdict(s, image, world):
    return score_edit(s.prompt, image, source_image=s.image, source_scene=scene_from_meta(s.meta),
                      target_image=s.target_image, config=world)


def t2i_shapes(samples, preds, ctx: ScoreContext) -> TaskScore:
    return _parser_scores(samples, preds, ctx, _t2i_verdict)


def edit_shapes(samples, preds, ctx: ScoreContext) -> TaskScore:
    return _parser_scores(samples, preds, ctx, _edit_verdict)


def _scene_matches(image, sample, world) -> bool:
    target = scene_from_meta(sample.meta, "target_scene")
    return target is not None and score_generation(target, image, world).correct_all


def reason_edit_shapes(samples, preds, ctx: ScoreContext) -> dict[str, float]:
    world = ctx.benchmark_config
    return reason_edit_scores(samples, preds, ctx, lambda image, s: _scene_matches(image, s, world))


def layout_shapes(samples, preds, ctx: ScoreContext) -> TaskScore:
    score = t2i_shapes(samples, preds, ctx)
    sim = image_similarity(samples, preds, ctx)
    score.metrics.update({k: sim[k] for k in ("psnr", "ssim") if k in sim})
    return score
