"""The built-in scorers on data that is not ShapesWorld: generic caption metrics (exact match,
token F1, the COCO toolkit's BLEU-4 / CIDEr / ROUGE-L), PSNR/SSIM at the target's size, and
the registry picking ShapesWorld's parser only for ShapesWorld data."""

from __future__ import annotations

import numpy as np
import pytest

from utamoe.data.formats import Sample
from utamoe.eval import scorers
from utamoe.eval.scoring import context_for, evaluate, score_by_task
from utamoe.shapes import ShapesWorldConfig
from utamoe.shapes.benchmark import SHAPESWORLD
from utamoe.tasks import ScoreContext


def _captions(targets):
    return [Sample(f"c{i}", "caption", "describe", image=np.zeros((8, 8, 3), np.uint8), target=t)
            for i, t in enumerate(targets)]


def test_generic_caption_scores_exact_copies_as_perfect():
    samples = _captions(["a handwritten two", "a handwritten seven"])
    out = scorers.caption_generic(samples, ["a handwritten two", "a handwritten one"], ScoreContext())
    assert out["exact"] == 0.5 and 0.5 < out["token_f1"] < 1.0
    pytest.importorskip("pycocoevalcap")
    long = _captions(["a handwritten two on a dark background", "a handwritten seven in the corner"])
    perfect = scorers.caption_generic(long, [s.target for s in long], ScoreContext())
    out = scorers.caption_generic(long, ["a handwritten two on a dark background",
                                         "a printed one in the middle"], ScoreContext())
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["rouge_l"] == 1.0
    assert perfect["cider"] > out["cider"] and perfect["bleu4"] > out["bleu4"]


def test_digit_captions_are_not_scored_by_the_scene_parser():
    """The bug this replaced: exact copies scored caption F1 0.0 by ShapesWorld's parser."""
    samples = _captions(["a handwritten two"] * 3)
    preds = {"caption": ["a handwritten two"] * 3}
    generic = score_by_task({"caption": samples}, preds, context_for(None))
    assert generic.scorers == {"caption": "caption_generic"}
    assert generic.per_task["caption"]["exact"] == 1.0 and "f1" not in generic.per_task["caption"]
    shapes = score_by_task({"caption": samples}, preds, context_for(SHAPESWORLD.on(ShapesWorldConfig())))
    assert shapes.scorers == {"caption": "caption_shapes"}


def test_image_similarity_resizes_the_prediction_to_the_target():
    target = np.zeros((30, 40, 3), np.uint8)
    target[:, 20:] = 200
    s = Sample("g", "t2i", "p", target_image=target)
    pred = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(target).resize((48, 48)))
    out = scorers.image_similarity([s, s], [pred, None], ScoreContext())
    assert out["psnr"] > 20 and out["ssim"] > 0.8 and out["missing"] == 1
    assert evaluate([s], [target])["t2i"]["psnr"] == 100.0  # identical: capped
