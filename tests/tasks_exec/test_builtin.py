"""Built-in executors: the model's t2i / layout / edit equal the predictor's own calls; box
segmentation masks a drawn shape inside its box and nothing else; masks write as PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from utamoe.infer.sampling import SamplingConfig
from utamoe.tasks_exec import ExecRequest, ExecutorError, SpanRouter
from utamoe.tasks_exec.builtin import (
    BoxSegmenter,
    ModelEdit,
    ModelLayout,
    ModelT2I,
    background_colour,
    box_mask,
    write_mask_png,
)
from utamoe.tasks_exec.executors import sampling_config


def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A white 48x64 image with a red circle (left) and a blue square (right), and each
    shape's own pixels."""
    img = Image.new("RGB", (64, 48), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((6, 6, 26, 26), fill=(220, 30, 30))
    circle = np.asarray(img).copy()
    draw.rectangle((40, 34, 56, 46), fill=(30, 30, 220))
    arr = np.asarray(img).copy()
    circle_px = (circle != 255).any(axis=2)
    square_px = (arr != 255).any(axis=2) & ~circle_px
    return arr, circle_px, square_px


def test_segmentation_from_a_box_masks_the_shape_in_it():
    img, circle, square = scene()
    assert background_colour(img) == (255, 255, 255)
    router = SpanRouter({"seg": BoxSegmenter()})
    # the box (rows 2..28, columns 3..57) holds the whole circle and the square's columns,
    # not its rows
    _, (out,) = router.run("<seg>the red circle<box>[0.05,0.05,0.90,0.60]</box></seg>", [img])
    (mask,) = out.result.masks
    assert mask.dtype == np.uint8 and mask.shape == (48, 64) and set(np.unique(mask)) == {0, 255}
    assert np.array_equal(mask > 0, circle)
    assert not (mask > 0)[square].any() and out.result.info["pixels"] == int(circle.sum())


def test_the_box_limits_the_mask():
    img, circle, _ = scene()
    half = box_mask(img, [(0.0, 0.0, 16 / 64, 1.0)])  # the circle's left part only
    assert (half > 0).sum() == circle[:, :16].sum() > 0 and not (half[:, 16:] > 0).any()


def test_masks_write_as_png(tmp_path):
    img, circle, _ = scene()
    mask = box_mask(img, [(0, 0, 1, 1)])
    path = write_mask_png(mask, tmp_path / "sub" / "mask.png")
    assert np.array_equal(np.asarray(Image.open(path)), mask)
    with pytest.raises(ValueError, match="HxW uint8"):
        write_mask_png(mask.astype(bool), tmp_path / "bad.png")


def test_model_executors_are_the_predictors_calls(predictor):
    cfg = SamplingConfig(temperature=1.0, seed=2)
    t2i = ModelT2I(predictor, cfg)(ExecRequest("t2i", "a red circle at the top left"))
    assert np.array_equal(t2i.images[0], predictor.generate(["a red circle at the top left"], cfg)[0])
    img = np.random.default_rng(0).integers(0, 255, (48, 48, 3), np.uint8)
    edit = ModelEdit(predictor, cfg)(ExecRequest("edit", "make the circle blue", images=(img,)))
    assert np.array_equal(edit.images[0], predictor.edit(img, ["make the circle blue"], cfg)[0])
    with pytest.raises(ValueError, match="needs an image"):
        ModelEdit(predictor)(ExecRequest("edit", "make it blue"))


def test_a_layout_prompt_writes_each_box_after_its_phrase(predictor):
    router = SpanRouter({"layout": ModelLayout(predictor)})
    _, (out,) = router.run("<layout>a red circle<box>[0.1,0.1,0.3,0.3]</box> and a blue square"
                           "<box>[0.5,0.5,0.9,0.9]</box></layout>")
    prompt = "a red circle [0.10,0.10,0.30,0.30] and a blue square [0.50,0.50,0.90,0.90]"
    assert out.result.info["prompt"] == prompt
    assert np.array_equal(out.result.images[0], predictor.generate([prompt])[0])


def test_sampling_options_are_checked():
    assert sampling_config({"temperature": 0.5}, "x").temperature == 0.5
    with pytest.raises(ExecutorError, match=r"x\.sampling: unknown keys \['temprature'\]"):
        sampling_config({"temprature": 0.5}, "x")
