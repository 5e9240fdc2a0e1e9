"""Training-side levers for learning to bind a question's words to image tokens (issue 12).

- `add_prompt_loss`: a language-model loss on the prompt of understanding samples as well
  as on the answer. The answer of a POPE probe is one token, and its gradient only rewards
  the *conjunction* of question and image (a saddle for a model trained from scratch);
  predicting the question's own words given the image ("is there a blue ..." -> "square")
  rewards looking up the image's objects from the words read so far, a dense, first-order
  signal for the same lookup. Inference is unchanged (the prompt is given).
- `scale_attention_init`: re-draw the query/key projections with a larger standard
  deviation, so attention scores are not ~0 (uniform attention) at initialisation.
- `set_qk_norm_gain`: for backbones with QK-norm (Qwen3, Gemma 3), start the query and key
  norms' weights at sqrt(gain), so attention logits start `gain` times sharper: a lower
  softmax temperature, the remedy "Eureka-moments in transformers" (Hoffmann et al., ICML
  2024) found for the plateau of two-step tasks, where near-uniform attention starves the
  query/key projections of gradient. The weights stay learnable (a learned temperature).

Both are pure functions of their inputs, so batches stay a function of their position
and resume stays exact.
"""

from __future__ import annotations

import torch
from torch import nn

from utamoe.config import ConfigError
from utamoe.data.sequences import Batch, TokenSequence
from utamoe.tasks import GROUPS, get_task


def add_prompt_loss(seqs: list[TokenSequence], image_end: int, sep: int,
                    tasks: tuple[str, ...] | list[str]) -> list[TokenSequence]:
    """Mark the prompt words (after `</img>`, up to and including `<sep>`) as loss tokens.

    Only understanding samples whose task is in `tasks` change; sequences are edited in place
    and returned. A sequence without `</img>` or `<sep>` is left as it is."""
    for seq in seqs:
        if seq.task not in tasks or get_task(seq.task).group != "und":
            continue
        ids = seq.input_ids
        try:
            start = ids.index(image_end) + 1
            stop = ids.index(sep, start)
        except ValueError:
            continue
        for t in range(start, stop + 1):
            seq.text_loss[t] = True
    return seqs


def attention_projections(lm: nn.Module, names=("q_proj", "k_proj")):
    """(name, Linear) of the backbone's query/key projections."""
    return [(n, m) for n, m in lm.named_modules()
            if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in names]


@torch.no_grad()
def scale_attention_init(lm: nn.Module, std: float, generator: torch.Generator | None = None,
                         names=("q_proj", "k_proj")) -> int:
    """Re-draw the query/key projection weights from N(0, std^2); returns how many changed."""
    layers = attention_projections(lm, names)
    for _, m in layers:
        m.weight.normal_(0.0, std, generator=generator)
    return len(layers)


def qk_norms(lm: nn.Module) -> list[nn.Module]:
    """The backbone's per-head query and key norms (Qwen3 / Gemma 3 `q_norm`, `k_norm`)."""
    return [m for n, m in lm.named_modules() if n.rsplit(".", 1)[-1] in ("q_norm", "k_norm")]


@torch.no_grad()
def set_qk_norm_gain(lm: nn.Module, gain: float) -> int:
    """Start every query/key norm weight at sqrt(`gain`) (logits x `gain`); returns how many.
    Gemma's norms compute x * (1 + weight), so their weight becomes sqrt(gain) - 1."""
    norms = qk_norms(lm)
    if not norms:
        raise ConfigError("train.qk_norm_gain needs a backbone with query/key norms (q_norm, "
                         "k_norm: model_type qwen3 or gemma3_text); this one has none")
    for m in norms:
        offset = 1.0 if "Gemma" in type(m).__name__ else 0.0
        m.weight.fill_(gain ** 0.5 - offset)
    return len(norms)


def split_by_group(batch) -> list:
    """The rows of a mixed batch as one sub-batch per task group, each cut to its own longest
    sequence (right padding), in group order (understanding first).

    A mixed batch is padded to its longest sequence (an edit sample, ~140 tokens), so its
    understanding rows (~25-75 tokens) are mostly padding that the dense layers still compute.
    Each group's loss is a mean over its own tokens, so the sum of the sub-batches' losses is
    the mixed batch's loss (up to the router's auxiliary losses, which are then computed per
    sub-batch): the same step for fewer positions. `train.split_groups`."""

    und = GROUPS.index("und")
    parts = []
    for g in batch.group_ids.unique(sorted=True).tolist():
        rows = (batch.group_ids == g).nonzero()[:, 0]
        n = int(batch.attention_mask[rows].sum(1).max())
        # pixel_values hold the understanding rows' images (every und row has one), in row order
        pix = batch.pixel_values if g == und else None
        parts.append(Batch(batch.input_ids[rows, :n], batch.code_ids[rows, :n],
                           batch.attention_mask[rows, :n], batch.text_labels[rows, :n],
                           batch.code_labels[rows, :n], batch.group_ids[rows], batch.task_ids[rows],
                           pix, None if batch.prompts is None else [batch.prompts[r] for r in rows.tolist()],
                           None if batch.prompt_mask is None else batch.prompt_mask[rows, :n]))
    return parts
