"""Samples -> token sequences for the unified model, and batches of them.

One sequence per sample, its layout declared by the sample's task in the task
registry (utamoe.tasks):

    answer   (caption, vqa, pope, grounding, ...):
             <bos> <task> <img> <und_slot> x P </img> prompt <sep> | answer <eos>
             (an answer task with needs_image=False has the <img> ... </img> block only
             when its sample has an image)
    generate (t2i): <bos> <task> prompt <img> | code x N
    edit:    <bos> <task> <img> <code_slot> x N (input image codes) </img> instruction <img> | code x N
    conversation (a record with turns, utamoe.data.conversations), any answer task:
             <bos> <task> [<img> <und_slot> x P </img>] user 1 <sep> | assistant 1 <eos>
                          [<img> ... </img>] user 2 <sep> | assistant 2 <eos> ...
             (the loss is on the assistant turns and their <eos> only; a user turn's image
             sits in front of its text)

Left of `|` is the prefix (given at inference); right of it is the target, the
only part with a loss. `<und_slot>` positions receive the understanding
encoder's features, `<code_slot>` positions the embeddings of their image codes
(`code_ids`); every other position is an ordinary text token. Labels are already
shifted: `text_labels[t]` / `code_labels[t]` is what position t must predict
(-100: nothing). For classifier-free guidance a generation prompt can be replaced
by as many `<null>` tokens, so conditional and unconditional rows align. Input
images go through the encoder's `process` (the model's image processor) first, so
images of any size and mode are accepted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from utamoe.data.formats import Sample
from utamoe.tasks import GROUPS, get_task, task_names
from utamoe.text.span_tokens import special_span_tokens
from utamoe.text.tokenizer import SpecialIds, encode_text
from utamoe.vision.processor import pixel_values

IGNORE = -100


@dataclass
class TokenSequence:
    """One tokenised sample (python lists, unpadded)."""

    task: str
    input_ids: list[int] = field(default_factory=list)
    code_ids: list[int] = field(default_factory=list)
    text_loss: list[bool] = field(default_factory=list)
    code_loss: list[bool] = field(default_factory=list)
    image: np.ndarray | None = None  # understanding input (HxWx3 uint8)
    extra_images: list = field(default_factory=list)  # a conversation's later images, in order
    # The instruction (text and token positions [start, end)): what MoME's instance-level
    # routers read (utamoe.model.instructions); "" for a <null> (unconditional) prompt.
    prompt: str = ""
    prompt_span: tuple[int, int] = (0, 0)

    def text(self, ids: Sequence[int], loss: bool = False) -> None:
        self._add(list(ids), [-1] * len(ids), loss, False)

    def codes(self, codes: Sequence[int], slot: int, loss: bool = False) -> None:
        self._add([slot] * len(codes), list(codes), False, loss)

    def _add(self, ids, codes, text_loss, code_loss) -> None:
        self.input_ids += ids
        self.code_ids += codes
        self.text_loss += [text_loss] * len(ids)
        self.code_loss += [code_loss] * len(ids)

    def labels(self) -> tuple[list[int], list[int]]:
        n = len(self.input_ids)
        text = [self.input_ids[t + 1] if t + 1 < n and self.text_loss[t + 1] else IGNORE for t in range(n)]
        code = [self.code_ids[t + 1] if t + 1 < n and self.code_loss[t + 1] else IGNORE for t in range(n)]
        return text, code


def _same(image: np.ndarray) -> np.ndarray:
    return image


@dataclass
class Encoder:
    """Turns samples into sequences; `image_codes(img) -> list[int]` is the VQ tokenizer and
    `process(img) -> HxWx3 uint8` the model's image processor (identity by default)."""

    tokenizer: object
    special: SpecialIds
    und_tokens: int
    image_codes: Callable[[np.ndarray], list[int]]
    process: Callable[[np.ndarray], np.ndarray] = _same
    _span_specials: frozenset | None = field(default=None, init=False, repr=False)

    def words(self, text: str) -> list[int]:
        """A prompt, question or user turn: text only (the literal `<eos>` or `<und_slot>` a
        user types is characters, never the token; utamoe.text.tokenizer.encode_text)."""
        return encode_text(self.tokenizer, text)

    def answer_words(self, text: str) -> list[int]:
        """A target or an assistant turn: text and its task spans (whose openers may be special
        tokens, `<edit>`); any other special token's string is characters, as in `words`."""
        if self._span_specials is None:
            self._span_specials = special_span_tokens(self.tokenizer)
        return encode_text(self.tokenizer, text, self._span_specials)

    def lengths(self, samples: Sequence[Sample], codes: int) -> list[int]:
        """Tokens in each sample's training sequence (an image is `codes` VQ codes), counted
        without processing or encoding any image: what must fit the model's positions."""
        counter = dataclasses.replace(self, process=_same, image_codes=lambda img: [0] * codes)
        counter._span_specials = self._span_specials
        blank = [0] * codes
        return [len(counter.sample(_with_images(s), target_codes=blank, input_codes=blank).input_ids)
                for s in samples]

    def prefix(self, task: str, prompt: str, image: np.ndarray | None = None,
               null_prompt: bool = False, input_codes: list[int] | None = None) -> TokenSequence:
        spec = get_task(task)
        sp, seq = self.special, TokenSequence(task)
        words = self.words(prompt)
        if null_prompt:
            words = [sp.null] * len(words)
        seq.text([sp.bos, sp.task(task)])
        seq.prompt = "" if null_prompt else prompt
        if spec.needs_image and image is None and input_codes is None:
            raise ValueError(f"task {task!r} needs an input image")
        if spec.layout == "answer":
            if spec.needs_image or image is not None:  # needs_image=False: an optional image
                seq.image = self.process(image)
                seq.text([sp.image_start] + [sp.und_slot] * self.und_tokens + [sp.image_end])
            seq.prompt_span = (len(seq.input_ids), len(seq.input_ids) + len(words))
            seq.text(words + [sp.sep])
        elif spec.layout == "edit":
            if input_codes is None:
                input_codes = self.image_codes(self.process(image))
            seq.text([sp.image_start])
            seq.codes(input_codes, sp.code_slot)
            seq.prompt_span = (len(seq.input_ids) + 1, len(seq.input_ids) + 1 + len(words))
            seq.text([sp.image_end] + words + [sp.image_start])
        else:  # "generate"
            seq.prompt_span = (len(seq.input_ids), len(seq.input_ids) + len(words))
            seq.text(words + [sp.image_start])
        return seq

    def conversation(self, task: str, turns: Sequence) -> TokenSequence:
        """The sequence of a conversation (a list of utamoe.data.conversations.Turn): loss on
        the assistant turns; ending on a user turn, it is the prefix of the next answer."""
        spec = get_task(task)
        if spec.layout != "answer":
            raise ValueError(f"task {task!r} has layout {spec.layout!r}; conversations are "
                             "answer-layout (text) tasks")
        sp, seq = self.special, TokenSequence(task)
        seq.text([sp.bos, sp.task(task)])
        for k, turn in enumerate(turns):
            if turn.role == "assistant":
                seq.text(self.answer_words(turn.text) + [sp.eos], loss=True)
                continue
            if turn.image is not None:
                image = self.process(turn.image)
                if seq.image is None:
                    seq.image = image
                else:
                    seq.extra_images.append(image)
                seq.text([sp.image_start] + [sp.und_slot] * self.und_tokens + [sp.image_end])
            words = self.words(turn.text)
            if k == 0:
                seq.prompt = turn.text
                seq.prompt_span = (len(seq.input_ids), len(seq.input_ids) + len(words))
            seq.text(words + [sp.sep])
        if spec.needs_image and seq.image is None:
            raise ValueError(f"task {task!r} needs an input image: give a user turn an image")
        return seq

    def sample(self, sample: Sample, null_prompt: bool = False, target_codes=None,
               input_codes=None) -> TokenSequence:
        """The full training sequence of a sample (prefix + target with loss)."""
        if sample.turns is not None:
            return self.conversation(sample.task, sample.turns)
        seq = self.prefix(sample.task, sample.prompt, sample.image, null_prompt, input_codes)
        if get_task(sample.task).output == "text":
            if sample.target is None:
                raise ValueError(f"sample {sample.id}: task {sample.task!r} needs a text target")
            seq.text(self.answer_words(sample.target) + [self.special.eos], loss=True)
        else:
            if target_codes is None:
                if sample.target_image is None:
                    raise ValueError(f"sample {sample.id}: task {sample.task!r} needs a target image")
                target_codes = self.image_codes(self.process(sample.target_image))
            seq.codes(target_codes, self.special.code_slot, loss=True)
        return seq


