"""ShapesWorld task generation: deterministic, consistent with the rendered scene (checked
through the parser, not the generator's own bookkeeping), and the held-out split really
holds its combinations out."""

import re
from collections import Counter

import numpy as np
import pytest

from utamoe.eval.metrics import box_iou
from utamoe.shapes import (
    ShapesWorldConfig,
    generate_dataset,
    make_sample,
    object_box,
    parse_description,
    parse_edit,
    parse_image,
    resolve,
)
from utamoe.shapes.questions import extra_questions
from utamoe.shapes.text import apply_edit, describe
from utamoe.shapes.world import COLS, ROWS, SHAPES_TASKS
from utamoe.tasks import group_of
from utamoe.text.boxes import parse_box

SIZES = {"train": 60, "val": 10, "test": 10, "heldout": 30}
CFG = ShapesWorldConfig(seed=7, sizes=SIZES)


@pytest.fixture(scope="module")
def data():
    return generate_dataset(CFG)


def test_generation_is_deterministic_and_stable(data):
    again = generate_dataset(CFG)
    for split, samples in data.items():
        for a, b in zip(samples, again[split], strict=True):
            assert (a.id, a.prompt, a.target, a.meta) == (b.id, b.prompt, b.target, b.meta)
            for x, y in ((a.image, b.image), (a.target_image, b.target_image)):
                assert (x is None and y is None) or np.array_equal(x, y)
    # A sample does not depend on how many others are generated.
    s = data["train"][5]
    bigger = ShapesWorldConfig(seed=7, sizes={"train": 500})
    assert make_sample(bigger, "train", s.task, 5).prompt == s.prompt
    other_seed = generate_dataset(CFG.replace(seed=8, sizes={"train": 20}))["train"]
    assert [x.prompt for x in other_seed] != [x.prompt for x in data["train"][:20]]


def test_counts_ids_and_groups(data):
    for split, samples in data.items():
        assert Counter(s.task for s in samples) == {t: SIZES[split] for t in SHAPES_TASKS}
        assert len({s.id for s in samples}) == len(samples)
        for s in samples:
            assert s.group == group_of(s.task)
            assert (s.target is None) == (s.group == "gen")


def _answer(question: str, scene) -> str:
    """An independent VQA answerer over a parsed scene."""
    q = question.rstrip("?")
    if m := re.match(r"what (color|shape|size) is (.+)", q):
        return str(getattr(resolve(m.group(2), scene), m.group(1)))
    if m := re.match(r"where is (.+)", q):
        return resolve(m.group(1), scene).position
    if m := re.match(r"how many (?:(\w+) )?(\w+?)s are there", q):
        color, noun = m.groups()
        return str(sum((color is None or o.color == color) and noun in ("object", o.shape)
                       for o in scene))
    m = re.match(r"is (the .+?) (left of|right of|above|below) (the .+)", q)
    a, b = resolve(m.group(1), scene), resolve(m.group(3), scene)
    truth = {"left of": a.col < b.col, "right of": a.col > b.col, "above": a.row < b.row,
             "below": a.row > b.row}[m.group(2)]
    return "yes" if truth else "no"


def test_relation_steps_ask_both_positions_then_the_relation(data):
    # the training-only scaffold: "where is A?", "where is B?", "is A <rel> B?", every answer
    # right for the rendered image (the independent answerer over the parsed scene)
    vqa = [s for s in data["train"] if s.task == "vqa" and len(s.meta["scene"]) >= 2]
    rng = np.random.default_rng(0)
    for s in vqa:
        pairs = extra_questions(s, CFG, rng, 2, {"relation_steps": 1})
        assert len(pairs) == 6  # two scaffolds, three pairs each, counted as two questions
        seen = parse_image(s.image, CFG)
        for (qa, _), (qb, _), (qr, _) in zip(pairs[0::3], pairs[1::3], pairs[2::3]):
            a, _, b = re.fullmatch(r"is (the .+?) (left of|right of|above|below) (the .+)\?",
                                   qr).groups()
            assert (qa, qb) == (f"where is {a}?", f"where is {b}?")
        assert all(answer == _answer(q, seen) for q, answer in pairs), pairs


def _two_object_questions(data, kind: str):
    """(question, answer, parsed scene) of two extra questions of `kind` about every training
    VQA image with two objects or more."""
    rng = np.random.default_rng(0)
    for s in [s for s in data["train"] if s.task == "vqa" and len(s.meta["scene"]) >= 2]:
        pairs = extra_questions(s, CFG, rng, 2, {kind: 1})
        assert len(pairs) == 2
        seen = parse_image(s.image, CFG)
        for question, answer in pairs:
            yield question, answer, seen


