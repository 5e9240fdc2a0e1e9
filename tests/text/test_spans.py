"""The task-span grammar: good, partial and malformed answers, each error kind with its
place in the text, never an exception; format_span and parse_response are inverses."""

from __future__ import annotations

import time

import numpy as np
import pytest

from utamoe.text.boxes import box_token, format_box
from utamoe.text.spans import (
    ERROR_KINDS,
    ParsedResponse,
    format_span,
    parse_response,
    span_token_strings,
)

TASKS = ("t2i", "edit", "seg", "layout")


def test_a_span_with_a_box_and_plain_text():
    text = "I'll remove it. <edit>remove the object<box>[0.35,0.02,0.65,0.31]</box></edit> Done."
    p = parse_response(text, TASKS)
    assert p.ok and p.text == "I'll remove it. Done."
    (s,) = p.spans
    assert (s.tag, s.text, s.boxes) == ("edit", "remove the object", ((0.35, 0.02, 0.65, 0.31),))
    assert text[s.start:s.end].startswith("<edit>") and text[s.start:s.end].endswith("</edit>")


def test_layout_parts_keep_each_phrase_with_its_box_and_spaces_are_tolerated():
    text = ("<layout>a red circle<box> [0.1, 0.1, 0.3,0.3] </box> and a blue square"
            "<box>(0.5,0.5,0.9,0.9)</box></layout>")
    (s,) = parse_response(text, TASKS).spans
    assert s.text == "a red circle and a blue square"
    assert s.parts == ("a red circle", (0.1, 0.1, 0.3, 0.3), "and a blue square", (0.5, 0.5, 0.9, 0.9))


def test_boxes_outside_spans_are_grounding_answers():
    p = parse_response("it is at <box>[0.1,0.2,0.3,0.4]</box>.", TASKS)
    assert p.ok and not p.spans and p.boxes == [(0.1, 0.2, 0.3, 0.4)]
    assert p.text == "it is at [0.10,0.20,0.30,0.40] ."


def test_several_spans_and_a_bad_one_between_them():
    text = "<t2i>a red circle</t2i> <seg>x<box>[0.9,0,0.1,1]</box></seg> <edit>make it blue</edit>"
    p = parse_response(text, TASKS)
    assert [s.tag for s in p.spans] == ["t2i", "edit"]
    assert [(e.kind, e.tag, e.text) for e in p.errors] == [("empty_box", "seg", "x")]


# (answer, kind, the text the error points at, the task of the spoiled span)
MALFORMED = [
    ("ok <Edit>make it blue</Edit>", "unknown_tag", "<Edit>make it blue</Edit>", None),
    ("ok <ocr>read it", "unknown_tag", "<ocr>", None),
    ("<edit>make it blue", "unclosed", "<edit>make it blue", "edit"),
    ("<edit>a<t2i>b</t2i>c</edit>", "nested", "<t2i>", "edit"),
    ("<edit>make it blue</seg>", "mismatched_closer", "</seg>", "edit"),
    ("make it blue</edit>", "stray_closer", "</edit>", None),
    ("at [0.1,0.2,0.3,0.4]</box>", "stray_closer", "</box>", None),
    ("<t2i>  </t2i>", "empty_span", "<t2i>  </t2i>", "t2i"),
    ("<seg>x<box>[0.1,0.2,0.3,0.4]</seg>", "unclosed_box", "<box>[0.1,0.2,0.3,0.4]", "seg"),
    ("<seg>x<box>[0.1,0.2,0.3]</box></seg>", "bad_box", "<box>[0.1,0.2,0.3]</box>", "seg"),
    ("<seg>x<box>[a,b,c,d]</box></seg>", "bad_box", "<box>[a,b,c,d]</box>", "seg"),
    ("<seg>x<box>[0.1,0.2,1.5,0.4]</box></seg>", "box_out_of_range", "<box>[0.1,0.2,1.5,0.4]</box>", "seg"),
    ("<seg>x<box>[-0.1,0.2,0.5,0.4]</box></seg>", "box_out_of_range", "<box>[-0.1,0.2,0.5,0.4]</box>", "seg"),
    ("<seg>x<box>[0.5,0.2,0.5,0.4]</box></seg>", "empty_box", "<box>[0.5,0.2,0.5,0.4]</box>", "seg"),
    ("<seg>x<box>[0.1,0.6,0.5,0.4]</box></seg>", "empty_box", "<box>[0.1,0.6,0.5,0.4]</box>", "seg"),
]


