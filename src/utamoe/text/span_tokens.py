"""Task-span tokens in a text tokenizer: add them unsplittable, decode answers that keep them.

Task tokens and grounding tokens must be single tokens (never split into sub-words) or the
model cannot emit them reliably. `add_span_tokens` adds the ones a tokenizer lacks as
*added tokens that are not special*: they are never split, and `decode(...,
skip_special_tokens=True)` keeps them. Two caveats the caller must know:

- a tag token that is also a task marker of the sequence layout (`<t2i>`, `<edit>`: see
  utamoe.text.tokenizer) is already a *special* token, so a plain
  `decode(ids, skip_special_tokens=True)` drops it and the span loses its opener;
  `decode_response` drops only the structural specials (<eos>, <pad>, ...) and keeps every
  span token;
- every added token needs a row in the model's embedding and output layers: a model built
  from scratch is built at `len(tokenizer)`, a pretrained backbone grows its tables with rows
  set to the mean of the existing ones (utamoe.model.parts.build_backbone).

A byte-level BPE puts a space in front of the text that follows an added token
("<box>[0.1" decodes as "<box> [0.1"); `decode_response` takes that space out again after
the openers (<T>, <box>), where the span grammar never has one, so a canonical answer
decodes to itself. `decode_answer` is what text generation calls: the old plain decode for
a tokenizer without span tokens (its answers are unchanged), `decode_response` otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from utamoe.text.boxes import BOX_OPEN
from utamoe.text.spans import span_token_strings
from utamoe.text.tokenizer import special_strings


def add_span_tokens(tokenizer, tags: Iterable[str]) -> list[str]:
    """Add the span tokens of `tags` that `tokenizer` lacks (never split, not special);
    returns the ones added, in span_token_strings order."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [t for t in span_token_strings(tags) if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
    return missing


def decode_response(tokenizer, ids: Sequence[int], tags: Iterable[str]) -> str:
    """Generated ids -> text with the span tokens kept and the other special tokens
    (structure markers, padding, end of sequence) removed."""
    vocab = tokenizer.get_vocab()
    keep = {vocab[t] for t in span_token_strings(tags) if t in vocab}
    special = set(tokenizer.all_special_ids)
    kept = [i for i in ids if i in keep or i not in special]
    text = tokenizer.decode(kept, skip_special_tokens=False).strip()
    openers = [t for t in span_token_strings(tags) if not t.startswith("</") and t in vocab]
    if not openers:
        return text
    return re.sub("(" + "|".join(re.escape(t) for t in openers) + ") ", r"\1", text)


def special_span_tokens(tokenizer) -> frozenset[str]:
    """The span tokens of `tokenizer` that are special tokens too (tags that are also task
    markers, `<edit>`, `<t2i>`): what an answer's text may hold as tokens
    (utamoe.text.tokenizer.encode_text's `keep`)."""
    specials = special_strings(tokenizer)
    return frozenset(t for t in span_token_strings(span_tags_of(tokenizer)) if t in specials)


def span_tags_of(tokenizer) -> list[str]:
    """The tags whose span tokens this tokenizer holds (a closer `</T>` in its vocabulary,
    besides the structural `</img>` and `</box>`), in vocabulary order."""
    vocab = tokenizer.get_vocab()
    if BOX_OPEN not in vocab:
        return []
    names = [t[2:-1] for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])
             if t.startswith("</") and t.endswith(">") and f"<{t[2:-1]}>" in vocab]
    return [n for n in names if n not in ("img", "box")]


def decode_answer(tokenizer, ids: Sequence[int]) -> str:
    """Generated answer ids -> text: task spans kept when the tokenizer has span tokens,
    else the plain `decode(skip_special_tokens=True)` (so older models answer as before)."""
    tags = span_tags_of(tokenizer)
    if not tags:
        return tokenizer.decode(list(ids), skip_special_tokens=True).strip()
    return decode_response(tokenizer, ids, tags)


_SPAN_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9_]*>")


def strip_span_tokens(text: str, tags: Iterable[str]) -> str:
    """`text` with the span tokens of `tags` replaced by spaces: what a BPE is trained
    on, since those tokens are added whole afterwards and must not cost merges."""
    known = set(span_token_strings(tags))
    return _SPAN_TAG.sub(lambda m: " " if m.group(0) in known else m.group(0), text)


def has_span_tokens(texts: Iterable[str], tags: Iterable[str]) -> bool:
    """Whether some text holds a span token of `tags` (data written for executors)."""
    known = set(span_token_strings(tags))
    return any(m.group(0) in known for t in texts for m in _SPAN_TAG.finditer(t or ""))