_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)


def _with_images(sample: Sample) -> Sample:
    """A sample loaded without its images (paths only), with a placeholder where an image is
    named but not loaded (a turn's, or the input image of an answer task, which is optional when
    the task does not need one), so that counting its sequence counts that image's slots."""
    changes: dict = {}
    if sample.image is None and sample.image_path:
        changes["image"] = _PLACEHOLDER
    if sample.turns and any(t.image is None and t.image_path for t in sample.turns):
        changes["turns"] = [dataclasses.replace(t, image=_PLACEHOLDER)
                            if t.image is None and t.image_path else t for t in sample.turns]
    return dataclasses.replace(sample, **changes) if changes else sample


def training_sequences(encoder: Encoder, samples: list[Sample], cfg_dropout: float,
                       rng: np.random.Generator, codes: dict | None = None) -> list[TokenSequence]:
    """Training sequences; each generation prompt becomes <null> with probability cfg_dropout.

    `codes` may map (sample id, "image" | "target") to precomputed VQ codes, so that a
    training loop encodes every image once rather than at every epoch."""
    codes = codes or {}
    out = []
    for s in samples:
        drop = s.group == "gen" and cfg_dropout > 0 and rng.random() < cfg_dropout
        out.append(encoder.sample(s, null_prompt=drop, target_codes=codes.get((s.id, "target")),
                                  input_codes=codes.get((s.id, "image"))))
    return out


