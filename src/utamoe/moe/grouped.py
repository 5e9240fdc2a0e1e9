"""Grouped matrix multiply over expert-sorted rows, with a plain loop as fallback.

Shapes (legend used across utamoe.moe): T tokens, K experts per token, M = rows
after dispatch (T*K), D model width, F expert hidden width, E experts, G groups.

`grouped_matmul(x_MI, w_EIO, offsets_E)` multiplies the rows of expert e (a
contiguous slice of x, in expert order) by w[e]. The fast path is one call to
`torch.nn.functional.grouped_mm` (or `torch._grouped_mm` on older torch); it
needs 16-byte aligned strides, so unaligned shapes and torch builds without the
kernel take the loop, which computes the same thing one `mm` per expert.
"""

from __future__ import annotations

import torch

_GROUPED_MM = getattr(torch.nn.functional, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
_KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def _aligned(t: torch.Tensor) -> bool:
    size = t.element_size()
    return t.data_ptr() % 16 == 0 and all(
        (s * size) % 16 == 0 for s, n in zip(t.stride(), t.shape) if s != 1 and n > 1
    )


def grouped_mm_available(x: torch.Tensor, w: torch.Tensor) -> bool:
    """True when the fused kernel can take these operands (else `grouped_matmul` loops)."""
    return (
        _GROUPED_MM is not None
        and x.dtype == w.dtype
        and x.dtype in _KERNEL_DTYPES
        and _aligned(x)
        and _aligned(w)
        and (x.device.type != "cuda" or torch.cuda.get_device_capability(x.device) >= (8, 0))
    )


def loop_matmul(x_MI: torch.Tensor, w_EIO: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """Reference: one matmul per expert over its slice of rows (empty experts skipped)."""
    counts_E = torch.diff(offsets_E, prepend=offsets_E.new_zeros(1)).tolist()
    pieces = [
        chunk @ w_EIO[e] for e, chunk in enumerate(torch.split(x_MI, counts_E)) if chunk.shape[0]
    ]
    if not pieces:
        return x_MI.new_zeros(0, w_EIO.shape[-1])
    return torch.cat(pieces)


def grouped_matmul(x_MI: torch.Tensor, w_EIO: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """Rows of expert e times w[e], for all experts in one kernel call when possible.

    `offsets_E` holds the int32 cumulative end row of each expert (on x's device).
    """
    if grouped_mm_available(x_MI, w_EIO):
        return _GROUPED_MM(x_MI, w_EIO, offs=offsets_E)
    return loop_matmul(x_MI, w_EIO, offsets_E)
