"""How likely the model finds a given answer: the log-probability of a continuation after a
prompt (teacher forcing, one forward pass per batch), and whether greedy decoding would have
produced it token for token. This is what multiple-choice evaluation asks of a model (lmms-eval's
`loglikelihood`, utamoe.eval.lmms): score every option, take the most likely.

The prompt is laid out as the task's prefix (utamoe.data.sequences: the same markers, image
slots and `<sep>` as generation), the continuation's tokens follow it, and only they are
scored; no `<eos>` is added, so "A" and "A red circle" are scored as prefixes of an answer, the
harnesses' convention. Rows are right-padded and routed as generation routes them
(`UnifiedModel.routing`: oracle groups, instance embeddings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from utamoe.data.sequences import IGNORE, Encoder, collate


@dataclass
class Continuation:
    """A prompt of `task` (with its image, if the task reads one) and the text to score after it."""

    task: str
    prompt: str
    continuation: str
    image: np.ndarray | None = None


@torch.no_grad()
def continuation_logprobs(model, encoder: Encoder, items: Sequence[Continuation]
                          ) -> list[tuple[float, bool]]:
    """(sum of the continuation tokens' log-probabilities, whether each was the argmax) per item;
    a continuation with no tokens scores (0.0, True)."""
    seqs = []
    for it in items:
        seq = encoder.prefix(it.task, it.prompt, it.image)
        seq.text(encoder.words(it.continuation), loss=True)
        seqs.append(seq)
    device = model.gen_embed.weight.device
    batch = collate(seqs, encoder.special.pad).to(device)
    instances = model.instance_embeddings(batch)
    with model.routing(batch, instances)():
        emb = model.embed(batch.input_ids, batch.code_ids, batch.pixel_values, instances)
        h, _ = model.hidden(emb, batch.attention_mask)
    out = []
    for b in range(len(seqs)):
        pos = batch.text_labels[b] != IGNORE
        if not bool(pos.any()):
            out.append((0.0, True))
            continue
        logp = F.log_softmax(model.lm_head(h[b][pos]).float(), dim=-1)
        labels = batch.text_labels[b][pos]
        total = float(logp.gather(-1, labels[:, None]).sum())
        out.append((total, bool((logp.argmax(-1) == labels).all())))
    return out
