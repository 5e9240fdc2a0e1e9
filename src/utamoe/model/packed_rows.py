"""Attention and instruction inputs for packed rows (utamoe.data.packing): several samples per
row, each attending only to itself.

A packed batch carries, per token, its sample (`sample_ids`, -1 for padding) and its
position inside the sample (`position_ids`, restarting at 0). The decoder needs
block-diagonal causal attention from them; how to say that depends on the attention
backend of the installed transformers (5.x, checked in its masking_utils):

- "mask": an explicit 4D mask (B, 1, S, S), which every decoder takes as already
  prepared and passes to its attention function unchanged: boolean (True = attend)
  for SDPA, additive float (0 / dtype min) for eager. The default on SDPA and eager
  (the CPU path): explicit, and independent of any detection heuristics. It costs
  B * S * S booleans, built once per forward and shared by all layers.
- "positions": no mask, only `position_ids`; transformers then finds the sample
  boundaries itself where positions do not increase by one (`find_packed_sequence_indices`)
  and builds the mask its backend wants (a FlexAttention BlockMask that skips the masked
  blocks, or, for SDPA/eager, the same 4D mask as above), composed with sliding windows;
  FlashAttention 2/3 run their variable-length kernels from the positions (which
  transformers accepts for one row only: pack with `max_tokens=0`). The default for
  flex_attention, flash_attention_* and configs with sliding-window layers (Gemma 3).

Both give the same math on CPU SDPA (tests/model/test_packing.py); `block_causal_mask_reference`
is the per-sample loop the vectorised mask is tested against.

Shapes: B rows, S row width, D model width, N samples of the batch.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("auto", "mask", "positions")


def block_causal_mask(sample_ids_BS: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) bool, True where query t may attend to key s: same sample and s <= t.

    Padding (-1) forms a block of its own (a row's padding is its tail), so no query row is
    fully masked (softmax over nothing would give NaN); real tokens never see it."""
    S = sample_ids_BS.shape[1]
    same_BSS = sample_ids_BS[:, :, None] == sample_ids_BS[:, None, :]
    causal_SS = torch.ones(S, S, dtype=torch.bool, device=sample_ids_BS.device).tril()
    return (same_BSS & causal_SS)[:, None]


def block_causal_mask_reference(sample_ids_BS: torch.Tensor) -> torch.Tensor:
    """The slow reference of `block_causal_mask`: one causal block per run of equal ids."""
    B, S = sample_ids_BS.shape
    out = torch.zeros(B, 1, S, S, dtype=torch.bool)
    for b in range(B):
        ids = sample_ids_BS[b].tolist()
        start = 0
        for t in range(1, S + 1):
            if t == S or ids[t] != ids[start]:
                out[b, 0, start:t, start:t] = torch.ones(t - start, t - start, dtype=torch.bool).tril()
                start = t
    return out


def _sliding(config) -> bool:
    return "sliding_attention" in (getattr(config, "layer_types", None) or ())


def attention_mode(config, mode: str = "auto") -> str:
    """"mask" or "positions" for a decoder config (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"packed attention mode {mode!r}: choose one of {', '.join(MODES)}")
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    if mode == "mask" and impl not in ("sdpa", "eager"):
        raise ValueError(f"packed attention mode 'mask' builds SDPA/eager masks, but the backbone "
                         f"uses {impl!r}; use mode 'positions' (or 'auto')")
    if mode != "auto":
        return mode
    return "mask" if impl in ("sdpa", "eager") and not _sliding(config) else "positions"


def packed_attention(lm: nn.Module, sample_ids_BS: torch.Tensor, position_ids_BS: torch.Tensor,
                     dtype: torch.dtype = torch.float32, mode: str = "auto") -> dict:
    """`attention_mask` and `position_ids` for `lm(inputs_embeds=..., **kwargs)` on packed rows."""
    config = lm.config
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    if attention_mode(config, mode) == "positions":
        if impl.startswith("flash") and sample_ids_BS.shape[0] > 1:
            raise ValueError(f"{impl} runs packed samples through its variable-length kernel only "
                             f"in one row, but the batch has {sample_ids_BS.shape[0]} rows; pack "
                             "with max_tokens=0 (train.pack_tokens: 0)")
        _check_packed_detection()
        return {"attention_mask": None, "position_ids": position_ids_BS}
    mask = block_causal_mask(sample_ids_BS)
    if impl == "eager":  # eager attention adds the mask to its scores
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min)
    return {"attention_mask": mask, "position_ids": position_ids_BS}


def _check_packed_detection() -> None:
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError as err:
        raise RuntimeError("this transformers version does not detect packed sequences from "
                           "position_ids; use packed attention mode 'mask' (SDPA or eager "
                           "attention) or upgrade transformers") from err


def sample_mean_embedding(embeddings_BSD: torch.Tensor, prompt_mask_BS: torch.Tensor,
                          sample_ids_BS: torch.Tensor, num_samples: int) -> torch.Tensor:
    """(N, D) fp32: per sample, the mean of its instruction positions' embeddings (zeros for a
    sample without instruction tokens), detached; the packed counterpart of
    utamoe.model.instructions.mean_token_embedding (one instruction per *sample*, not per row)."""
    keep = prompt_mask_BS.bool() & (sample_ids_BS >= 0)
    owner_M = sample_ids_BS[keep]
    emb_MD = embeddings_BSD.detach()[keep].float()
    sums_ND = emb_MD.new_zeros(num_samples, emb_MD.shape[-1]).index_add_(0, owner_M, emb_MD)
    counts_N = emb_MD.new_zeros(num_samples).index_add_(0, owner_M, torch.ones_like(owner_M, dtype=emb_MD.dtype))
    return sums_ND / counts_N.clamp(min=1.0)[:, None]
