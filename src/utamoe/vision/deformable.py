"""Adaptive Deformable Transformation (ADT, MoME, NeurIPS 2024): any feature grid -> Q queries.

Encoders in a mixture (MoVE) emit feature maps of different grids (SigLIP 27x27, a ViT 3x3, ...).
ADT gives all of them one fixed length without throwing away the fine map:

    fmap_BHWD --adaptive avg pool to G x G (raster order) + learned position--> x_BQD  (the queries)
    x_BQD --[layers x (pre-norm, residual)]-->
        self-attention over the queries
        deformable cross-attention: each query samples the ORIGINAL fmap at P learned offsets per
            head around its reference point (the centre of its pooled cell), softmax-weighted
        GELU FFN (D -> ffn_mult*D -> D)
    --> (B, Q, D)            (no final norm; layers=0 is pooling only)

In MoVE (utamoe.vision.mixture) each encoder's aligner runs first, so ADT works at the
backbone width and its output goes to the backbone as it is.

Cross-attention follows Deformable DETR with one feature level. Sampling is bilinear with zeros
outside the map (grid_sample, align_corners=False). `impl="vectorised"` samples every head and
point in one grid_sample over (B*N) value maps; `impl="reference"` loops over heads and points
and interpolates by hand (gather the four neighbours), so the tests compare two independent
implementations in values and gradients. Locations, weights and sampling run in at least fp32
(a bf16 location is off by a sizeable fraction of a cell on a large map); the output is cast back.

Legend: B batch, H W map rows/cols, D width, Q = G*G queries (G = query_grid), N heads,
P points per head, C = D // N channels per head, 2 = (x, y) in normalised [0, 1] coords.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IMPLS = ("vectorised", "reference")


def reference_points(query_grid: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(Q, 2) centres (x, y) of the G x G pooled cells in raster order, normalised to [0, 1].

    The ideal cell centre (i + 0.5) / G: it is the same for every input grid; where G does not
    divide H, adaptive pooling's integer cells lie within half a pixel of it."""
    c = (torch.arange(query_grid, device=device, dtype=dtype) + 0.5) / query_grid
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1)


def deformable_sample(value_BHWNC, loc_BQNP2, attn_BQNP) -> torch.Tensor:
    """Fast path: out_BQNC = sum_p attn * bilinear(value of head n, loc), via one grid_sample."""
    B, H, W, N, C = value_BHWNC.shape
    Q, P = loc_BQNP2.shape[1], loc_BQNP2.shape[3]
    value_XCHW = value_BHWNC.permute(0, 3, 4, 1, 2).reshape(B * N, C, H, W)  # X = B*N
    grid_XQP2 = loc_BQNP2.permute(0, 2, 1, 3, 4).reshape(B * N, Q, P, 2) * 2 - 1  # [-1, 1]
    s_XCQP = F.grid_sample(value_XCHW, grid_XQP2, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    w_X1QP = attn_BQNP.permute(0, 2, 1, 3).reshape(B * N, 1, Q, P)
    out_XCQ = (s_XCQP * w_X1QP).sum(-1)
    return out_XCQ.view(B, N, C, Q).permute(0, 3, 1, 2)


def bilinear_reference(value_BLC, loc_BQ2, H: int, W: int) -> torch.Tensor:
    """Bilinear sample (zeros outside) of a flattened (B, H*W, C) map at (B, Q, 2) -> (B, Q, C)."""
    # align_corners=False: pixel j covers [j, j+1) of W cells, its centre sits at (j + 0.5) / W.
    px, py = loc_BQ2[..., 0] * W - 0.5, loc_BQ2[..., 1] * H - 0.5
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0  # in [0, 1): the gradient w.r.t. the location flows through these
    out_BQC = value_BLC.new_zeros(*px.shape, value_BLC.shape[-1])
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        w_BQ = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
        inside_BQ = (xi >= 0) & (xi <= W - 1) & (yi >= 0) & (yi <= H - 1)
        idx_BQ = (yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1)).long()
        nb_BQC = value_BLC.gather(1, idx_BQ.unsqueeze(-1).expand(-1, -1, value_BLC.shape[-1]))
        out_BQC = out_BQC + nb_BQC * (w_BQ * inside_BQ)[..., None]
    return out_BQC


def deformable_sample_reference(value_BHWNC, loc_BQNP2, attn_BQNP) -> torch.Tensor:
    """Reference path: loops over heads and points, bilinear interpolation written out by hand."""
    B, H, W, N, C = value_BHWNC.shape
    heads = []
    for n in range(N):
        value_BLC = value_BHWNC[:, :, :, n].reshape(B, H * W, C)
        acc_BQC = 0
        for p in range(loc_BQNP2.shape[3]):
            s_BQC = bilinear_reference(value_BLC, loc_BQNP2[:, :, n, p], H, W)
            acc_BQC = acc_BQC + s_BQC * attn_BQNP[:, :, n, p, None]
        heads.append(acc_BQC)
    return torch.stack(heads, dim=2)


