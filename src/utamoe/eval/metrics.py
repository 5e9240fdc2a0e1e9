"""Text-answer metrics for the understanding tasks: normalisation, exact match, token F1,
POPE accuracy/F1 and grounding IoU (boxes in utamoe.text.boxes' grammar).

All scorers are total functions: an empty, wordy or malformed prediction is scored
(as wrong, usually), never raised on, because a model under evaluation produces
all of these. Answers are normalised first (case, spaces, punctuation, articles,
number words, British spellings) so that "The Red." equals "red".
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from utamoe.text.boxes import parse_box

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])}
SYNONYMS = {"colour": "color", "centre": "center", "grey": "gray"}
PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str | None) -> str:
    """Lowercase, punctuation -> space, drop articles, number words -> digits, one space."""
    tokens = PUNCT.sub(" ", (text or "").lower()).split()
    out = []
    for t in tokens:
        if t in ARTICLES:
            continue
        out.append(NUMBER_WORDS.get(t, SYNONYMS.get(t, t)))
    return " ".join(out)


def exact_match(pred: str | None, gold: str) -> bool:
    """Normalised equality; an empty prediction never matches (even an empty gold)."""
    p = normalize_answer(pred)
    return bool(p) and p == normalize_answer(gold)


def token_f1(pred: str | None, gold: str) -> float:
    """SQuAD-style bag-of-tokens F1 of the normalised answers (partial credit)."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def vqa_accuracy(preds: Sequence[str | None], golds: Sequence[str]) -> dict[str, float]:
    check_lengths(preds, golds)
    n = max(len(golds), 1)
    return {"accuracy": sum(exact_match(p, g) for p, g in zip(preds, golds, strict=True)) / n,
            "token_f1": sum(token_f1(p, g) for p, g in zip(preds, golds, strict=True)) / n,
            "n": len(golds)}


def yes_no(text: str | None) -> str | None:
    """'yes' or 'no' when the normalised answer starts with one, else None (invalid)."""
    tokens = normalize_answer(text).split()
    return tokens[0] if tokens and tokens[0] in ("yes", "no") else None


def pope_metrics(preds: Sequence[str | None], golds: Sequence[str]) -> dict[str, float]:
    """POPE: accuracy, and precision/recall/F1 of 'yes' (the positive class). An invalid
    answer (neither yes nor no) is wrong and never counts as a positive prediction."""
    check_lengths(preds, golds)
    tp = fp = fn = correct = invalid = yes = 0
    for p, g in zip(preds, golds, strict=True):
        answer, truth = yes_no(p), yes_no(g)
        invalid += answer is None
        yes += answer == "yes"
        correct += answer is not None and answer == truth
        tp += answer == "yes" and truth == "yes"
        fp += answer == "yes" and truth != "yes"
        fn += answer != "yes" and truth == "yes"
    n = max(len(golds), 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": correct / n, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": yes / n, "invalid": invalid, "n": len(golds)}


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 for degenerate ones."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def grounding_iou(pred: str | None, gold: str | Sequence[float]) -> float:
    """IoU of a predicted box written as text with the gold box; 0 if malformed."""
    gbox = parse_box(gold) if isinstance(gold, str) else tuple(gold)
    pbox = parse_box(pred or "")
    if pbox is None or gbox is None:
        return 0.0
    return box_iou(pbox, gbox)


def grounding_metrics(preds: Sequence[str | None], golds: Sequence[str],
                      threshold: float = 0.5) -> dict[str, float]:
    """Acc@IoU>=threshold, mean IoU, and how many predictions were not boxes."""
    check_lengths(preds, golds)
    ious = [grounding_iou(p, g) for p, g in zip(preds, golds, strict=True)]
    n = max(len(golds), 1)
    return {"accuracy": sum(i >= threshold for i in ious) / n, "mean_iou": sum(ious) / n,
            "malformed": sum(parse_box(p or "") is None for p in preds), "n": len(golds)}


def check_lengths(preds: Sequence, golds: Sequence) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} references; pass one "
                         "prediction per sample (None or '' for a missing one)")