@pytest.mark.parametrize("text, kind, where, task", MALFORMED)
def test_malformed_spans_are_errors_that_say_what_and_where(text, kind, where, task):
    p = parse_response(text, TASKS)
    assert not p.spans  # a spoiled span is never executed
    assert kind in [e.kind for e in p.errors]
    err = next(e for e in p.errors if e.kind == kind)
    assert text[err.start:err.end] == where
    assert err.tag == task and err.message and kind in ERROR_KINDS


def test_error_messages_help():
    (e,) = parse_response("<Edit>x</Edit>", TASKS).errors
    assert "did you mean <edit>" in e.message
    (e,) = parse_response("<edit>x<box>[0.1,0.2,1.5,0.4]</box></edit>", TASKS).errors
    assert "outside [0, 1]" in e.message and e.text == "x"


def test_partial_answers_cut_anywhere_after_the_opener_are_errors_not_spans():
    full = "<edit>remove the object<box>[0.35,0.02,0.65,0.31]</box></edit>"
    assert parse_response(full, TASKS).spans  # the whole answer is fine
    for cut in range(len("<edit>"), len(full)):
        p = parse_response(full[:cut], TASKS)
        assert not p.spans and "unclosed" in [e.kind for e in p.errors], full[:cut]


def test_task_names_come_from_the_caller():
    assert parse_response("<ocr>read it</ocr>", TASKS).errors[0].kind == "unknown_tag"
    (s,) = parse_response("<ocr>read it</ocr>", ["ocr"]).spans
    assert s.tag == "ocr"


def test_any_string_parses_without_raising_and_offsets_are_sane():
    pieces = ["<edit>", "</edit>", "<t2i>", "</t2i>", "<box>", "</box>", "[0.1,0.2,0.3,0.4]",
              "[2,0,1]", "<foo>", "</foo>", "text ", "<", ">", "/", "0.5,", "<seg>", "</seg>"]
    rng = np.random.default_rng(0)
    for _ in range(400):
        text = "".join(rng.choice(pieces, size=rng.integers(0, 12)))
        p = parse_response(text, TASKS)
        assert isinstance(p, ParsedResponse)
        for s in p.spans:
            assert text[s.start:s.end].startswith(f"<{s.tag}>")
            assert text[s.start:s.end].endswith(f"</{s.tag}>")
        assert all(0 <= e.start <= e.end <= len(text) for e in p.errors)


@pytest.mark.parametrize("task, text, boxes", [
    ("edit", "remove the object", [(0.35, 0.02, 0.65, 0.31)]),
    ("t2i", "a red circle at the top left", []),
    ("seg", "", [(0.0, 0.0, 1.0, 1.0)]),
    ("layout", "two shapes", [(0.1, 0.1, 0.4, 0.4), (0.5, 0.5, 0.9, 0.95)]),
])
def test_format_and_parse_are_inverses(task, text, boxes):
    written = format_span(task, text, boxes)
    (s,) = parse_response("before " + written + " after", TASKS).spans
    assert (s.tag, s.text, list(s.boxes)) == (task, text, boxes)
    assert format_span(s.tag, s.text, s.boxes) == written


def test_a_grounding_token_is_the_box_grammar_in_box_tokens():
    for box in [(0.35, 0.02, 0.65, 0.31), (0, 0, 1, 1), (0.125, 0.5, 0.875, 0.999)]:
        assert box_token(box) == f"<box>{format_box(box)}</box>"
    assert box_token((0.1, 0.2, 0.3, 0.4)) == "<box>[0.10,0.20,0.30,0.40]</box>"


@pytest.mark.parametrize("call, message", [
    (lambda: format_span("bad-name", "x"), "cannot be a span tag"),
    (lambda: format_span("box", "x"), "cannot be a span tag"),
    (lambda: format_span("edit", "a <t2i>b</t2i>"), "do not nest"),
    (lambda: format_span("edit", "x", [(0.5, 0.1, 0.2, 0.3)]), "is empty"),
    (lambda: format_span("edit", "x", [(0.1, 0.1, 0.104, 0.3)]), "is empty"),  # rounds to 0 width
    (lambda: format_span("edit", "x", [(0.1, 0.1, 0.3)]), "four coordinates"),
])
def test_format_span_refuses_what_would_not_parse(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_span_tokens_list_every_pair_and_the_box():
    assert span_token_strings(["t2i", "seg"]) == ["<t2i>", "</t2i>", "<seg>", "</seg>", "<box>", "</box>"]


def test_pathological_text_parses_in_linear_time():
    """Issue 28, item 15: unknown openers each scanned the rest of the text for a closer."""
    text = "<a>" * 40_000 + "<edit>" + "</x>" * 20_000
    start = time.perf_counter()
    parsed = parse_response(text, ["edit"])
    assert time.perf_counter() - start < 5.0
    assert len(parsed.errors) == 60_000 and not parsed.spans