class DeformableCrossAttention(nn.Module):
    """Single-level deformable attention from Q queries into one (B, H, W, D) feature map."""

    def __init__(self, dim: int, heads: int, points: int, impl: str = "vectorised"):
        super().__init__()
        self.heads, self.points, self.impl = heads, points, impl
        self.value_proj = nn.Linear(dim, dim)
        self.sampling_offsets = nn.Linear(dim, heads * points * 2)
        self.attention_weights = nn.Linear(dim, heads * points)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Deformable DETR: offsets start as a fixed pattern (head n looks in direction 2*pi*n/N,
        # point p at distance p+1 cells, on the unit square's border), independent of the query;
        # attention starts uniform over the points; value/output projections Xavier.
        nn.init.zeros_(self.sampling_offsets.weight)
        theta_N = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        dir_N2 = torch.stack([theta_N.cos(), theta_N.sin()], dim=-1)
        dir_N2 = dir_N2 / dir_N2.abs().max(-1, keepdim=True).values
        scale_P = torch.arange(1, self.points + 1, dtype=torch.float32)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_((dir_N2[:, None] * scale_P[None, :, None]).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def locations(self, query_BQD, ref_Q2, H: int, W: int) -> torch.Tensor:
        """(B, Q, N, P, 2) sampling points: reference + offsets (learned in cells) / (W, H)."""
        B, Q, _ = query_BQD.shape
        acc = torch.promote_types(query_BQD.dtype, torch.float32)
        off_BQNP2 = self.sampling_offsets(query_BQD).to(acc).view(B, Q, self.heads, self.points, 2)
        cells_2 = torch.tensor([W, H], dtype=acc, device=query_BQD.device)
        return ref_Q2.to(acc)[None, :, None, None] + off_BQNP2 / cells_2

    def forward(self, query_BQD, ref_Q2, fmap_BHWD) -> torch.Tensor:
        B, Q, D = query_BQD.shape
        H, W = fmap_BHWD.shape[1:3]
        acc = torch.promote_types(query_BQD.dtype, torch.float32)
        value_BHWNC = self.value_proj(fmap_BHWD).to(acc).view(B, H, W, self.heads, -1)
        loc_BQNP2 = self.locations(query_BQD, ref_Q2, H, W)
        logits = self.attention_weights(query_BQD).to(acc).view(B, Q, self.heads, self.points)
        attn_BQNP = logits.softmax(-1)
        sample = deformable_sample if self.impl == "vectorised" else deformable_sample_reference
        out_BQNC = sample(value_BHWNC, loc_BQNP2, attn_BQNP)
        return self.output_proj(out_BQNC.reshape(B, Q, D).to(query_BQD.dtype))


class DeformableLayer(nn.Module):
    """Pre-norm residual block: query self-attention, deformable cross-attention, GELU FFN."""

    def __init__(self, dim: int, heads: int, points: int, ffn_mult: int, impl: str):
        super().__init__()
        self.heads = heads
        self.norm_self, self.norm_cross, self.norm_ffn = (nn.LayerNorm(dim) for _ in range(3))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.self_out = nn.Linear(dim, dim)
        self.cross = DeformableCrossAttention(dim, heads, points, impl)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(),
                                 nn.Linear(ffn_mult * dim, dim))

    def forward(self, x_BQD, ref_Q2, fmap_BHWD) -> torch.Tensor:
        B, Q, D = x_BQD.shape
        qkv = self.qkv(self.norm_self(x_BQD)).view(B, Q, 3, self.heads, -1).transpose(1, 3)
        att_BNQC = F.scaled_dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        x_BQD = x_BQD + self.self_out(att_BNQC.transpose(1, 2).reshape(B, Q, D))
        x_BQD = x_BQD + self.cross(self.norm_cross(x_BQD), ref_Q2, fmap_BHWD)
        return x_BQD + self.ffn(self.norm_ffn(x_BQD))


def _check(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"AdaptiveDeformableTransform: {name} must be an int >= {minimum}, "
                         f"got {value!r}")


class AdaptiveDeformableTransform(nn.Module):
    """(B, H, W, D) feature map of any grid -> (B, query_grid**2, D) queries (MoME's ADT)."""

    def __init__(self, dim: int, query_grid: int, layers: int = 1, heads: int = 4, points: int = 4,
                 ffn_mult: int = 2, impl: str = "vectorised"):
        super().__init__()
        for name, value, minimum in (("dim", dim, 1), ("query_grid", query_grid, 1),
                                     ("layers", layers, 0), ("heads", heads, 1),
                                     ("points", points, 1), ("ffn_mult", ffn_mult, 1)):
            _check(name, value, minimum)
        if dim % heads:
            raise ValueError(f"AdaptiveDeformableTransform: dim ({dim}) must be divisible by "
                             f"heads ({heads}); pick heads among the divisors of dim")
        if impl not in IMPLS:
            raise ValueError(f"AdaptiveDeformableTransform: impl must be one of {IMPLS}, got {impl!r}")
        self.dim, self.query_grid = dim, query_grid
        # Zeros: at init the queries are exactly the pooled features (ADT starts as pooling).
        self.query_pos = nn.Parameter(torch.zeros(query_grid * query_grid, dim))
        self.layers = nn.ModuleList(DeformableLayer(dim, heads, points, ffn_mult, impl)
                                    for _ in range(layers))

    @property
    def num_queries(self) -> int:
        return self.query_grid * self.query_grid

    def forward(self, fmap_BHWD: torch.Tensor) -> torch.Tensor:
        if fmap_BHWD.dim() != 4 or fmap_BHWD.shape[-1] != self.dim:
            raise ValueError(f"AdaptiveDeformableTransform: fmap_BHWD must be (B, H, W, {self.dim}), "
                             f"got {tuple(fmap_BHWD.shape)}")
        pooled_BDGG = F.adaptive_avg_pool2d(fmap_BHWD.permute(0, 3, 1, 2), self.query_grid)
        x_BQD = pooled_BDGG.flatten(2).transpose(1, 2) + self.query_pos.to(fmap_BHWD.dtype)
        ref_Q2 = reference_points(self.query_grid, fmap_BHWD.device, torch.float64)  # cast in use
        for layer in self.layers:
            x_BQD = layer(x_BQD, ref_Q2, fmap_BHWD)
        return x_BQD

    def extra_repr(self) -> str:
        return f"dim={self.dim}, query_grid={self.query_grid}"
