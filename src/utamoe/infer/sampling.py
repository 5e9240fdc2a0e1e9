"""How the next token is drawn: greedy, or temperature, top-k and top-p (nucleus) sampling from a
seeded generator.

`SamplingConfig` travels with every request (utamoe.infer.engine.Request); `pick` is the one
place a token is chosen from logits, for text and image codes alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1 = no nucleus filter; else the smallest set of tokens holding this mass
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
    if cfg.top_p < 1.0:
        probs = nucleus(probs, cfg.top_p)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(logits.device)


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Probabilities (B, V) kept only on the smallest set of most likely tokens whose mass reaches
    `top_p` (the most likely token always stays), renormalised."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens more likely than each one
    sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond) (scale 1 = cond)."""
    return uncond + scale * (cond - uncond)
