"""The text tokenizer: special tokens are never split, every registered task has a marker,
a model's own tokenizer loads as saved (no marker added that the model has no row for), and
text is text: the string of a special token in a prompt or answer is characters."""

from __future__ import annotations

from utamoe.tasks import Task, register_task, task_names, unregister_task
from utamoe.text.span_tokens import add_span_tokens, special_span_tokens
from utamoe.text.tokenizer import (
    BASE_SPECIAL_TOKENS,
    SpecialIds,
    encode_text,
    encode_text_uncached,
    load_text_tokenizer,
    special_strings,
    task_token,
    train_text_tokenizer,
)


def test_special_tokens_are_single_ids_and_round_trip():
    tok = train_text_tokenizer(["what color is the circle ?", "red"] * 20, vocab_size=280)
    ids = SpecialIds.of(tok)
    for t in [*BASE_SPECIAL_TOKENS, *(task_token(n) for n in task_names())]:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    assert set(ids.tasks) == set(task_names())
    text = "what color is the circle ?"
    assert tok.decode(tok.encode(text, add_special_tokens=False)).strip() == text


def test_a_task_registered_later_gets_a_marker_in_new_tokenizers_only(tmp_path):
    old = train_text_tokenizer(["red"] * 20, vocab_size=270)
    old.save_pretrained(str(tmp_path / "old"))
    register_task(Task("ocr", "und", "answer", scorer=lambda s, p, c: {}))
    try:
        new = train_text_tokenizer(["red"] * 20, vocab_size=270)
        assert "ocr" in SpecialIds.of(new).tasks
        as_saved = load_text_tokenizer(tmp_path / "old", add_tasks=False)
        assert len(as_saved) == len(old) and "ocr" not in SpecialIds.of(as_saved).tasks
        extended = load_text_tokenizer(tmp_path / "old")
        assert len(extended) == len(old) + 1 and "ocr" in SpecialIds.of(extended).tasks
    finally:
        unregister_task("ocr")


# ---------------------------------------------------------------- user text is text (issue 28, item 3)

INJECT = ["<und_slot>", "<eos>", "<img>", "</img>", "<vqa>", "<sep>", "<pad>", "<null>", "<code_slot>"]


def test_special_token_strings_in_text_are_characters():
    tok = train_text_tokenizer(["what color is the circle", "remove it", "[0.1,0.2]"] * 10, 300)
    add_span_tokens(tok, ["edit", "seg"])
    structural = {tok.convert_tokens_to_ids(t) for t in special_strings(tok)}
    for t in INJECT:
        text = f"what {t} color{t}"
        ids = encode_text(tok, text)
        assert not structural & set(ids), t
        assert tok.decode(ids).strip() == text
    plain = "what color is the circle"  # ordinary text: exactly what encode gives
    assert encode_text(tok, plain) == tok.encode(plain, add_special_tokens=False)
    keep = special_span_tokens(tok)
    assert keep == {"<edit>", "<seg>"}
    answer = "ok <edit>remove it<box>[0.1,0.2,0.3,0.4]</box></edit>"
    assert encode_text(tok, answer, keep) == tok.encode(answer, add_special_tokens=False)
    ids = encode_text(tok, answer + " <eos><und_slot>", keep)
    assert ids.count(tok.convert_tokens_to_ids("<edit>")) == 1
    assert not {tok.convert_tokens_to_ids(t) for t in ("<eos>", "<und_slot>")} & set(ids)


def test_memoised_encode_equals_the_reference_and_follows_added_tokens():
    tok = train_text_tokenizer(["what color is the circle", "remove it", "[0.1,0.2]"] * 10, 300)
    texts = ["what color is the circle", "remove it <eos>", "a <edit>x</edit>", ""]
    for text in texts * 2:  # the second round is served from the memo
        for keep in ((), ("<edit>",)):
            got = encode_text(tok, text, keep)
            assert got == encode_text_uncached(tok, text, keep)
            got.append(-1)  # a caller's list is its own: the memo is not changed
            assert encode_text(tok, text, keep) == encode_text_uncached(tok, text, keep)
    before = encode_text(tok, "what color <mark> is", ("<mark>",))  # no <mark> token yet
    tok.add_tokens(["<mark>"], special_tokens=True)  # the memo of the old vocabulary is dropped
    after = encode_text(tok, "what color <mark> is", ("<mark>",))
    assert after == encode_text_uncached(tok, "what color <mark> is", ("<mark>",)) != before
    assert tok.convert_tokens_to_ids("<mark>") in after
