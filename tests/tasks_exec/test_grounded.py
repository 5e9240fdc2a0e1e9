"""The box-grounded editor: the cells and pixels a box covers, codes outside the box are the
input's (its constraint; the engine's own tests hold the constrained edit equal to the
unconstrained one where every cell is free), and every pixel outside the box is the input's
own, bit for bit, at the input's size."""

from __future__ import annotations

import numpy as np

from utamoe.tasks_exec import ExecContext, ExecRequest, SpanRouter, executors_from_config
from utamoe.tasks_exec.grounded import BoxEditor
from utamoe.tasks_exec.regions import box_cells, box_pixels, composite

BOX = (0.25, 0.30, 0.60, 0.75)


def test_cells_and_pixels_of_a_box():
    cells = box_cells([BOX], 4).view(4, 4)  # cell edges at 0, .25, .5, .75, 1
    assert cells.tolist() == [[False] * 4, [False, True, True, False], [False, True, True, False],
                              [False] * 4]
    assert box_cells([(0.0, 0.0, 1.0, 1.0)], 3).all() and not box_cells([], 3).any()
    px = box_pixels([BOX], 20, 40)  # columns 10..24, rows 6..15
    assert px.sum() == 14 * 9 and px[6, 10] and px[14, 23] and not px[15, 10] and not px[6, 24]
    a, b = np.zeros((20, 40, 3), np.uint8), np.full((10, 20, 3), 9, np.uint8)
    assert (composite(a, b, [BOX])[px] == 9).all() and (composite(a, b, [BOX])[~px] == 0).all()


def test_pixels_outside_the_box_are_unchanged_bit_for_bit(predictor):
    image = np.random.default_rng(3).integers(0, 255, (40, 56, 3), np.uint8)  # not 48x48
    router = SpanRouter(executors_from_config({"edit": "box_edit"}, ExecContext(predictor),
                                              defaults=False))
    answer = "Sure. <edit>make the circle blue<box>[0.25,0.30,0.60,0.75]</box></edit>"
    _, (out,) = router.run(answer, [image])
    assert out.ok, out.error
    (edited,) = out.result.images
    assert edited.shape == image.shape and edited.dtype == np.uint8
    outside = ~box_pixels([BOX], 40, 56)
    assert np.array_equal(edited[outside], image[outside])
    assert not np.array_equal(edited[~outside], image[~outside])  # the box was redrawn
    info = out.result.info
    assert info["grounded"] and info["regenerated_cells"] == int(box_cells([BOX], 6).sum())
    kept = ~box_cells([BOX], 6)
    assert all(c == i for c, i, k in zip(info["codes"], info["input_codes"], kept.tolist()) if k)


def test_without_a_box_it_is_the_whole_image_edit(predictor):
    image = np.random.default_rng(4).integers(0, 255, (48, 48, 3), np.uint8)
    out = BoxEditor(predictor)(ExecRequest("edit", "make the circle blue", images=(image,)))
    assert np.array_equal(out.images[0], predictor.edit(image, ["make the circle blue"])[0])
    assert out.info == {"grounded": False}
