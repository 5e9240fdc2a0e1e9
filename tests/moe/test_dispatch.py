"""The fast paths (fused expert by expert; sort + grouped matmul) equal the per-expert loop:
values and all gradients."""

from __future__ import annotations

import pytest
import torch

from utamoe.moe.grouped import grouped_matmul, loop_matmul
from utamoe.moe.layer import loop_dispatch, sorted_dispatch
from utamoe.moe.routers import Routing

from .helpers import PATTERNS, assert_close, grads, make_layer, pattern_ids, twin

CASES = [
    dict(routing="task_aware", num_experts=8, top_k=2, num_shared_experts=1),
    dict(routing="task_aware", num_experts=4, top_k=1, num_shared_experts=2, alpha="fixed"),
    dict(routing="topk", num_experts=8, top_k=3, num_shared_experts=0, normalize_topk=False),
    dict(routing="task_aware", num_experts=8, top_k=2, expert_type="lora", lora_rank=8),
    dict(routing="topk", num_experts=4, top_k=2, expert_type="lora", lora_rank=4, num_shared_experts=0),
]


def run(layer, x, labels, g):
    from utamoe.moe import route

    x = x.clone().requires_grad_(True)
    layer.zero_grad()
    with route(layer, task_labels=labels) as session:
        y = layer(x)
        ((y.float() * g).sum() + session.aux_loss()).backward()
    return y.detach(), x.grad, grads(layer)


@pytest.mark.parametrize("dispatch", ["fused", "grouped"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['routing']}-{c.get('expert_type', 'ffn')}-k{c['top_k']}")
def test_layer_fast_equals_loop(case, dtype, dispatch):
    fast = make_layer(seed=1, dtype=dtype, dispatch=dispatch, **case)
    ref = twin(fast, dispatch="loop")
    torch.manual_seed(2)
    x = torch.randn(3, 20, 32, dtype=dtype)
    labels = torch.tensor([0, 1, 1])
    g = torch.randn(3, 20, 32)
    y1, gx1, gp1 = run(fast, x, labels, g)
    y2, gx2, gp2 = run(ref, x, labels, g)
    assert_close(y1, y2, dtype, "output")
    assert_close(gx1, gx2, dtype, "input grad")
    assert gp1.keys() == gp2.keys()
    # Every trainable part learns: experts, both routers and alpha (when learnable).
    expected = {"router.expert_gate.weight"}
    if case["routing"] == "task_aware":
        expected.add("router.group_gate.weight")
    if case.get("num_shared_experts", 1) and case.get("alpha", "learnable") == "learnable":
        expected.add("alpha_logit")
    assert expected <= gp1.keys()
    assert any(k.startswith("experts.") for k in gp1)
    for name in gp1:
        assert gp1[name].abs().sum() > 0, f"no gradient reached {name}"
        assert_close(gp1[name], gp2[name], dtype, name)


def forced_routing(ids_TK: torch.Tensor) -> Routing:
    T, K = ids_TK.shape
    w = torch.rand(T, K, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    zeros = torch.zeros(T, dtype=torch.long)
    return Routing(ids_TK, w, ids_TK, zeros, torch.zeros(T, 8), None, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_dispatch_skewed_and_empty_experts(pattern, dtype):
    torch.manual_seed(3)
    T, K, E = 40, 2, 8
    ids = pattern_ids(pattern, T, K, E)
    layer = make_layer(seed=4, dtype=dtype, routing="topk", num_experts=E, top_k=K, num_shared_experts=0)
    x = torch.randn(T, 32, dtype=dtype)
    g = torch.randn(T, 32)
    results = []
    for dispatch in (sorted_dispatch, loop_dispatch):
        routing = forced_routing(ids)
        xi = x.clone().requires_grad_(True)
        layer.zero_grad()
        y = dispatch(xi, routing, layer.experts, E)
        (y.float() * g).sum().backward()
        results.append((y.detach(), xi.grad, routing.weights_TK.grad, grads(layer)))
    (y1, gx1, gw1, gp1), (y2, gx2, gw2, gp2) = results
    assert_close(y1, y2, dtype, "output")
    assert_close(gx1, gx2, dtype, "input grad")
    assert_close(gw1, gw2, dtype, "routing weight grad")
    for name in gp2:
        assert_close(gp1[name], gp2[name], dtype, name)
    unused = sorted(set(range(E)) - set(ids.unique().tolist()))
    for e in unused:  # an empty expert gets an exactly-zero gradient, not garbage
        assert gp1["experts.w_gate_up"][e].abs().max() == 0


def test_grouped_matmul_matches_loop_and_handles_unaligned_shapes():
    torch.manual_seed(5)
    counts = torch.tensor([3, 0, 7, 1])
    offsets = torch.cumsum(counts, 0, dtype=torch.int32)
    for inner, outer in [(16, 24), (5, 3)]:  # the second is unaligned: takes the loop fallback
        x = torch.randn(int(counts.sum()), inner)
        w = torch.randn(4, inner, outer)
        torch.testing.assert_close(grouped_matmul(x, w, offsets), loop_matmul(x, w, offsets))
        ref = torch.cat([x[0:3] @ w[0], x[3:10] @ w[2], x[10:11] @ w[3]])
        torch.testing.assert_close(grouped_matmul(x, w, offsets), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES[:1] + CASES[3:4], ids=["ffn", "lora"])
def test_padding_is_skipped_and_changes_nothing_for_real_tokens(case):
    """Padded positions are not routed: real tokens get the same outputs, losses and gradients
    as the same tokens without padding, padded positions get zeros and no gradient."""
    from utamoe.moe import route

    layer = make_layer(**case)
    torch.manual_seed(1)
    x = torch.randn(2, 7, 32)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    labels = torch.tensor([[0] * 7, [1] * 4 + [-1] * 3])
    g = torch.randn(2, 7, 32)

    def forward(inputs, lab, msk, grad_out):
        inputs = inputs.clone().requires_grad_(True)
        layer.zero_grad()
        with route(layer, task_labels=lab, attention_mask=msk) as session:
            y = layer(inputs)
            ((y * grad_out).sum() + session.aux_loss()).backward()
        return y.detach(), inputs.grad, grads(layer), {k: float(v.detach()) for k, v in session.losses().items()}

    y, dx, dw, losses = forward(x, labels, mask, g)
    keep = mask.reshape(-1).bool()
    y_ref, dx_ref, dw_ref, losses_ref = forward(
        x.reshape(-1, 32)[keep][None], labels.reshape(-1)[keep][None], None, g.reshape(-1, 32)[keep][None])
    assert_close(y.reshape(-1, 32)[keep], y_ref[0], torch.float32, "outputs")
    assert torch.count_nonzero(y.reshape(-1, 32)[~keep]) == 0
    assert_close(dx.reshape(-1, 32)[keep], dx_ref[0], torch.float32, "input grad")
    assert torch.count_nonzero(dx.reshape(-1, 32)[~keep]) == 0
    for name in dw_ref:
        assert_close(dw[name], dw_ref[name], torch.float32, name)
    assert losses.keys() == losses_ref.keys()
    for name in losses:
        assert losses[name] == pytest.approx(losses_ref[name], rel=1e-5, abs=1e-7), name
