"""A user's own data trains and evaluates with the default recipe and nothing else: 28x28
grayscale PNGs and non-square RGB images (resized by the model's image processor), a VQ codec
trained on the dataset's own images, and generic scorers (not ShapesWorld's parser)."""

from __future__ import annotations

import json

import pytest

from utamoe.cli import main
from utamoe.demo import QUICK_OVERRIDES
from utamoe.model.io import load_model_dir

from ..owndata import write_digits


@pytest.mark.parametrize("size, mode", [((28, 28), "L"), ((40, 30), "RGB")],
                         ids=["gray28", "rgb40x30"])
def test_default_recipe_trains_and_evaluates_on_own_data(tmp_path, capsys, size, mode):
    data = write_digits(tmp_path / "digits", {"train": 16, "test": 4}, size=size, mode=mode)
    assert main(["data", "check", str(data)]) == 0
    run = tmp_path / "run"
    sets = [f"data.dir={data}", *QUICK_OVERRIDES]
    assert main(["train", "--config", "utamoe", "--out", str(run),
                 *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert "no benchmark's data with codec renders: training the VQ codec on the dataset's own train " \
        "images" in out
    model, _ = load_model_dir(run / "model")
    assert model.config.image_size == model.image_tokenizer.config.image_size == 48

    assert main(["eval", "--model", str(run / "model"), "--data", str(data), "--batch-size", "8",
                 "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # Generic scorers only: no scene-parser number (a confident 0.0 on digits) anywhere.
    assert "caption_f1" not in metrics and "t2i_correct_all" not in metrics
    assert {"caption_exact", "caption_token_f1", "vqa_accuracy", "pope_accuracy",
            "t2i_psnr"} <= set(metrics)
    assert metrics["per_task"]["caption"]["n"] == 4
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Scored by `caption_generic`" in report and "Scored by `image_similarity`" in report
