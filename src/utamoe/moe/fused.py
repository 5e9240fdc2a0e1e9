"""Fused expert dispatch for gated-FFN experts: gather, both projections, the activation and the
weighted combine of one expert at a time, in one autograd Function (the CPU fast path).

Why: on CPU `F.grouped_mm` runs one `mm` per expert anyway, and the unfused chain around it
(an M x D gather, an M x 2F gate/up buffer, a separate activation, an M x D un-permute, a
combine over the K slots, and autograd's split/cat of d_gate | d_up in backward) streams
every intermediate of all M = T*K rows through memory several times. Working expert by
expert keeps each expert's rows (a few hundred) in cache from gather to combine, writes the
weight gradients of each expert straight into its slice, and needs no M x D buffer:

    forward,  per expert e with rows r (tokens tok_r, combine weights w_r):
        gu = x[tok] @ Wgu[e];  h = act(g) * u;  out[tok] += w * (h @ Wd[e])
    backward (recomputes h from the saved gate/up, never stores it):
        dh0 = dout[tok] @ Wd[e]^T;  dw = sum_F(h * dh0);  dWd[e] = (w * h)^T @ dout[tok]
        dgu = [act'(g) * u, act(g)] * (w * dh0);  dWgu[e] = x[tok]^T @ dgu;  dx[tok] += dgu @ Wgu[e]^T

Saved for backward: the M x 2F gate/up rows only (the unfused chain keeps the gathered
x, gate/up and h). The activation derivatives are ATen's own backward kernels, so the
gradients are the ones autograd computes for the unfused chain, up to summation order.

On CUDA a per-expert Python loop launches too many small kernels: there `grouped_mm` stays
the fast path (`MoEConfig.dispatch="auto"` picks, see `utamoe.moe.layer`). The references
are the grouped path (`sorted_dispatch` with `dispatch="grouped"`) and the loop dispatch;
tests/moe/test_fused.py holds all three equal in values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utamoe.moe.expert_threads import over_experts

# activation name -> (forward, backward(grad_of_output, input) -> grad_of_input), ATen kernels.
_ACTS = {
    "silu": (F.silu, torch.ops.aten.silu_backward),
    "gelu": (F.gelu, lambda grad, x: torch.ops.aten.gelu_backward(grad, x, approximate="none")),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"),
                  lambda grad, x: torch.ops.aten.gelu_backward(grad, x, approximate="tanh")),
    "relu": (F.relu, lambda grad, x: grad * (x > 0).to(grad.dtype)),
}


def fused_supported(act: str) -> bool:
    """The fused path knows this activation's derivative."""
    return act in _ACTS


def fused_expert_ffn(x_TD: torch.Tensor, w_gate_up_EDH: torch.Tensor, w_down_EFD: torch.Tensor,
                     token_M: torch.Tensor, weight_M: torch.Tensor, counts_E: list[int],
                     act: str) -> torch.Tensor:
    """sum over each token's K experts of weight * expert(x), for rows sorted by expert.

    `token_M` (int64): the token of each expert-sorted row; `weight_M`: its combine weight;
    `counts_E`: rows per expert (the sort's segment sizes). Returns (T, D) in x's dtype.
    """
    return _FusedExpertFFN.apply(x_TD.contiguous(), w_gate_up_EDH, w_down_EFD, token_M,
                                 weight_M, counts_E, act)


def _segments(counts_E: list[int]) -> list[tuple[int, slice]]:
    """(expert, its rows) for every expert with rows."""
    out, start = [], 0
    for e, n in enumerate(counts_E):
        if n:
            out.append((e, slice(start, start + n)))
        start += n
    return out


def _accumulator(x_TD: torch.Tensor) -> torch.Tensor:
    # Low-precision outputs are summed over the K slots in fp32, then rounded once.
    return torch.zeros(x_TD.shape, dtype=torch.promote_types(x_TD.dtype, torch.float32),
                       device=x_TD.device)


class _FusedExpertFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, w_gate_up, w_down, token_M, weight_M, counts_E, act):
        act_fn = _ACTS[act][0]
        inter = w_down.shape[1]
        gate_up_MH = x_TD.new_empty(token_M.numel(), 2 * inter)
        w_M = weight_M.to(x_TD.dtype)

        def expert(e, rows, out_TD):
            tok = token_M[rows]
            gu = torch.mm(x_TD.index_select(0, tok), w_gate_up[e], out=gate_up_MH[rows])
            h = act_fn(gu[:, :inter]).mul_(gu[:, inter:])
            y = torch.mm(h, w_down[e]).mul_(w_M[rows, None])
            out_TD.index_add_(0, tok, y.to(out_TD.dtype))

        out_TD = over_experts(expert, _segments(counts_E), lambda: _accumulator(x_TD))
        ctx.save_for_backward(x_TD, w_gate_up, w_down, token_M, weight_M, gate_up_MH)
        ctx.counts_E, ctx.act = counts_E, act
        return out_TD.to(x_TD.dtype)

    @staticmethod
    def backward(ctx, dout_TD):
        x_TD, w_gate_up, w_down, token_M, weight_M, gate_up_MH = ctx.saved_tensors
        need_x, need_wgu, need_wd, _, need_w = ctx.needs_input_grad[:5]
        act_fn, act_grad = _ACTS[ctx.act]
        inter = w_down.shape[1]
        dout_TD = dout_TD.to(x_TD.dtype).contiguous()
        # Each expert with rows writes its whole slice; only the others are zeroed (exactly zero
        # gradient), sparing a fill of both weight banks.
        dw_gate_up = torch.empty_like(w_gate_up) if need_wgu else None
        dw_down = torch.empty_like(w_down) if need_wd else None
        segments = _segments(ctx.counts_E)
        unused = sorted(set(range(len(ctx.counts_E))) - {e for e, _ in segments})
        for dw in (dw_gate_up, dw_down):
            if dw is not None and unused:
                dw[unused] = 0
        wide = torch.promote_types(x_TD.dtype, torch.float32)
        d_weight_M = torch.zeros_like(weight_M, dtype=wide) if need_w else None
        w_M = weight_M.to(x_TD.dtype)

        def expert(e, rows, dx_TD):
            tok, w_r = token_M[rows], w_M[rows, None]
            gu = gate_up_MH[rows]
            gate, up = gu[:, :inter], gu[:, inter:]
            a = act_fn(gate)
            h = a * up
            dout_r = dout_TD.index_select(0, tok)
            dh0 = torch.mm(dout_r, w_down[e].T)  # d(loss)/dh before the combine weight
            if need_w:
                d_weight_M[rows] = (dh0 * h).sum(-1, dtype=wide)
            if need_wd:
                torch.mm(h.mul_(w_r).T, dout_r, out=dw_down[e])
            if not (need_x or need_wgu):
                return
            dh = dh0.mul_(w_r)
            dgu = torch.empty_like(gu)
            dgu[:, :inter] = act_grad(dh * up, gate)
            torch.mul(dh, a, out=dgu[:, inter:])
            if need_wgu:
                torch.mm(x_TD.index_select(0, tok).T, dgu, out=dw_gate_up[e])
            if need_x:
                dx_TD.index_add_(0, tok, torch.mm(dgu, w_gate_up[e].T).to(dx_TD.dtype))

        dx_TD = over_experts(expert, segments,
                             lambda: _accumulator(x_TD) if need_x else None)
        dx = None if dx_TD is None else dx_TD.to(x_TD.dtype)
        dw = None if d_weight_M is None else d_weight_M.to(weight_M.dtype)
        return dx, dw_gate_up, dw_down, None, dw, None, None
