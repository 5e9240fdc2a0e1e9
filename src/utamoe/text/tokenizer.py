"""The text tokenizer: trained on a dataset's own text, or loaded from a local directory.

Unified sequences need a few special tokens beside ordinary text: sequence
boundaries, image boundaries, a prompt/answer separator, a slot token for each understanding feature and
each image code (their embeddings come from the vision side, not the text
table), a null prompt for classifier-free guidance, and one marker per task of the task
registry (`<caption>`, `<t2i>`, ...; a task registered later gets its marker in
tokenizers trained or loaded after it).
`train_text_tokenizer` trains a byte-level BPE with the `tokenizers` library
(lossless decode, no unknown words for users' own data); `load_text_tokenizer`
takes any Hugging Face tokenizer directory and adds the special tokens it lacks.
Either way the result is a `PreTrainedTokenizerFast` that saves with
`save_pretrained(dir)`.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from utamoe.config import ConfigError
from utamoe.hf.gguf import gguf_path, load_gguf_tokenizer
from utamoe.hf.local import pretrained
from utamoe.tasks import task_names

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
IMAGE_START, IMAGE_END = "<img>", "</img>"
UND_SLOT, CODE_SLOT, NULL, SEP = "<und_slot>", "<code_slot>", "<null>", "<sep>"
BASE_SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, IMAGE_START, IMAGE_END, UND_SLOT, CODE_SLOT, NULL, SEP]


def task_token(task: str) -> str:
    return f"<{task}>"


def special_tokens(tasks: Iterable[str] | None = None) -> list[str]:
    """The structural tokens, then one marker per registered task (registry order), or per
    task of `tasks` (still in registry order)."""
    wanted = None if tasks is None else set(tasks)
    return [*BASE_SPECIAL_TOKENS,
            *(task_token(t) for t in task_names() if wanted is None or t in wanted)]


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens in one tokenizer (looked up once, used by collate and generation)."""

    pad: int
    bos: int
    eos: int
    image_start: int
    image_end: int
    und_slot: int
    code_slot: int
    null: int
    sep: int
    tasks: dict[str, int]  # the registered tasks this tokenizer has a marker for

    @classmethod
    def of(cls, tok: PreTrainedTokenizerFast) -> SpecialIds:
        vocab = tok.get_vocab()
        missing = [t for t in BASE_SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}; load it with load_text_tokenizer")
        ids = {t: vocab[t] for t in BASE_SPECIAL_TOKENS}
        tasks = {task: vocab[task_token(task)] for task in task_names() if task_token(task) in vocab}
        return cls(ids[PAD], ids[BOS], ids[EOS], ids[IMAGE_START], ids[IMAGE_END], ids[UND_SLOT],
                   ids[CODE_SLOT], ids[NULL], ids[SEP], tasks)

    def task(self, name: str) -> int:
        """The marker id of a task; a clear error when the tokenizer predates the task."""
        if name not in self.tasks:
            raise ValueError(f"the text tokenizer has no {task_token(name)} token: it was trained "
                             f"before task {name!r} was registered; train a new tokenizer (and "
                             "model) with the task registered")
        return self.tasks[name]


# `split_special_tokens` is a flag on the shared Rust tokenizer that every encode call sets:
# calls from several threads (the server's handlers and its batcher) must not interleave.
_ENCODE_LOCK = threading.Lock()


_SPECIALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_strings(tok) -> frozenset[str]:
    """The text of every special token of `tok` (utamoe's structural tokens, task markers,
    and a pretrained tokenizer's own control tokens); cached until tokens are added."""
    size, found = _SPECIALS.get(tok, (-1, frozenset()))
    if size != len(tok):
        found = frozenset(t.content for t in tok.added_tokens_decoder.values() if t.special)
        _SPECIALS[tok] = (len(tok), found)
    return found


