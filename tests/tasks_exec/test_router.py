"""The task router: every span runs; an executor that raises or returns the wrong thing, a
bad conversation image and a parse error each become a structured outcome, in text order."""

from __future__ import annotations

import numpy as np
import pytest

from utamoe.tasks_exec import ExecRequest, ExecResult, SpanRouter
from utamoe.tasks_exec.builtin import BoxSegmenter
from utamoe.text.spans import parse_response


class Fn:
    def __init__(self, task, fn):
        self.name, self.tag, self.fn = f"{task}_fn", task, fn

    def __call__(self, request: ExecRequest):
        return self.fn(request)


def boom(request):
    raise RuntimeError(f"boom on {request.text}")


ROUTER = SpanRouter({
    "t2i": Fn("t2i", lambda r: ExecResult(images=[np.zeros((4, 4, 3), np.uint8)])),
    "edit": Fn("edit", boom),
    "seg": BoxSegmenter(),
    "dict": Fn("dict", lambda r: {"text": "hi"}),
    "float": Fn("float", lambda r: ExecResult(images=[np.zeros((4, 4, 3))])),
    "none": Fn("none", lambda r: ExecResult()),
    "poke": Fn("poke", lambda r: r.image.__setitem__((0, 0), 7)),
})
IMG = np.full((8, 8, 3), 200, np.uint8)


def test_a_raising_executor_is_an_error_and_the_other_spans_still_run():
    text = "<t2i>a circle</t2i> then <edit>make it blue</edit> and <t2i>a square</t2i>"
    _, outs = ROUTER.run(text, [IMG])
    assert [(o.tag, o.ok) for o in outs] == [("t2i", True), ("edit", False), ("t2i", True)]
    err = outs[1].error
    assert (err.kind, err.tag, err.text) == ("executor_error", "edit", "make it blue")
    assert err.detail == "RuntimeError: boom on make it blue" and "edit_fn" in err.message
    assert text[err.start:err.end] == "<edit>make it blue</edit>"


@pytest.mark.parametrize("task, message", [
    ("dict", "returned a dict for <dict> 'x', not an ExecResult"),
    ("float", "image 0 is float64 (4, 4, 3), not HxWx3 uint8"),
    ("none", "it holds no image, mask or text"),
])
def test_wrong_results_are_errors(task, message):
    _, (out,) = ROUTER.run(f"<{task}>x</{task}>", [IMG])
    assert out.error.kind == "bad_result" and message in out.error.message


def test_a_request_an_executor_cannot_serve_says_why():
    _, (out,) = ROUTER.run("<seg>the circle</seg>", [IMG])
    assert out.error.kind == "executor_error" and "needs a <box>" in out.error.message
    _, (out,) = ROUTER.run("<seg>the circle<box>[0,0,1,1]</box></seg>", [])
    assert "needs an image in the conversation" in out.error.message


def test_executors_cannot_change_the_conversation_images():
    img = IMG.copy()
    _, (out,) = ROUTER.run("<poke>x</poke>", [img])
    assert out.error.kind == "executor_error" and "read-only" in out.error.detail
    assert np.array_equal(img, IMG)


def test_parse_errors_pass_through_in_text_order():
    text = "<t2i>a</t2i> <Edit>x</Edit> <seg>y<box>[2,0,3,1]</box></seg> <t2i>b</t2i> </seg>"
    _, outs = ROUTER.run(text, [IMG])
    kinds = [o.error.kind if o.error else o.tag for o in outs]
    assert kinds == ["t2i", "unknown_tag", "box_out_of_range", "t2i", "stray_closer"]
    assert [o.start for o in outs] == sorted(o.start for o in outs)


def test_spans_without_an_executor_and_bad_images_are_errors():
    parsed = parse_response("<ocr>read it</ocr>", ["ocr"])
    (out,) = ROUTER.dispatch(parsed, [IMG])
    assert out.error.kind == "no_executor" and "executors.ocr" in out.error.message
    _, (out,) = ROUTER.run("<t2i>a</t2i>", [np.zeros((8, 8), np.uint8)])
    assert out.error.kind == "bad_input" and "HxWx3 uint8" in out.error.message


def test_the_router_knows_its_tasks():
    assert set(ROUTER.tags) == {"t2i", "edit", "seg", "dict", "float", "none", "poke"}
    with pytest.raises(TypeError, match="not callable"):
        SpanRouter({"t2i": 3})
