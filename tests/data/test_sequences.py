"""Samples -> sequences: each registered layout, labels only on the target, images processed
to the model's size, text-only answer tasks, and a clear error for a tokenizer without the
task's marker."""

from __future__ import annotations

import numpy as np
import pytest

from utamoe.data.conversations import Turn
from utamoe.data.formats import Sample
from utamoe.data.sequences import IGNORE, Encoder, collate
from utamoe.tasks import Task, register_task, unregister_task
from utamoe.text.tokenizer import SpecialIds, train_text_tokenizer
from utamoe.vision.processor import ImageProcessor

TEXT = ["what color is it ?", "red", "a red circle", "make it blue", "a scene"]


@pytest.fixture
def encoder():
    tok = train_text_tokenizer(TEXT * 5, vocab_size=280)
    return Encoder(tok, SpecialIds.of(tok), und_tokens=4, image_codes=lambda img: [1, 2, 3],
                   process=ImageProcessor(16))


def test_answer_layout_processes_the_image_and_labels_only_the_answer(encoder):
    sp = encoder.special
    img = np.zeros((30, 20, 3), np.uint8)  # any size: processed to 16x16
    seq = encoder.sample(Sample("a", "vqa", "what color is it ?", image=img, target="red"))
    assert seq.image.shape == (16, 16, 3)
    assert seq.input_ids[:3] == [sp.bos, sp.task("vqa"), sp.image_start]
    assert seq.input_ids.count(sp.und_slot) == 4
    text, code = seq.labels()
    answer = encoder.words("red") + [sp.eos]
    assert [t for t in text if t != IGNORE] == answer and set(code) == {IGNORE}


def test_generate_and_edit_layouts_put_the_loss_on_codes(encoder):
    sp = encoder.special
    t2i = encoder.sample(Sample("g", "t2i", "a red circle", target_image=np.zeros((8, 8, 3), np.uint8)))
    assert t2i.input_ids[-4:] == [sp.image_start, sp.code_slot, sp.code_slot, sp.code_slot]
    edit = encoder.sample(Sample("e", "edit", "make it blue", image=np.zeros((8, 8, 3), np.uint8),
                                 target_image=np.zeros((8, 8, 3), np.uint8)))
    assert edit.input_ids.count(sp.code_slot) == 6 and edit.code_ids.count(1) == 2
    batch = collate([t2i, edit], sp.pad)
    assert batch.group_ids.tolist() == [1, 1] and batch.tasks == ["t2i", "edit"]
    assert int((batch.code_labels != IGNORE).sum()) == 6  # only the target codes


def test_text_only_answer_task_has_no_image_block():
    register_task(Task("scene_qa", "und", "answer", scorer=lambda s, p, c: {}, needs_image=False))
    try:
        tok = train_text_tokenizer(TEXT * 5, vocab_size=280)
        enc = Encoder(tok, SpecialIds.of(tok), 4, lambda img: [])
        seq = enc.sample(Sample("t", "scene_qa", "a scene", target="red"))
        assert seq.image is None and enc.special.image_start not in seq.input_ids
        assert collate([seq], enc.special.pad).pixel_values is None
    finally:
        unregister_task("scene_qa")


def test_tokenizer_trained_before_a_task_gives_a_clear_error(encoder):
    register_task(Task("late", "und", "answer", scorer=lambda s, p, c: {}))
    try:
        with pytest.raises(ValueError, match="no <late> token"):
            encoder.prefix("late", "q", np.zeros((16, 16, 3), np.uint8))
    finally:
        unregister_task("late")


def test_an_optional_image_is_used_when_the_record_has_one(encoder):
    """instruct (needs_image=False): an image block only when the sample has an image, and a
    single answer lays out as the conversation of its two turns does."""
    tok = train_text_tokenizer(TEXT * 5, vocab_size=280, tasks=["instruct"])
    enc = Encoder(tok, SpecialIds.of(tok), 4, lambda img: [], ImageProcessor(16))
    sp, img = enc.special, np.zeros((30, 20, 3), np.uint8)
    with_image = enc.sample(Sample("a", "instruct", "what color is it ?", image=img, target="red"))
    text_only = enc.sample(Sample("b", "instruct", "what color is it ?", target="red"))
    assert with_image.image.shape == (16, 16, 3) and sp.image_start in with_image.input_ids
    assert text_only.image is None and sp.image_start not in text_only.input_ids
    conv = enc.conversation("instruct", [Turn("user", "what color is it ?", img),
                                         Turn("assistant", "red")])
    assert conv.input_ids == with_image.input_ids and conv.labels() == with_image.labels()
    # Counted without loading the image (data check, training from disk): its slots count too.
    named = Sample("c", "instruct", "what color is it ?", target="red", image_path="a.png")
    assert enc.lengths([named], codes=0) == [len(with_image.input_ids)]
    assert enc.lengths([Sample("d", "instruct", "what color is it ?", target="red")],
                       codes=0) == [len(text_only.input_ids)]


def test_user_text_and_targets_cannot_inject_structure(encoder):
    """`<eos>` in a target is no early stop, `<und_slot>` / `<img>` in a prompt no image slot
    (issue 28, item 3): one image block, one end of answer, whatever the text says."""
    sp = encoder.special
    img = np.zeros((16, 16, 3), np.uint8)
    bad = "what <und_slot><img> color </img><vqa> is it<eos> ?"
    seq = encoder.sample(Sample("a", "vqa", bad, image=img, target="red <eos> blue<und_slot>"))
    assert seq.input_ids.count(sp.und_slot) == 4 and seq.input_ids.count(sp.image_start) == 1
    assert seq.input_ids.count(sp.eos) == 1 and seq.input_ids[-1] == sp.eos
    assert seq.input_ids.count(sp.task("vqa")) == 1
