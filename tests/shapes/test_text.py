"""The canonical grammar: descriptions, references, edits and boxes round-trip."""

import numpy as np
import pytest

from utamoe.shapes import (
    EditOp,
    PromptError,
    Scene,
    SceneObject,
    ShapesWorldConfig,
    apply_edit,
    describe,
    parse_description,
    parse_edit,
    refer,
    resolve,
)
from utamoe.shapes.text import edit_instruction, t2i_prompt
from utamoe.shapes.world import sample_scene

CFG = ShapesWorldConfig()
RED = SceneObject("circle", "red", "small", 0, 0)
RED2 = SceneObject("circle", "red", "large", 1, 1)
RED3 = SceneObject("circle", "red", "large", 2, 2)
BLUE = SceneObject("square", "blue", "large", 0, 2)


def random_scenes(n=100, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, CFG, CFG.all_combos()) for _ in range(n)]


def test_description_round_trip():
    scene = Scene((BLUE, RED))
    text = describe(scene)
    assert text == "a small red circle at top left and a large blue square at top right"
    assert parse_description(text) == scene
    assert parse_description(t2i_prompt(scene)) == scene
    assert parse_description("Draw A small red circle at top left, a large blue square at "
                             "top right.") == scene
    for s in random_scenes():
        assert parse_description(t2i_prompt(s), CFG) == s


@pytest.mark.parametrize("bad", ["draw a red circle at top left", "draw", "",
                                 "draw a small red circle at top left and a small blue "
                                 "square at top left", "draw a small purple circle at top left"])
def test_bad_descriptions_raise(bad):
    with pytest.raises(PromptError):
        parse_description(bad)


def test_minimal_unique_references():
    scene = Scene((RED, RED2, BLUE))
    assert refer(scene, BLUE) == "the blue square"
    assert refer(scene, RED) == "the small red circle"
    assert refer(scene, RED, exclude="color") == "the small circle"
    assert refer(scene, BLUE, exclude="shape") == "the blue object"
    twins = Scene((RED2, RED3))
    assert refer(twins, RED2) == "the red circle at middle center"
    assert refer(twins, RED2, exclude="position") is None
    for s in random_scenes():
        for o in s:
            for exclude in (None, "color", "shape", "size"):
                assert resolve(refer(s, o, exclude), s) == o


def test_resolve_errors():
    scene = Scene((RED2, RED3))
    with pytest.raises(PromptError, match="2 objects"):
        resolve("the red circle", scene)
    with pytest.raises(PromptError, match="0 objects"):
        resolve("the green circle", scene)
    with pytest.raises(PromptError, match="cannot read"):
        resolve("the thing on the left", scene)


def test_edits_round_trip_and_apply():
    scene = Scene((RED, BLUE))
    ops = [EditOp("recolor", RED, color="green"), EditOp("remove", BLUE),
           EditOp("move", RED, cell=(2, 1)), EditOp("add", SceneObject("triangle", "cyan",
                                                                         "small", 1, 1))]
    texts = ["make the red circle green", "remove the blue square",
             "move the red circle to bottom center", "add a small cyan triangle at middle center"]
    for op, text in zip(ops, texts, strict=True):
        assert edit_instruction(scene, op) == text
        assert parse_edit(text, scene) == op
    assert apply_edit(scene, ops[0]).objects[0].color == "green"
    assert apply_edit(scene, ops[1]) == Scene((RED,))
    assert apply_edit(scene, ops[2]).at(2, 1).shape == "circle"
    assert len(apply_edit(scene, ops[3])) == 3
    with pytest.raises(ValueError, match="taken"):
        apply_edit(scene, EditOp("add", SceneObject("triangle", "cyan", "small", 0, 0)))
    with pytest.raises(PromptError):
        parse_edit("paint everything", scene)


