"""UnifiedMLLM's ShapesWorld tasks have exact ground truth: a reasoning edit names its target
only through the scene and its span boxes that target; a segmentation mask is the object's
pixels; a layout prompt gives every object's box; a dialogue's turns are about its one image.
The six original tasks are unchanged by the new ones."""

from __future__ import annotations

import numpy as np
import pytest

from utamoe.eval.metrics import box_iou
from utamoe.shapes import ShapesWorldConfig, apply_edit, make_sample, parse_edit, render
from utamoe.shapes.unified import holds, span_box
from utamoe.shapes.world import ALL_TASKS, SHAPES_TASKS, Scene, SceneObject, object_box
from utamoe.tasks_exec.builtin import box_mask
from utamoe.text.spans import parse_response

CFG = ShapesWorldConfig(seed=5, tasks=ALL_TASKS)
N = 40
KNOWN = ["t2i", "edit", "seg", "layout"]


def _samples(task):
    return [make_sample(CFG, "train", task, i) for i in range(N)]


def _reasoned_target(phrase: str, scene: Scene) -> SceneObject:
    """An independent reading of the reasoned phrases (not the generator's code path)."""
    objs = list(scene)
    if phrase.startswith("the only "):
        size = phrase.split()[2]
        (obj,) = [o for o in objs if o.size == size]
        return obj
    if phrase.startswith("the shape that is not "):
        (obj,) = [o for o in objs if phrase != f"the shape that is not the {o.color} {o.shape}"
                  and not phrase.endswith(f"{o.size} {o.color} {o.shape}")]
        return obj
    for rel in ("left of", "right of", "above", "below"):
        head = f"the shape {rel} "
        if phrase.startswith(head):
            words = phrase[len(head):].split()[1:]  # drop "the"
            anchors = [o for o in objs if words[-2:] == [o.color, o.shape]
                       and (len(words) == 2 or words[0] == o.size)]
            (anchor,) = anchors
            (obj,) = [o for o in objs if o != anchor and holds(o, rel, anchor)]
            return obj
    raise AssertionError(f"unreadable phrase {phrase!r}")


def _phrase(prompt: str) -> str:
    if prompt.startswith("remove "):
        return prompt[len("remove "):]
    if prompt.startswith("make "):
        return prompt[len("make "):].rsplit(" ", 1)[0]
    return prompt[len("move "):].rsplit(" to ", 1)[0]


def test_reasoning_edits_box_the_reasoned_target_and_render_the_edit():
    for s in _samples("reason_edit"):
        scene = Scene.from_json(s.meta["scene"])
        target = _reasoned_target(_phrase(s.prompt), scene)
        assert f"the {target.color} {target.shape}" not in _phrase(s.prompt)  # reasoning needed
        (span,) = parse_response(s.target, KNOWN).spans
        assert span.tag == "edit"
        assert box_iou(span.boxes[0], object_box(target, CFG)) > 0.8
        assert span.boxes[0] == span_box(target, CFG)
        op = parse_edit(span.text, scene, CFG)  # the span's text is an explicit edit
        assert op.obj == target
        edited = apply_edit(scene, op)
        assert edited == Scene.from_json(s.meta["target_scene"])
        assert np.array_equal(s.target_image, render(edited, CFG))
        # Outward rounding: the box covers every pixel the target object changes.
        changed = np.any(render(scene, CFG) != s.target_image, axis=2)
        from utamoe.tasks_exec.regions import box_pixels

        assert not (changed & ~box_pixels(span.boxes, CFG.image_size, CFG.image_size)).any()


def test_segmentation_masks_are_the_objects_pixels():
    for s in _samples("seg"):
        obj = SceneObject.from_json(s.meta["object"])
        scene = Scene.from_json(s.meta["scene"])
        mask = s.target_image[..., 0] > 127
        alone = render(Scene((obj,)), CFG)
        assert np.array_equal(mask, np.any(alone != np.array(CFG.background), axis=2))
        (span,) = parse_response(s.target, KNOWN).spans
        assert span.tag == "seg" and span.boxes[0] == span_box(obj, CFG)
        if not s.meta["reasoned"]:
            assert s.prompt == f"segment {span.text}"
        else:
            assert _reasoned_target(s.prompt[len("segment "):], scene) == obj
        got = box_mask(s.image, span.boxes) > 0  # the built-in segmenter on the gold span
        assert (got & mask).sum() / (got | mask).sum() > 0.8


def test_layout_prompts_give_every_objects_box():
    for s in _samples("layout"):
        scene = Scene.from_json(s.meta["scene"])
        assert np.array_equal(s.target_image, render(scene, CFG))
        phrases = s.prompt.split(" and ")
        assert len(phrases) == len(scene)
        for phrase, obj in zip(phrases, scene):
            from utamoe.text.boxes import parse_box

            assert phrase.startswith(f"a {obj.color} {obj.shape} [")
            assert box_iou(parse_box(phrase), object_box(obj, CFG)) > 0.9


def test_dialogues_mix_answers_and_task_calls_over_one_image():
    kinds = set()
    for s in _samples("dialog"):
        assert s.turns[0].image is not None and all(t.image is None for t in s.turns[1:])
        assert np.array_equal(s.turns[0].image, render(Scene.from_json(s.meta["scene"]), CFG))
        answers = [t.text for t in s.turns[1::2]]
        assert len(answers) == len(s.meta["kinds"])
        calls = [k for k in s.meta["kinds"] if k in ("reason_edit", "seg")]
        assert len(calls) == 1
        assert sum(bool(parse_response(a, KNOWN).spans) for a in answers) == 1
        kinds |= set(s.meta["kinds"])
    assert kinds >= {"vqa", "grounding", "caption", "reason_edit", "seg"}


@pytest.mark.parametrize("task", SHAPES_TASKS)
def test_original_tasks_are_unchanged_when_the_new_ones_are_generated(task):
    old = ShapesWorldConfig(seed=5)
    for i in range(3):
        a, b = make_sample(old, "train", task, i), make_sample(CFG, "train", task, i)
        assert (a.prompt, a.target, a.meta) == (b.prompt, b.target, b.meta)
        for x, y in ((a.image, b.image), (a.target_image, b.target_image)):
            assert (x is None and y is None) or np.array_equal(x, y)
