"""GenEval-style generation and edit scoring, and the per-task evaluation."""

import numpy as np
import pytest

from utamoe.eval.scorers import PSNR_CAP
from utamoe.eval.scoring import evaluate
from utamoe.shapes import (
    Scene,
    SceneObject,
    ShapesWorldConfig,
    generate_dataset,
    render,
)
from utamoe.shapes.benchmark import SHAPESWORLD
from utamoe.shapes.geneval import aggregate, score_edit, score_generation
from utamoe.shapes.text import t2i_prompt

CFG = ShapesWorldConfig()
RED = SceneObject("circle", "red", "large", 0, 0)
BLUE = SceneObject("square", "blue", "small", 2, 2)
WANT = Scene((RED, BLUE))
PROMPT = t2i_prompt(WANT)


def facets(image, spec=PROMPT):
    s = score_generation(spec, image, CFG)
    return {**s.facets, "correct_all": s.correct_all}


def test_correct_image_passes_everything():
    assert all(facets(render(WANT, CFG)).values())
    assert all(facets(render(WANT, CFG), spec=WANT).values())


@pytest.mark.parametrize("objects, failed", [
    ((SceneObject("circle", "green", "large", 0, 0), BLUE), {"color"}),
    ((RED,), {"object", "count", "color", "size", "position"}),
    ((RED, BLUE, SceneObject("triangle", "cyan", "small", 1, 1)), {"count"}),
    ((SceneObject("circle", "red", "large", 1, 0), BLUE), {"position"}),
    ((SceneObject("circle", "red", "small", 0, 0), BLUE), {"size"}),
    ((SceneObject("triangle", "red", "large", 0, 0), BLUE), {"object", "color", "size",
                                                              "position"}),
])
def test_wrong_images_fail_exactly_their_facets(objects, failed):
    got = facets(render(Scene(objects), CFG))
    assert got["correct_all"] is False
    assert {k for k, v in got.items() if not v} == failed | {"correct_all"}


def test_blank_noise_and_bad_prompt():
    assert not any(facets(np.full((48, 48, 3), 20, np.uint8)).values())
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    assert facets(noise)["correct_all"] is False
    bad = score_generation("draw something nice", render(WANT, CFG), CFG)
    assert bad.error and not bad.correct_all


def test_edit_scoring():
    src = render(WANT, CFG)
    instruction = "make the red circle yellow"
    target = render(Scene((SceneObject("circle", "yellow", "large", 0, 0), BLUE)), CFG)
    good = score_edit(instruction, target, source_image=src, target_image=target, config=CFG)
    assert good.correct_all and good.extra == {"psnr": PSNR_CAP, "ssim": pytest.approx(1.0)}
    lazy = score_edit(instruction, src, source_image=src, target_image=target, config=CFG)
    assert not lazy.correct_all and not lazy.facets["color"] and lazy.facets["count"]
    assert 5 < lazy.extra["psnr"] < 40 and lazy.extra["ssim"] < 1.0
    unreadable = score_edit("make the green circle red", target, source_scene=WANT, config=CFG)
    assert unreadable.error and "0 objects" in unreadable.error
    with pytest.raises(ValueError, match="source"):
        score_edit(instruction, target)
    means = aggregate([good, lazy])
    assert means["correct_all"] == 0.5 and means["n"] == 2


def test_evaluate_all_tasks_together():
    world = ShapesWorldConfig(sizes={"test": 6})
    samples = generate_dataset(world)["test"]
    perfect = [s.target if s.group == "und" else s.target_image for s in samples]
    report = evaluate(samples, perfect, SHAPESWORLD.on(world))
    assert set(report) == {"caption", "vqa", "pope", "grounding", "t2i", "edit"}
    assert report["vqa"]["accuracy"] == report["pope"]["f1"] == report["caption"]["f1"] == 1.0
    assert report["grounding"]["accuracy"] == 1.0
    assert report["t2i"]["correct_all"] == report["edit"]["correct_all"] == 1.0
    # Predictions by id; missing ones count as wrong, not as errors.
    partial = evaluate(samples, {samples[0].id: perfect[0]}, SHAPESWORLD.on(world))
    assert partial["caption"]["f1"] < 1.0 and partial["t2i"]["correct_all"] == 0.0


def test_vqa_accuracy_is_broken_down_by_question_type():
    samples = [s for s in generate_dataset(ShapesWorldConfig(sizes={"test": 30}))["test"] if s.task == "vqa"]
    answers = [s.target if s.meta["qtype"] != "count" else "many" for s in samples]
    vqa = evaluate(samples, answers)["vqa"]
    types = {s.meta["qtype"] for s in samples}
    assert {k for k in vqa if k.startswith("accuracy_")} == {f"accuracy_{t}" for t in types}
    assert vqa["accuracy_count"] == 0.0 and all(vqa[f"accuracy_{t}"] == 1.0 for t in types - {"count"})
