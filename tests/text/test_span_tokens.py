"""Task and grounding tokens in a text tokenizer: one token each, and answers decode with
their spans intact (a plain skip-special decode loses the opener of <t2i> and <edit>)."""

from __future__ import annotations

from utamoe.text.span_tokens import add_span_tokens, decode_response
from utamoe.text.spans import parse_response, span_token_strings
from utamoe.text.tokenizer import train_text_tokenizer

TASKS = ["t2i", "edit", "seg", "layout"]


def test_span_tokens_are_single_tokens_and_answers_round_trip():
    tok = train_text_tokenizer(["remove the object", "make it blue", "a red circle"] * 10, 300)
    added = add_span_tokens(tok, TASKS)
    assert "</edit>" in added and "<edit>" not in added  # <edit> is already the task marker
    assert add_span_tokens(tok, TASKS) == []  # idempotent
    for t in span_token_strings(TASKS):
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    answer = ("I'll remove it. <edit>remove the object<box>[0.35,0.02,0.65,0.31]</box></edit> "
              "<seg>the circle<box>[0.1,0.1,0.4,0.4]</box></seg>")
    ids = tok.encode(answer, add_special_tokens=False)
    ids += tok.convert_tokens_to_ids(["<eos>", "<pad>"])
    text = decode_response(tok, ids, TASKS)
    assert "<eos>" not in text and "<pad>" not in text
    got, want = parse_response(text, TASKS), parse_response(answer, TASKS)
    assert got.ok and [(s.tag, s.text, s.boxes) for s in got.spans] == \
        [(s.tag, s.text, s.boxes) for s in want.spans]
    assert "<edit>" not in tok.decode(ids, skip_special_tokens=True)  # why decode_response exists


def test_canonical_answers_decode_to_themselves_and_old_tokenizers_decode_as_before():
    from utamoe.text.span_tokens import decode_answer, span_tags_of

    tok = train_text_tokenizer(["remove the red circle", "[0.35,0.02,0.65,0.31]"] * 10, 300)
    plain = tok.encode("red circle", add_special_tokens=False) + [tok.convert_tokens_to_ids("<edit>")]
    before = tok.decode(plain, skip_special_tokens=True).strip()
    assert span_tags_of(tok) == [] and decode_answer(tok, plain) == before  # no span tokens
    add_span_tokens(tok, TASKS)
    assert span_tags_of(tok) == ["t2i", "edit", "seg", "layout"]
    for answer in ("<edit>remove the red circle<box>[0.35,0.02,0.65,0.31]</box></edit>",
                   "<layout>a red circle<box>[0.10,0.10,0.30,0.30]</box> and a blue square"
                   "<box>[0.50,0.50,0.90,0.90]</box></layout>",
                   "red", "[0.35,0.02,0.65,0.31]"):
        ids = tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]
        assert decode_answer(tok, ids) == answer


def test_a_run_tokenizer_keeps_the_old_markers_and_adds_span_tokens_only_for_span_data(tmp_path):
    from types import SimpleNamespace

    from utamoe.data.formats import Sample
    from utamoe.train.setup import marker_tasks, text_tokenizer_for

    class Solo:
        is_main_process = True

        def wait_for_everyone(self):
            pass

    cfg = SimpleNamespace(tokenizers=SimpleNamespace(text=None, text_vocab_size=300))
    old = [Sample(f"s{i}", t, "describe the image", target="a red circle") for i, t in
           enumerate(["caption", "vqa", "pope", "grounding"])]
    tok = text_tokenizer_for(cfg, old, tmp_path / "a", Solo())
    six = ["caption", "vqa", "pope", "grounding", "t2i", "edit"]
    assert marker_tasks(old) == six and "<seg>" not in tok.get_vocab() and "<box>" not in tok.get_vocab()
    want = train_text_tokenizer(["describe the image", "a red circle"] * 4, 300, six)
    assert tok.get_vocab() == want.get_vocab()  # what a run made before the new tasks existed
    span = old + [Sample("r", "seg", "segment the circle", target="<seg>the red circle<box>"
                         "[0.10,0.10,0.30,0.30]</box></seg>")]
    tok = text_tokenizer_for(cfg, span, tmp_path / "b", Solo())
    vocab = tok.get_vocab()
    assert {"<seg>", "</seg>", "<box>", "</box>", "</edit>"} <= set(vocab)
    assert "<dialog>" not in vocab  # no dialog data, no marker
    assert len(tok.encode("<box>", add_special_tokens=False)) == 1