def test_relation_where_names_every_relation_that_holds(data):
    # the training-only "where is A relative to B?": its answer lists exactly the relations
    # the independent answerer says yes to, columns first ("left of, above")
    answers = set()
    for question, answer, seen in _two_object_questions(data, "relation_where"):
        a, b = re.fullmatch(r"where is (the .+?) relative to (the .+)\?", question).groups()
        holds = [r for r in ("left of", "right of", "above", "below")
                 if _answer(f"is {a} {r} {b}?", seen) == "yes"]
        assert answer == ", ".join(holds), (question, answer)
        answers.add(answer)
    assert {"left of", "above", "right of, below"} <= answers  # one or two relations


def test_where_both_answers_both_positions_in_the_order_asked(data):
    # the training-only "where are A and B?": A's position, "and", B's, right for the image
    for question, answer, seen in _two_object_questions(data, "where_both"):
        a, b = re.fullmatch(r"where are (the .+?) and (the .+)\?", question).groups()
        assert a != b
        assert answer == f"{_answer(f'where is {a}?', seen)} and {_answer(f'where is {b}?', seen)}"


def test_text_scene_sample_writes_the_scene_and_blanks_the_image(data):
    from utamoe.shapes.questions import text_scene_sample

    for s in [x for x in data["train"] if x.task in ("vqa", "pope")][:20]:
        text = text_scene_sample(s, CFG)
        scene, question = text.prompt.split(". ", 1)
        assert question == s.prompt and text.target == s.target
        assert scene == describe(parse_image(s.image, CFG))  # the scene the image shows
        assert len(parse_image(text.image, CFG)) == 0  # and the image shows nothing
    assert text_scene_sample(next(x for x in data["train"] if x.task == "caption"), CFG) is None


def test_targets_agree_with_the_parsed_images(data):
    for samples in data.values():
        for s in samples:
            seen = parse_image(s.image, CFG) if s.image is not None else None
            if s.task == "caption":
                assert s.target == describe(seen)
            elif s.task == "vqa":
                assert s.target == _answer(s.prompt, seen), s.prompt
            elif s.task == "pope":
                m = re.match(r"is there a (\w+) (\w+) in the image\?", s.prompt)
                present = any((o.color, o.shape) == m.groups() for o in seen)
                assert s.target == ("yes" if present else "no")
            elif s.task == "grounding":
                obj = resolve(s.prompt.removeprefix("locate "), seen)
                assert box_iou(parse_box(s.target), obj.box) > 0.8
                # Boxes are written with 2 decimals: IoU ~0.92 for a small object.
                assert box_iou(parse_box(s.target), object_box(obj, CFG)) > 0.9
            elif s.task == "t2i":
                assert parse_image(s.target_image, CFG) == parse_description(s.prompt, CFG)
            else:
                expected = apply_edit(seen, parse_edit(s.prompt, seen, CFG))
                assert parse_image(s.target_image, CFG) == expected


def test_heldout_pairs_are_held_out(data):
    held = set(CFG.heldout)
    for split in ("train", "val", "test"):
        for s in data[split]:
            for img in (s.image, s.target_image):
                if img is not None:
                    assert not parse_image(img, CFG).combos() & held, s.id
            text = f"{s.prompt} {s.target or ''}"
            assert not any(f"{c} {sh}" in text for c, sh in held), s.id
            # "make the red circle blue": the new colour with the shape is a pair too.
            if m := re.match(r"make the .*?(\w+) (\w+) (\w+)$", s.prompt):
                assert (m.group(3), m.group(2)) not in held
    for s in data["heldout"]:
        img = s.image if s.image is not None else s.target_image
        assert parse_image(img, CFG).combos() & held, s.id


def test_task_balance(data):
    pope = [s.target for s in data["train"] if s.task == "pope"]
    assert pope.count("yes") == pope.count("no")
    vqa = [s for s in data["train"] if s.task == "vqa"]
    assert len({s.meta["qtype"] for s in vqa}) >= 5
    edits = Counter(s.meta["edit"] for s in data["train"] if s.task == "edit")
    assert set(edits) == {"recolor", "remove", "move", "add"}
    words = {w.rstrip("?") for s in data["train"] for w in f"{s.prompt} {s.target or ''}".split()
             if not w.startswith("[")}
    # A small closed vocabulary (the grammar's ~57 words): no stray words.
    assert len(words) <= 60, sorted(words)
    assert set(ROWS) | set(COLS) <= words
