"""Conversation records (`turns`): valid ones load with their images, broken ones fail with
the file, the line and what to fix; a conversation becomes one sequence whose loss is on the
assistant turns only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.model.helpers import tiny_model
from utamoe.data.conversations import Turn, exchanges
from utamoe.data.formats import DataFormatError, Sample, load_split, write_split

IMG = np.full((48, 48, 3), 20, np.uint8)


def _write(tmp_path, records) -> object:
    (tmp_path / "images").mkdir(exist_ok=True)
    from PIL import Image

    Image.fromarray(IMG).save(tmp_path / "images" / "a.png")
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _dialog(**over):
    rec = {"id": "d0", "task": "dialog", "group": "und", "turns": [
        {"role": "user", "text": "what color is the circle?", "image": "images/a.png"},
        {"role": "assistant", "text": "red"},
        {"role": "user", "text": "segment it"},
        {"role": "assistant", "text": "<seg>the red circle<box>[0.1,0.1,0.3,0.3]</box></seg>"}]}
    rec.update(over)
    return rec


def test_a_conversation_loads_with_its_turns_and_images(tmp_path):
    samples, _ = load_split(_write(tmp_path, [_dialog()]))
    (s,) = samples
    assert s.is_conversation and s.prompt == "what color is the circle?"
    assert [t.role for t in s.turns] == ["user", "assistant", "user", "assistant"]
    assert np.array_equal(s.turns[0].image, IMG) and s.turns[2].image is None
    assert [a.text for _, a in exchanges(s.turns)] == ["red", s.turns[3].text]
    out = tmp_path / "out"
    write_split(out, "train", samples)
    again, _ = load_split(out / "train.jsonl")
    assert [t.to_record() for t in again[0].turns][1:] == [t.to_record() for t in s.turns][1:]
    assert np.array_equal(again[0].turns[0].image, IMG)


def _turns(*edits):
    rec = _dialog()
    for k, change in edits:
        if change is None:
            del rec["turns"][k]
        else:
            rec["turns"][k] = {**rec["turns"][k], **change}
    return rec


BAD = [
    (_dialog(turns="hello"), "list of at least two turns"),
    (_turns((1, {"role": "user"})), "turns[1].role is 'user' but must be 'assistant'"),
    (_turns((2, {"text": "  "})), "turns[2].text must be a non-empty string"),
    (_turns((1, {"image": "images/a.png"})), "put it on a user turn"),
    (_turns((3, None)), "the last turn (turns[2]) is a user turn"),
    (_turns((0, {"image": "images/missing.png"})), "'turns[0].image' image 'images/missing.png' not found"),
    (_turns((0, {"speaker": "x"})), "turns[0] has unknown field(s) ['speaker']"),
    (_dialog(prompt="hi"), "a conversation (a record with 'turns') has no ['prompt']"),
    (_dialog(task="t2i", group="gen"), "only text tasks (e.g. dialog) take conversations"),
    (_turns((0, {"image": None})), "give a user turn an 'image'"),
]


@pytest.mark.parametrize("record,message", BAD)
def test_broken_conversations_name_file_line_and_fix(tmp_path, record, message):
    good = _dialog(id="ok")
    path = _write(tmp_path, [good, record])
    with pytest.raises(DataFormatError) as err:
        load_split(path)
    assert err.value.line == 2 and f"{path}:2:" in str(err.value)
    assert message in str(err.value)
    samples, report = load_split(path, on_error="skip")
    assert [s.id for s in samples] == ["ok"] and report.skipped == 1


def test_only_assistant_turns_carry_the_loss():
    model, tok, _ = tiny_model()
    enc = model.sequence_encoder(tok)
    turns = [Turn("user", "what color is it?", IMG), Turn("assistant", "red"),
             Turn("user", "and the shape?"), Turn("assistant", "circle")]
    seq = enc.sample(Sample("c", "vqa", turns[0].text, turns=turns))
    lossy = [i for i, on in zip(seq.input_ids, seq.text_loss) if on]
    sp = enc.special
    assert lossy == enc.words("red") + [sp.eos] + enc.words("circle") + [sp.eos]
    assert seq.input_ids.count(sp.und_slot) == enc.und_tokens and seq.input_ids.count(sp.sep) == 2
    assert seq.prompt == "what color is it?"
    # The prefix of the second answer is the sequence of the history up to the user's turn.
    prefix = enc.conversation("vqa", turns[:3])
    assert seq.input_ids[:len(prefix.input_ids)] == prefix.input_ids and not any(prefix.code_loss)
    text_labels, _ = seq.labels()
    assert sum(label != -100 for label in text_labels) == len(lossy)


def test_a_conversation_with_two_images_trains_in_a_mixed_batch():
    from utamoe.data.sequences import collate

    model, tok, enc = tiny_model()
    other = np.full((48, 48, 3), 200, np.uint8)
    conv = Sample("c", "vqa", "q", turns=[Turn("user", "what color is it?", IMG),
                                          Turn("assistant", "red"),
                                          Turn("user", "and this one?", other),
                                          Turn("assistant", "white")])
    single = Sample("s", "vqa", "what color?", image=other, target="white")
    batch = collate([enc.sample(conv), enc.sample(single)], enc.special.pad)
    assert batch.pixel_values.shape[0] == 3  # two from the conversation, then one
    out = model(batch)
    assert out.loss.isfinite() and set(out.task_losses) == {"vqa"}
