"""Task and grounding tokens in a text tokenizer: one token each, and answers decode with
their spans intact (a plain skip-special decode loses the opener of <t2i> and <edit>)."""

from __future__ import annotations

from utamoe.tasks_exec.spans import TASK_SPAN_TOKENS, parse_response
from utamoe.tasks_exec.tokens import add_span_tokens, decode_response
from utamoe.text_tokenizer import train_text_tokenizer

TASKS = ["t2i", "edit", "seg", "layout"]


def test_span_tokens_are_single_tokens_and_answers_round_trip():
    tok = train_text_tokenizer(["remove the object", "make it blue", "a red circle"] * 10, 300)
    added = add_span_tokens(tok, TASKS)
    assert "</edit>" in added and "<edit>" not in added  # <edit> is already the task marker
    assert add_span_tokens(tok, TASKS) == []  # idempotent
    for t in TASK_SPAN_TOKENS(TASKS):
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    answer = ("I'll remove it. <edit>remove the object<box>[0.35,0.02,0.65,0.31]</box></edit> "
              "<seg>the circle<box>[0.1,0.1,0.4,0.4]</box></seg>")
    ids = tok.encode(answer, add_special_tokens=False)
    ids += tok.convert_tokens_to_ids(["<eos>", "<pad>"])
    text = decode_response(tok, ids, TASKS)
    assert "<eos>" not in text and "<pad>" not in text
    got, want = parse_response(text, TASKS), parse_response(answer, TASKS)
    assert got.ok and [(s.task, s.text, s.boxes) for s in got.spans] == \
        [(s.task, s.text, s.boxes) for s in want.spans]
    assert "<edit>" not in tok.decode(ids, skip_special_tokens=True)  # why decode_response exists
