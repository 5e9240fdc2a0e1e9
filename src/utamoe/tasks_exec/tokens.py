"""Task-span tokens in a text tokenizer: add them unsplittable, decode answers that keep them.

Task tokens and grounding tokens must be single tokens (never split into sub-words) or the
model cannot emit them reliably. `add_span_tokens` adds the ones a tokenizer lacks as
*added tokens that are not special*: they are never split, and `decode(...,
skip_special_tokens=True)` keeps them. Two caveats the caller must know:

- a task token that is also a task marker of the sequence layout (`<t2i>`, `<edit>`: see
  utamoe.text_tokenizer) is already a *special* token, so a plain
  `decode(ids, skip_special_tokens=True)` drops it and the span loses its opener;
  `decode_response` drops only the structural specials (<eos>, <pad>, ...) and keeps every
  task-span token;
- every added token needs a row in the model's embedding and output layers (the model side
  of issue 14, not this module).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from utamoe.tasks_exec.spans import TASK_SPAN_TOKENS


def add_span_tokens(tokenizer, tasks: Iterable[str]) -> list[str]:
    """Add the task-span tokens of `tasks` that `tokenizer` lacks (never split, not special);
    returns the ones added, in TASK_SPAN_TOKENS order."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [t for t in TASK_SPAN_TOKENS(tasks) if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
    return missing


def decode_response(tokenizer, ids: Sequence[int], tasks: Iterable[str]) -> str:
    """Generated ids -> text with the task-span tokens kept and the other special tokens
    (structure markers, padding, end of sequence) removed."""
    vocab = tokenizer.get_vocab()
    keep = {vocab[t] for t in TASK_SPAN_TOKENS(tasks) if t in vocab}
    special = set(tokenizer.all_special_ids)
    kept = [i for i in ids if i in keep or i not in special]
    return tokenizer.decode(kept, skip_special_tokens=False).strip()
