"""The scorers the built-in tasks declare (utamoe.tasks), one function per way of scoring.

Each takes (samples, predictions, ScoreContext) and returns a TaskScore (or a plain
metrics dict). They need nothing but the samples' targets, so they are right for any
dataset; a benchmark brings its own scorers for its data (utamoe.benchmarks; ShapesWorld's
read images and captions with its scene parser, utamoe.shapes.scorers).

    answer_match     exact match (normalised) + token F1; accuracy per meta.qtype
    yes_no           POPE accuracy, precision/recall/F1 of "yes", yes ratio
    box_iou          Acc@IoU>=0.5 and mean IoU of boxes written as text
    caption_generic  exact match, token F1, and BLEU-4 / CIDEr / ROUGE-L from pycocoevalcap
                     (the COCO caption toolkit; the `eval` extra) when it is installed
    free_form        free-form answers (the `instruct` task): exact match, token F1 and the COCO
                     toolkit's BLEU-4 / CIDEr / ROUGE-L over every answer, a conversation's
                     assistant turns each counted as one answer (given the gold history)
    image_similarity PSNR / SSIM against the target image (the prediction resized to it)
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from utamoe.data.conversations import exchanges
from utamoe.eval import metrics
from utamoe.tasks import ScoreContext
from utamoe.vision.processor import to_rgb

# The scorers here that read only the samples' texts: evaluation lets a batch's images go
# after predicting a task scored by one of them (utamoe.eval.run).
TEXT_ONLY = frozenset({"answer_match", "yes_no", "box_iou", "caption_generic", "free_form"})
PSNR_CAP = 100.0  # identical images have infinite PSNR; capped so that means stay finite


def _golds(samples) -> list[str]:
    return [s.target or "" for s in samples]


def answer_match(samples, preds, ctx: ScoreContext) -> dict[str, float]:
    out = metrics.vqa_accuracy(preds, _golds(samples))
    by_type: dict[str, list[bool]] = {}
    for s, p in zip(samples, preds):
        qtype = (s.meta or {}).get("qtype")
        if qtype:  # which kind of question fails decides the next experiment
            by_type.setdefault(str(qtype), []).append(metrics.exact_match(p, s.target or ""))
    out.update({f"accuracy_{q}": sum(v) / len(v) for q, v in sorted(by_type.items())})
    return out


def yes_no(samples, preds, ctx: ScoreContext) -> dict[str, float]:
    return metrics.pope_metrics(preds, _golds(samples))


def box_iou(samples, preds, ctx: ScoreContext) -> dict[str, float]:
    return metrics.grounding_metrics(preds, _golds(samples))


def caption_generic(samples, preds, ctx: ScoreContext) -> dict[str, float]:
    golds = _golds(samples)
    n = max(len(golds), 1)
    out = {"exact": sum(metrics.exact_match(p, g) for p, g in zip(preds, golds)) / n,
           "token_f1": sum(metrics.token_f1(p, g) for p, g in zip(preds, golds)) / n,
           "n": len(golds)}
    out.update(coco_caption_scores(preds, golds))
    return out


def free_form(samples, preds, ctx: ScoreContext) -> dict[str, float]:
    """Free-form answers: a plain record's prediction is its answer, a conversation's the list
    of its assistant answers (utamoe.eval.run); every answer is scored against its gold."""
    answers, golds = [], []
    for s, p in zip(samples, preds):
        if s.turns is None:
            answers.append(p if isinstance(p, str) else "")
            golds.append(s.target or "")
            continue
        got = list(p or []) if not isinstance(p, str) else [p]
        for k, (_, gold) in enumerate(exchanges(s.turns)):
            answers.append(got[k] if k < len(got) else "")
            golds.append(gold.text)
    n = max(len(golds), 1)
    out = {"exact": sum(metrics.exact_match(a, g) for a, g in zip(answers, golds)) / n,
           "token_f1": sum(metrics.token_f1(a, g) for a, g in zip(answers, golds)) / n,
           "n": len(samples), "answers": len(golds)}
    out.update(coco_caption_scores(answers, golds))
    return out


def coco_caption_scores(preds, golds) -> dict[str, float]:
    """BLEU-4, CIDEr and ROUGE-L of the COCO caption toolkit (one reference per sample), on
    lowercased text without punctuation (as the toolkit's PTB tokenizer leaves it; articles
    are kept: they are part of the n-grams); {} when pycocoevalcap is not installed.
    BLEU-4 needs 4-grams: on captions of three words or fewer it is near 0 by definition."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        return {}
    # The toolkit wants non-empty strings; an empty prediction scores 0 as a stray token.
    res = {str(i): [_coco_text(p)] for i, p in enumerate(preds)}
    gts = {str(i): [_coco_text(g)] for i, g in enumerate(golds)}
    if not res:
        return {}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its internals
        bleu, _ = Bleu(4).compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
        rouge, _ = Rouge().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider), "rouge_l": float(rouge)}


def _coco_text(text) -> str:
    return " ".join(metrics.PUNCT.sub(" ", (text or "").lower()).split()) or "<empty>"


def image_similarity(samples, preds, ctx: ScoreContext) -> dict[str, float]:
    rows = [similarity(p, s.target_image) for s, p in zip(samples, preds)
            if p is not None and s.target_image is not None]
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim")} if rows else {}
    return {**out, "n": len(samples), "missing": sum(p is None for p in preds)}


def similarity(image, target) -> dict[str, float]:
    """PSNR (dB, capped) and SSIM of an image against a target, at the target's size."""
    target = to_rgb(target)
    image = to_rgb(image, size=target.shape[:2])
    if np.array_equal(image, target):  # skimage divides by a zero error here
        return {"psnr": PSNR_CAP, "ssim": 1.0}
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = float(peak_signal_noise_ratio(target, image, data_range=255))
    side = min(target.shape[:2])  # SSIM's window is odd and fits the image (7 by default)
    win = min(7, side if side % 2 else side - 1)
    ssim = float(structural_similarity(target, image, channel_axis=2, data_range=255, win_size=win))
    return {"psnr": min(psnr, PSNR_CAP), "ssim": ssim}


