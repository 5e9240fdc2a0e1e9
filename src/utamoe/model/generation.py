"""Sampling from a UnifiedModel: text answers and images, batched, with a KV cache.

Prefixes are left-padded so that every row's next token sits in the last column;
position ids count only real tokens, so padding does not shift positions.
Text: greedy (temperature 0) or temperature / top-k sampling until <eos>.
Images: the code grid in raster order from the generation head, with
classifier-free guidance: each prompt runs twice in one batch, as written and
with its prompt replaced by <null> tokens (as in training), and
logits = uncond + scale * (cond - uncond). `use_cache=False` recomputes the whole
sequence at every step; it exists to check the cache (same tokens) and to
measure what the cache buys (benchmarks/generation_cache.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from utamoe.data.sequences import Encoder, collate


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k filter
    cfg_scale: float = 1.0  # images only; 1 = no guidance
    seed: int = 0
    max_new_tokens: int = 32  # text only


def pick(logits: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator) -> torch.Tensor:
    """Next token per row from fp32 logits (B, V)."""
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    logits = logits / cfg.temperature
    if cfg.top_k > 0:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(logits.device)


class _Stepper:
    """Feeds new input embeddings one step at a time, with or without the KV cache."""

    def __init__(self, model, emb, mask, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.mask = mask
        self.pos = (mask.cumsum(-1) - 1).clamp(min=0)
        self.emb, self.cache = emb, DynamicCache() if use_cache else None
        self.h, self.cache = model.hidden(emb, mask, self.pos, self.cache, use_cache=use_cache)

    def last(self) -> torch.Tensor:
        return self.h[:, -1]

    def step(self, new_emb: torch.Tensor) -> None:
        ones = self.mask.new_ones(self.mask.shape[0], 1)
        self.mask = torch.cat([self.mask, ones], dim=1)
        new_pos = self.pos[:, -1:] + 1
        self.pos = torch.cat([self.pos, new_pos], dim=1)
        if self.use_cache:
            self.h, self.cache = self.model.hidden(new_emb, self.mask, new_pos, self.cache, True)
        else:
            self.emb = torch.cat([self.emb, new_emb], dim=1)
            self.h, _ = self.model.hidden(self.emb, self.mask, self.pos)


@contextlib.contextmanager
def decoding(model, seqs, pad_id: int, use_cache: bool = True):
    """(batch, stepper) over left-padded prefixes, inside the model's routing context: oracle
    routing needs each row's group, MoME's instance routers each row's instruction (worked out
    once here, not at every step). Every decoding loop over prefixes starts here."""
    device = model.gen_embed.weight.device
    batch = collate(seqs, pad_id, left_pad=True).to(device)
    instances = model.instance_embeddings(batch)
    with model.routing(batch, instances)():
        emb = model.embed(batch.input_ids, batch.code_ids, batch.pixel_values, instances)
        yield batch, _Stepper(model, emb, batch.attention_mask, use_cache)


@torch.no_grad()
def generate_text(model, encoder: Encoder, tasks: list[str], prompts: list[str],
                  images: list[np.ndarray], cfg: SamplingConfig | None = None,
                  use_cache: bool = True) -> list[str]:
    """Answers for understanding prompts about images (one task per row)."""
    seqs = [encoder.prefix(t, p, img) for t, p, img in zip(tasks, prompts, images)]
    return complete_text(model, encoder, seqs, cfg, use_cache)


@torch.no_grad()
def complete_text(model, encoder: Encoder, seqs: list, cfg: SamplingConfig | None = None,
                  use_cache: bool = True) -> list[str]:
    """The text that follows each prefix (TokenSequences ending where an answer starts, e.g.
    a conversation's history up to a user turn), until <eos>. Answers keep their task spans
    when the tokenizer has span tokens (utamoe.text.span_tokens.decode_answer)."""
    from utamoe.text.span_tokens import decode_answer

    cfg = cfg or SamplingConfig()
    sp = encoder.special
    gen = torch.Generator().manual_seed(cfg.seed)
    with decoding(model, seqs, sp.pad, use_cache) as (batch, stepper):
        done = torch.zeros(len(seqs), dtype=torch.bool, device=batch.input_ids.device)
        out = []
        for _ in range(cfg.max_new_tokens):
            nxt = pick(model.lm_head(stepper.last()).float(), cfg, gen)
            nxt = nxt.masked_fill(done, sp.pad)
            out.append(nxt)
            done |= nxt == sp.eos
            if bool(done.all()):
                break
            stepper.step(model.embed(nxt[:, None]))
    tokens = torch.stack(out, dim=1).tolist() if out else [[] for _ in seqs]
    answers = []
    for row in tokens:
        row = row[: row.index(sp.eos)] if sp.eos in row else row
        answers.append(decode_answer(encoder.tokenizer, row))
    return answers


@torch.no_grad()
def generate_codes(model, encoder: Encoder, prompts: list[str], cfg: SamplingConfig | None = None,
                   edit_images: list[np.ndarray] | None = None, use_cache: bool = True,
                   task: str | None = None) -> torch.Tensor:
    """Image codes (B, N) for text-to-image prompts, or edit instructions with input images.

    `task` names a registered image task; by default the built-in t2i, or edit with images."""
    cfg = cfg or SamplingConfig()
    task = task or ("t2i" if edit_images is None else "edit")
    images = edit_images or [None] * len(prompts)
    guided = cfg.cfg_scale != 1.0
    seqs = [encoder.prefix(task, p, img) for p, img in zip(prompts, images)]
    if guided:
        seqs += [encoder.prefix(task, p, img, null_prompt=True) for p, img in zip(prompts, images)]
    n_codes, B = model.config.code_grid**2, len(prompts)
    gen = torch.Generator().manual_seed(cfg.seed)
    with decoding(model, seqs, encoder.special.pad, use_cache) as (_, stepper):
        codes = []
        for i in range(n_codes):
            logits = model.gen_head(stepper.last()).float()
            if guided:
                cond, uncond = logits[:B], logits[B:]
                logits = uncond + cfg.cfg_scale * (cond - uncond)
            nxt = pick(logits, cfg, gen)
            codes.append(nxt)
            if i + 1 < n_codes:
                feed = torch.cat([nxt, nxt]) if guided else nxt
                stepper.step(model.code_embeddings(feed[:, None]))
    return torch.stack(codes, dim=1)


@torch.no_grad()
def generate_images(model, encoder: Encoder, prompts: list[str], cfg: SamplingConfig | None = None,
                    edit_images: list[np.ndarray] | None = None, use_cache: bool = True,
                    task: str | None = None) -> list[np.ndarray]:
    """uint8 HxWx3 images decoded from generated codes by the model's image tokenizer."""
    codes = generate_codes(model, encoder, prompts, cfg, edit_images, use_cache, task)
    g = model.config.code_grid
    pixels = model.image_tokenizer.decode(codes.view(len(prompts), g, g))
    arr = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
    return list(arr.cpu().numpy())
