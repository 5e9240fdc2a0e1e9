"""`evaluate_model`, the eval writers and `utamoe eval` end to end (tiny model, tiny data)."""

import json

import numpy as np
import pytest

from tests.model.helpers import tiny_model
from utamoe.cli import main
from utamoe.data.formats import find_benchmark, load_split
from utamoe.eval.report import write_eval_outputs
from utamoe.eval.run import EvalSampling, evaluate_model
from utamoe.eval.scorers import PSNR_CAP
from utamoe.eval.scoring import evaluate
from utamoe.infer.predictor import Predictor
from utamoe.model.io import save_model_dir
from utamoe.shapes import ShapesWorldConfig, generate_dataset, write_dataset
from utamoe.shapes.benchmark import SHAPESWORLD
from utamoe.shapes.geneval import FACETS

WORLD = ShapesWorldConfig(sizes={"test": 3})
HEADLINE = ["vqa_accuracy", "pope_accuracy", "pope_f1", "caption_f1", "caption_exact", "grounding_acc50",
            "t2i_correct_all", *(f"t2i_{f}" for f in FACETS), "edit_correct_all", "edit_psnr",
            "edit_ssim"]
RATES = [k for k in HEADLINE if k != "edit_psnr"]


@pytest.fixture(scope="module")
def samples():
    return generate_dataset(WORLD)["test"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny random model and a ShapesWorld dataset (2 samples per task) on disk."""
    root = tmp_path_factory.mktemp("eval")
    model, tok, _ = tiny_model()
    save_model_dir(model, root / "run" / "model", tok)
    write_dataset(root / "data", ShapesWorldConfig(sizes={"test": 2, "val": 1}))
    return root


def oracle(task, batch, start):
    return [s.target if s.group == "und" else s.target_image for s in batch]


def wrong(task, batch, start):
    flip = {"yes": "no", "no": "yes"}
    blank = np.full((48, 48, 3), 20, np.uint8)  # the background: no object at all
    return [flip.get(s.target, "purple elephant [0.90,0.90,0.95,0.95]") if s.group == "und"
            else blank for s in batch]


def test_ground_truth_scores_one(samples):
    result = evaluate_model(None, samples, predict_fn=oracle, benchmark=SHAPESWORLD.on(WORLD),
                            progress=False)
    assert set(result.headline) == set(HEADLINE)
    assert all(result.headline[k] == 1.0 for k in RATES), result.headline
    assert result.headline["edit_psnr"] == PSNR_CAP
    assert result.counts == {t: 3 for t in WORLD.tasks}
    # The same numbers as the shared scorer gives for the same predictions.
    assert result.per_task == evaluate(result.samples, result.predictions, SHAPESWORLD.on(WORLD))
    assert all(v.correct_all for v in result.verdicts.values()) and len(result.verdicts) == 6


def test_wrong_answers_score_zero(samples, tmp_path):
    result = evaluate_model(None, samples, predict_fn=wrong, benchmark=SHAPESWORLD.on(WORLD),
                            progress=False)
    assert all(result.headline[k] == 0.0 for k in RATES if k != "edit_ssim"), result.headline
    assert result.headline["edit_psnr"] < 40 and result.headline["edit_ssim"] < 0.95
    assert result.per_task == evaluate(result.samples, result.predictions, SHAPESWORLD.on(WORLD))
    paths = write_eval_outputs(result, tmp_path)
    assert set(paths) == {"metrics", "report", "predictions", "samples"}
    lines = [json.loads(x) for x in paths["predictions"].read_text().splitlines()]
    assert len(lines) == 18 and lines[0]["prediction"] == "purple elephant [0.90,0.90,0.95,0.95]"
    assert [x["correct_all"] for x in lines if x["task"] == "t2i"] == [False] * 3


def test_batches_offsets_and_max_per_task(samples):
    calls = []

    def spy(task, batch, start):
        calls.append((task, len(batch), start))
        return oracle(task, batch, start)

    result = evaluate_model(None, samples, EvalSampling(seed=5), batch_size=2,
                            max_per_task=3, predict_fn=spy, benchmark=SHAPESWORLD.on(WORLD), progress=False)
    assert calls[:2] == [("caption", 2, 0), ("caption", 1, 2)] and len(calls) == 12
    assert result.sampling.batch_size == 2 and result.sampling.seed == 5
    one = evaluate_model(None, samples, max_per_task=1, predict_fn=oracle,
                         benchmark=SHAPESWORLD.on(WORLD), progress=False)
    assert sum(one.counts.values()) == 6
    with pytest.raises(ValueError, match="predictions for"):
        evaluate_model(None, samples, predict_fn=lambda t, b, s: [], progress=False)


def test_without_world_config_image_tasks_get_similarity_only(samples, tmp_path):
    result = evaluate_model(None, samples, predict_fn=oracle, progress=False)
    assert result.headline["vqa_accuracy"] == 1.0 and result.headline["edit_ssim"] == 1.0
    assert "t2i_correct_all" not in result.headline and "edit_correct_all" not in result.headline
    assert result.scorers["t2i"] == result.scorers["edit"] == "image_similarity"
    assert result.scorers["caption"] == "caption_generic"
    assert any("generic scorers only" in n for n in result.notes)
    paths = write_eval_outputs(result, tmp_path)
    assert "Scored by `image_similarity`" in paths["report"].read_text()
    assert "not scored" not in paths["predictions"].read_text()  # no verdicts invented


def test_real_model_is_reproducible(samples, saved):
    predictor = Predictor.load(saved / "run" / "model")
    model = predictor.model
    model.train()
    t2i = [s for s in samples if s.task == "t2i"][:2]
    runs = [evaluate_model(predictor, t2i, EvalSampling(seed=3), benchmark=SHAPESWORLD.on(WORLD),
                           progress=False) for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0].predictions, runs[1].predictions))
    assert runs[0].predictions[0].shape == (48, 48, 3)
    assert model.training  # evaluation switched to eval mode and back


def test_cli_eval_writes_all_outputs(saved, capsys):
    argv = ["eval", "--model", str(saved / "run" / "model"), "--data", str(saved / "data"),
            "--batch-size", "4", "--seed", "7", "--cfg-scale", "2.0", "--top-k", "8",
            "--max-new-tokens", "8"]
    assert main(argv) == 0
    out_dir = saved / "run" / "eval-test"  # the default: beside the model directory
    printed = capsys.readouterr().out
    assert "vqa_accuracy" in printed and str(out_dir / "metrics.json") in printed
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert set(HEADLINE) <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in RATES) and metrics["edit_psnr"] >= 0
    assert set(metrics["per_task"]) == set(WORLD.tasks) and metrics["split"] == "test"
    assert metrics["sampling"] | {"seed": 7, "cfg_scale": 2.0, "top_k": 8,
                                  "batch_size": 4} == metrics["sampling"]
    assert metrics["counts"] == {t: 2 for t in WORLD.tasks} and metrics["seconds"] > 0
    settings = metrics["settings"]
    assert settings["harness"] == "utamoe eval" and settings["seed"] == 7
    assert settings["cfg_scale"] == 2.0 and settings["max_new_tokens"] == 8
    assert settings["text_temperature"] == 0.0 and settings["prompt_rewriting"] == "off"
    assert settings["precision"] == {"device": "cpu", "dtype": "float32"}
    assert settings["prompt_templates"]["vqa"].startswith("<bos> <vqa> <img> <und_slot> x ")
    assert settings["prompt_templates"]["t2i"] == "<bos> <t2i> {prompt} <img>"
    import torch

    import utamoe

    assert settings["versions"]["torch"] == torch.__version__
    assert settings["versions"]["utamoe"] == utamoe.__version__
    report = (out_dir / "report.md").read_text()
    assert "## Sampling settings" in report and "--seed 7" in report and "cfg_scale | 2.0" in report
    from PIL import Image

    with Image.open(out_dir / "samples.png") as im:
        assert im.size[0] > 600 and im.size[1] > 300


def test_cli_eval_errors_are_clear(saved, tmp_path, capsys):
    model, data = str(saved / "run" / "model"), str(saved / "data")
    assert main(["eval", "--model", str(tmp_path / "nope"), "--data", data]) == 2
    assert "model directory" in capsys.readouterr().err
    assert main(["eval", "--model", model, "--data", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["eval", "--model", model, "--data", data, "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert "no split 'train'" in err and "test, val" in err


def test_world_config_of(saved, tmp_path):
    assert find_benchmark(saved / "data").config.sizes == {"test": 2, "val": 1}
    assert find_benchmark(tmp_path) is None
    assert len(load_split(saved / "data" / "test.jsonl")[0]) == 12


def test_images_are_read_a_batch_at_a_time_and_let_go_for_text_scorers(tmp_path):
    """A split given without its images (utamoe eval): each batch's images are read for it;
    a task scored from text alone keeps none after its batch, an image task keeps its samples'
    images for its scorer; the scores equal those of the split held in memory."""
    from tests.owndata import write_digits
    from utamoe.data.formats import with_images

    root = write_digits(tmp_path / "d", {"test": 6})
    split = root / "test.jsonl"
    bare, _ = load_split(split, load_images=False)
    full, _ = load_split(split)
    seen = []

    def predict(task, batch, start):
        seen.append((task, [s.image is not None or s.target_image is not None for s in batch]))
        return [s.target if s.target is not None else s.target_image for s in batch]

    lazy = evaluate_model(None, bare, predict_fn=predict, batch_size=4, progress=False,
                          load=lambda s: with_images(s, split))
    ref = evaluate_model(None, full, predict_fn=predict, batch_size=4, progress=False)
    assert all(all(flags) for _, flags in seen)  # every batch had its images
    assert lazy.per_task == ref.per_task and lazy.headline == ref.headline
    by = {s.id: s for s in lazy.samples}
    assert all(by[s.id].image is None for s in bare if s.task in ("caption", "vqa", "pope"))
    assert all(by[s.id].target_image is not None for s in bare if s.task == "t2i")


def test_tasks_the_model_never_trained_on_are_named(saved, tmp_path):
    """Issue 28 (also noticed): a UnifiedMLLM model was scored 0 on POPE, a task its mixtures
    omit, without a word. The model directory records the tasks its training saw."""
    model, tok, _ = tiny_model()
    save_model_dir(model, tmp_path / "m", tok, trained_tasks=["vqa", "caption"])
    predictor = Predictor.load(tmp_path / "m")
    assert predictor.trained_tasks == ["caption", "vqa"]
    samples = [s for s in load_split(saved / "data" / "test.jsonl")[0] if s.task in ("vqa", "pope")]
    result = evaluate_model(predictor, samples, progress=False, predict_fn=oracle)
    assert any("never trained on pope" in n for n in result.notes), result.notes
    assert not any("vqa" in n for n in result.notes if "never trained" in n)
    assert Predictor.load(saved / "run" / "model").trained_tasks is None  # not recorded: no note
