"""ADT (MoME's adaptive deformable transformation): the grid_sample path equals the hand-written
bilinear loop in values and gradients, any input grid gives Q queries, layers=0 is pooling, and a
zero-offset single point reads exactly the value at its reference point."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from utamoe.vision.deformable import (
    AdaptiveDeformableTransform,
    DeformableCrossAttention,
    deformable_sample,
    deformable_sample_reference,
    reference_points,
)


def assert_close(actual, expected, name="", atol=1e-5):
    """Tight, with atol relative to the tensor's scale: parameter gradients summed over B*Q reach
    ~50, where fp32 summation order alone moves elements by ~1e-4 (float64 paths agree to 1e-15)."""
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, atol=atol * scale, rtol=1e-4,
                               msg=lambda m: f"{name}: {m}")


def make_adt(seed=0, dim=16, perturb=True, **kw) -> AdaptiveDeformableTransform:
    torch.manual_seed(seed)
    adt = AdaptiveDeformableTransform(dim, **kw)
    if perturb:  # init has query-independent offsets and uniform attention: make both depend on x
        with torch.no_grad():
            adt.query_pos.normal_(std=0.5)
            for layer in adt.layers:
                layer.cross.sampling_offsets.weight.normal_(std=1.0)  # ~4 cells: between, outside
                layer.cross.sampling_offsets.bias.add_(0.37)
                layer.cross.attention_weights.weight.normal_(std=0.5)
    return adt


def twin(adt: AdaptiveDeformableTransform, **kw) -> AdaptiveDeformableTransform:
    heads, points = (adt.layers[0].cross.heads, adt.layers[0].cross.points) if adt.layers else (4, 4)
    other = AdaptiveDeformableTransform(adt.dim, adt.query_grid, len(adt.layers), heads, points, **kw)
    other.load_state_dict(adt.state_dict())
    return other.to(adt.query_pos.dtype)


def run(adt, fmap, g):
    fmap = fmap.clone().requires_grad_(True)
    adt.zero_grad()
    y = adt(fmap)
    (y * g).sum().backward()
    return y.detach(), fmap.grad, {n: p.grad.clone() for n, p in adt.named_parameters()}


@pytest.mark.parametrize("hw, kw", [
    ((5, 7), dict(query_grid=3, layers=2, heads=4, points=3)),
    ((4, 4), dict(query_grid=2, layers=1, heads=2, points=1)),
], ids=["5x7-g3-l2", "4x4-g2-p1"])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
def test_vectorised_equals_reference_values_and_gradients(hw, kw, dtype, atol):
    fast = make_adt(**kw).to(dtype)
    ref = twin(fast, impl="reference")
    torch.manual_seed(1)
    fmap = torch.randn(2, *hw, 16, dtype=dtype)
    g = torch.randn(2, kw["query_grid"] ** 2, 16, dtype=dtype)
    seen = []  # the cross-attention inputs, to check where the points land
    fast.layers[0].cross.register_forward_pre_hook(lambda m, args: seen.append(args))
    y1, gx1, gp1 = run(fast, fmap, g)
    y2, gx2, gp2 = run(ref, fmap, g)
    query, ref_Q2, _ = seen[0]
    loc = fast.layers[0].cross.locations(query, ref_Q2, *hw).detach()
    outside = ((loc < 0) | (loc > 1)).any(-1).float().mean()
    assert 0.05 < outside < 0.95, f"{float(outside):.2f} of the points outside: test too easy"
    cells = loc * torch.tensor([hw[1], hw[0]], dtype=dtype) - 0.5
    assert (cells - cells.round()).abs().min(-1).values.gt(1e-3).float().mean() > 0.9
    assert_close(y1, y2, "output", atol)
    assert_close(gx1, gx2, "fmap grad", atol)
    assert gp1.keys() == gp2.keys()
    for name in gp1:
        if kw["points"] == 1 and "attention_weights" in name:  # softmax over one point: constant
            assert gp1[name].abs().max() == gp2[name].abs().max() == 0, name
            continue
        assert gp1[name].abs().sum() > 0, f"no gradient reached {name}"
        assert_close(gp1[name], gp2[name], name, atol)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_sampling_functions_agree_on_locations_in_and_out_of_the_map(dtype, atol):
    torch.manual_seed(2)
    B, H, W, N, C, Q, P = 2, 3, 5, 2, 3, 4, 3
    inputs = [torch.randn(B, H, W, N, C), torch.rand(B, Q, N, P, 2) * 1.6 - 0.3,
              torch.rand(B, Q, N, P).softmax(-1)]
    inputs = [t.to(dtype) for t in inputs]
    g = torch.randn(B, Q, N, C, dtype=dtype)
    results = []
    for fn in (deformable_sample, deformable_sample_reference):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        (out * g).sum().backward()
        results.append([out.detach()] + [t.grad for t in leaves])
    for name, a, b in zip(["out", "value grad", "loc grad", "attn grad"], *results):
        assert a.abs().sum() > 0, name
        assert_close(a, b, name, atol)
    far = torch.full((B, Q, N, P, 2), 1.5, dtype=dtype)  # a whole map away: zero padding gives exact zeros
    for fn in (deformable_sample, deformable_sample_reference):
        assert fn(inputs[0], far, inputs[2]).abs().max() == 0


def test_any_input_grid_gives_the_same_number_of_queries():
    adt = make_adt(query_grid=3, layers=1, heads=4, points=2)
    for hw in [(6, 6), (12, 12), (5, 7)]:
        y = adt(torch.randn(2, *hw, 16))
        assert y.shape == (2, 9, 16), hw
        assert torch.isfinite(y).all()


def test_pooling_only_equals_adaptive_avg_pool():
    adt = AdaptiveDeformableTransform(16, query_grid=3, layers=0)
    assert adt.query_pos.abs().max() == 0  # init zeros: ADT starts as plain pooling
    fmap = torch.randn(2, 5, 7, 16)
    expected = F.adaptive_avg_pool2d(fmap.permute(0, 3, 1, 2), 3).flatten(2).transpose(1, 2)
    torch.testing.assert_close(adt(fmap), expected)


@pytest.mark.parametrize("impl", ["vectorised", "reference"])
def test_zero_offsets_one_point_read_the_value_at_the_reference_point(impl):
    torch.manual_seed(3)
    cross = DeformableCrossAttention(4, heads=2, points=1, impl=impl)
    with torch.no_grad():  # identity projections, no offsets: the output is the sampled value
        for lin in (cross.value_proj, cross.output_proj):
            lin.weight.copy_(torch.eye(4))
        cross.sampling_offsets.bias.zero_()
    fmap = torch.randn(1, 4, 4, 4)
    blocks = fmap.view(1, 2, 2, 2, 2, 4).mean((2, 4)).reshape(1, 4, 4)  # centre of a 2x2 cell
    out = cross(torch.randn(1, 4, 4), reference_points(2), fmap)
    assert_close(out, blocks, "4x4 map, 2x2 queries")
    fmap = torch.randn(1, 3, 3, 4)  # centres of 1-pixel cells: exactly the pixels
    assert_close(cross(torch.randn(1, 9, 4), reference_points(3), fmap), fmap.reshape(1, 9, 4), "3x3")
    fmap = torch.randn(1, 2, 3, 4)  # centre (0.5, 0.5) of a 2x3 map: pixel column 1, between rows
    out = cross(torch.randn(1, 1, 4), reference_points(1), fmap)
    assert_close(out[0, 0], (fmap[0, 0, 1] + fmap[0, 1, 1]) / 2, "2x3")


def test_offset_init_is_the_deformable_detr_pattern_in_cells():
    cross = DeformableCrossAttention(8, heads=8, points=2)
    bias = cross.sampling_offsets.bias.detach().view(8, 2, 2)  # (N, P, (x, y)) in cells
    # Head n points at angle 2*pi*n/8, scaled onto the unit square's border (diagonals -> (1, 1)).
    dirs = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]])
    expected = dirs[:, None].float() * torch.tensor([1.0, 2.0])[None, :, None]
    torch.testing.assert_close(bias, expected, atol=1e-5, rtol=0)  # fp32 cos/sin
    assert cross.sampling_offsets.weight.abs().max() == 0
    assert cross.attention_weights.weight.abs().max() == cross.attention_weights.bias.abs().max() == 0
    # An offset of one cell moves by 1/W in x and 1/H in y (here a 2 x 5 map: H=2, W=5).
    ref_Q2 = reference_points(2)
    loc = cross.locations(torch.randn(1, 4, 8), ref_Q2, 2, 5)
    torch.testing.assert_close(loc[0, :, 1, 0], ref_Q2 + torch.tensor([1 / 5, 1 / 2]))
    torch.testing.assert_close(loc[0, :, 4, 1], ref_Q2 + torch.tensor([-2 / 5, 0.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs, name", [
    (dict(dim=10, heads=4), "heads"), (dict(query_grid=0), "query_grid"), (dict(layers=-1), "layers"),
    (dict(heads=0), "heads"), (dict(points=0), "points"), (dict(ffn_mult=0), "ffn_mult"),
    (dict(impl="fast"), "impl"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, name):
    args = dict(dim=16, query_grid=2) | kwargs
    with pytest.raises(ValueError, match=name):
        AdaptiveDeformableTransform(**args)


def test_wrong_feature_width_is_an_error():
    with pytest.raises(ValueError, match="fmap_BHWD"):
        AdaptiveDeformableTransform(16, 2)(torch.randn(1, 3, 3, 8))


@pytest.mark.parametrize("impl", ["vectorised", "reference"])
def test_bf16_forward_runs_and_tracks_fp32(impl):
    adt = make_adt(query_grid=2, layers=1, heads=4, points=2, impl=impl)
    fmap = torch.randn(2, 5, 6, 16)
    y32 = adt(fmap).detach()
    y16 = adt.to(torch.bfloat16)(fmap.bfloat16())
    assert y16.dtype == torch.bfloat16 and y16.shape == (2, 4, 16)
    err = (y16.float() - y32).abs().max() / y32.abs().max()
    assert err < 5e-2, f"bf16 off by {float(err):.3g} of the output scale"