# Training asks for the same few hundred questions and answers again and again (a quarter of a
# demo step went into encode calls); the ids of a (text, keep) pair are memoised per tokenizer
# and dropped when tokens are added, up to this many entries.
_MEMO_SIZE = 1 << 16
_MEMOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def encode_text(tok, text: str, keep: Collection[str] = ()) -> list[int]:
    """`encode_text_uncached` (the reference), memoised per tokenizer."""
    key = (text, frozenset(keep))
    with _ENCODE_LOCK:
        size, memo = _MEMOS.get(tok, (-1, None))
        if size != len(tok):
            memo = {}
            _MEMOS[tok] = (len(tok), memo)
        ids = memo.get(key)
    if ids is None:
        ids = tuple(encode_text_uncached(tok, text, keep))
        with _ENCODE_LOCK:
            if len(memo) < _MEMO_SIZE:
                memo[key] = ids
    return list(ids)


def encode_text_uncached(tok, text: str, keep: Collection[str] = ()) -> list[int]:
    """Token ids of `text` read as text: the literal string of a special token (`<eos>`, `<img>`,
    `<und_slot>`, a task marker, a backbone's control tokens) becomes the characters it is
    made of, never the token, so no prompt, question or answer can inject structure.
    `keep`: special tokens that may stand for themselves (a training answer's span openers
    that are also task markers, such as `<edit>`). Text without any other special token's
    string is encoded exactly as a plain `encode` would."""
    with _ENCODE_LOCK:
        if not keep:
            return tok.encode(text, add_special_tokens=False, split_special_tokens=True)
        others = special_strings(tok) - set(keep)
        if not any(s in text for s in others):
            return tok.encode(text, add_special_tokens=False, split_special_tokens=False)
        ids: list[int] = []
        pattern = "(" + "|".join(re.escape(k) for k in sorted(keep, key=len, reverse=True)) + ")"
        for piece in re.split(pattern, text):
            if piece in keep:
                ids.append(tok.convert_tokens_to_ids(piece))
            elif piece:
                ids += tok.encode(piece, add_special_tokens=False, split_special_tokens=True)
        return ids


def _wrap(tok: Tokenizer, specials: list[str]) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        additional_special_tokens=specials[4:],
    )


def train_text_tokenizer(texts: Iterable[str], vocab_size: int = 512,
                         tasks: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts` (prompts and answers), with utamoe's special tokens:
    a marker for every registered task, or for the tasks of `tasks` (a training run passes
    its data's tasks, so a tokenizer does not change when unrelated tasks are registered)."""
    specials = special_tokens(tasks)
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok, specials)


def load_text_tokenizer(path: str | Path, add_tasks: bool = True,
                        tasks: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """A tokenizer from a local directory (ours or any HF one) or a GGUF file (`DIR/NAME.gguf`,
    DIR may be `pkg:<module>`), with utamoe's special tokens added (task markers: every
    registered task's, or those of `tasks`).

    `add_tasks=False` adds no task markers: a trained model's own tokenizer is loaded as it was
    saved, since a marker added later would have no row in the model's embedding table."""
    if str(path).endswith(".gguf"):  # the tokenizer inside a GGUF checkpoint (utamoe.hf.gguf)
        folder, _, name = str(path).rpartition("/")
        tok = load_gguf_tokenizer(gguf_path(folder or ".", name, "tokenizers.text"))
    else:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"text tokenizer directory {path} does not exist")
        try:
            tok = pretrained(AutoTokenizer, path, "tokenizers.text")
        except (OSError, ValueError, KeyError, TypeError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"tokenizers.text {path}: not a tokenizer directory transformers "
                              f"reads ({type(err).__name__}: {str(err)[:300]})") from err
    wanted = special_tokens(tasks) if add_tasks else BASE_SPECIAL_TOKENS
    missing = [t for t in wanted if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    for attr, value in (("pad_token", PAD), ("bos_token", BOS), ("eos_token", EOS)):
        if getattr(tok, attr) is None:
            tok.add_special_tokens({attr: value})
    return tok