def code_images(samples) -> list[tuple[str, str, np.ndarray]]:
    """(sample id, "image" | "target", image) of every image that becomes VQ codes: the
    targets and inputs of the samples whose task produces images."""
    return [(s.id, kind, img) for s in samples if get_task(s.task).output == "image"
            for kind, img in (("image", s.image), ("target", s.target_image)) if img is not None]


def precompute_codes(samples, encoder: Encoder, image_tokenizer, batch_size: int = 256,
                     progress=None, done=None) -> dict[tuple[str, str], list[int]]:
    """VQ codes of `code_images(samples)` (processed by the encoder first), in batches, so a
    training loop or an analysis encodes every image once; `done` holds codes to keep."""
    codes = dict(done or {})
    todo = [item for item in code_images(samples) if item[:2] not in codes]
    device = next(image_tokenizer.parameters()).device
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        with torch.no_grad():
            pix = pixel_values([encoder.process(img) for _, _, img in chunk]).to(device)
            out = image_tokenizer.encode(pix)
        for (sid, kind, _), c in zip(chunk, out.reshape(len(chunk), -1).tolist()):
            codes[(sid, kind)] = c
        if progress is not None:
            progress(len(chunk))
    return codes


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, S)
    code_ids: torch.Tensor  # (B, S), -1 where not a code
    attention_mask: torch.Tensor  # (B, S)
    text_labels: torch.Tensor  # (B, S), IGNORE where no loss
    code_labels: torch.Tensor  # (B, S)
    group_ids: torch.Tensor  # (B,) index into utamoe.tasks.GROUPS
    task_ids: torch.Tensor  # (B,) index into utamoe.tasks.task_names()
    pixel_values: torch.Tensor | None  # (N_und, 3, H, W) in [-1, 1], in row order
    # Each row's instruction: its text and its token positions (B, S) bool (MoME's routers).
    prompts: list[str] | None = None
    prompt_mask: torch.Tensor | None = None

    def to(self, device) -> Batch:
        return Batch(**{f.name: (v.to(device) if torch.is_tensor(v) else v)
                        for f in fields(self) for v in [getattr(self, f.name)]})

    @property
    def tasks(self) -> list[str]:
        names = task_names()
        return [names[i] for i in self.task_ids.tolist()]


def blank_rows(B: int, S: int, pad_id: int) -> tuple[torch.Tensor, ...]:
    """B rows of S padding slots: input ids, code ids (-1), attention mask, text and code labels
    (IGNORE), prompt mask; what `collate` and the packer (utamoe.data.packing) fill in."""
    return (torch.full((B, S), pad_id, dtype=torch.long), torch.full((B, S), -1, dtype=torch.long),
            torch.zeros(B, S, dtype=torch.long), torch.full((B, S), IGNORE, dtype=torch.long),
            torch.full((B, S), IGNORE, dtype=torch.long), torch.zeros(B, S, dtype=torch.bool))


def collate(seqs: list[TokenSequence], pad_id: int, left_pad: bool = False) -> Batch:
    """Pad sequences into a Batch (right padding for training, left padding for generation)."""
    n = max(len(s.input_ids) for s in seqs)
    B = len(seqs)
    ids, codes, mask, text_labels, code_labels, prompt_mask = blank_rows(B, n, pad_id)
    for b, s in enumerate(seqs):
        m = len(s.input_ids)
        sl = slice(n - m, n) if left_pad else slice(0, m)
        tl, cl = s.labels()
        ids[b, sl], codes[b, sl], mask[b, sl] = torch.tensor(s.input_ids), torch.tensor(s.code_ids), 1
        text_labels[b, sl], code_labels[b, sl] = torch.tensor(tl), torch.tensor(cl)
        start = sl.start + s.prompt_span[0]
        prompt_mask[b, start:start + s.prompt_span[1] - s.prompt_span[0]] = True
    return Batch(ids, codes, mask, text_labels, code_labels, *sample_fields(seqs), prompt_mask)


def sample_fields(seqs: list[TokenSequence]) -> tuple:
    """The per-sample fields of a batch of `seqs`, in their order: group ids, task ids, the
    understanding images' pixel values (a conversation's several images in turn; None without
    images) and the instruction texts. Shared by `collate` and the packer."""
    images = [img for s in seqs if s.image is not None for img in (s.image, *s.extra_images)]
    names = task_names()
    return (torch.tensor([GROUPS.index(get_task(s.task).group) for s in seqs]),
            torch.tensor([names.index(s.task) for s in seqs]),
            pixel_values(images) if images else None, [s.prompt for s in seqs])
