"""The chat stays open on what a user can recover from (issue 28, items 13 and 15): a turn over
the model's positions or without the image its task needs is reported and dropped, an executor
that hangs times out, bytes that are not UTF-8 on stdin are replaced, not a crash."""

from __future__ import annotations

import io
import sys
import time

from PIL import Image

from utamoe.chat import ChatSession, run_chat
from utamoe.cli import main
from utamoe.infer.checks import InputError
from utamoe.model.io import save_model_dir
from utamoe.tasks_exec import ExecResult, SpanRouter

from .model.helpers import images, tiny_model


def test_a_turn_the_model_cannot_take_is_reported_and_the_chat_goes_on(tmp_path):
    def reply(turns):
        if "long" in turns[-1].text:
            raise InputError("conversation 1 takes 900 tokens; ... over the model's 256 positions")
        return f"answer {len(turns)}"

    session = ChatSession(reply, SpanRouter({}), tmp_path)
    image = images(1)[0]
    session.attach(image)
    lines: list[str] = []
    assert run_chat(session, ["hello", "long " * 10, "again"], lines.append, lambda p: image) == 2
    assert any(x.startswith("error: conversation 1 takes 900 tokens") and "/reset" in x for x in lines)
    assert [t.text for t in session.turns] == ["hello", "answer 1", "again", "answer 3"]


def test_an_executor_that_hangs_times_out_and_the_chat_goes_on(tmp_path):
    class Hangs:
        name, tag = "hangs", "seg"

        def __call__(self, request):
            time.sleep(30)
            return ExecResult()

    router = SpanRouter({"seg": Hangs()}, timeout_s=0.5)
    answers = iter(["<seg>the circle</seg>", "fine"])
    session = ChatSession(lambda turns: next(answers), router, tmp_path)
    lines: list[str] = []
    start = time.monotonic()
    assert run_chat(session, ["segment it", "and now?"], lines.append, lambda p: None) == 2
    assert time.monotonic() - start < 10
    assert any("error timeout" in x and "within 0.5 s" in x for x in lines), lines
    assert lines[-1] == "model> fine"


def test_bytes_that_are_not_utf8_on_stdin_do_not_end_the_chat(tmp_path, monkeypatch, capsys):
    model, tok, _ = tiny_model()
    save_model_dir(model, tmp_path / "m", tok)
    Image.fromarray(images(1)[0]).save(tmp_path / "x.png")
    stdin = io.TextIOWrapper(io.BytesIO(b"what \xff\xfe color?\n/quit\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["chat", "--model", str(tmp_path / "m"), "--task", "vqa", "--image",
                 str(tmp_path / "x.png"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "you> what \ufffd\ufffd color?" in out and "model> " in out
