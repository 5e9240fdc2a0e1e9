"""The fused expert-by-expert dispatch (utamoe.moe.fused) against its references: the grouped
path and the per-expert loop, in values and in every gradient (input, both weight banks,
routing weights), for each activation, for empty and overloaded experts, frozen experts and
bf16; plus torch's numerical gradcheck in fp64, and which path `dispatch="auto"` takes."""

from __future__ import annotations

import pytest
import torch

from utamoe.config import ConfigError
from utamoe.moe import MoEConfig
from utamoe.moe.fused import fused_expert_ffn
from utamoe.moe.layer import loop_dispatch, sorted_dispatch
from utamoe.moe.routers import Routing

from .helpers import PATTERNS, assert_close, make_layer, pattern_ids

E, K, T, D, F = 8, 2, 40, 32, 48


def routing_for(pattern: str, dtype=torch.float32) -> Routing:
    torch.manual_seed(5)
    ids = pattern_ids(pattern, T, K, E)
    w = torch.rand(T, K, dtype=dtype, requires_grad=True)
    return Routing(ids, w, ids, torch.zeros(T, dtype=torch.long), None, None, None)


def run(dispatch, layer, x, routing, g, **kw):
    xi = x.clone().requires_grad_(True)
    layer.zero_grad()
    routing.weights_TK.grad = None
    y = dispatch(xi, routing, layer.experts, E, **kw)
    (y.to(g.dtype) * g).sum().backward()
    bank = layer.experts
    grads = [None if p.grad is None else p.grad.clone() for p in (bank.w_gate_up, bank.w_down)]
    return [y.detach(), xi.grad, routing.weights_TK.grad.clone(), *grads]


NAMES = ["output", "input grad", "routing weight grad", "w_gate_up grad", "w_down grad"]


@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_fused_equals_loop_in_fp64_and_grouped_in_fp32(act, pattern):
    layer = make_layer(seed=1, d=D, f=F, routing="topk", num_experts=E, top_k=K,
                       num_shared_experts=0)
    layer.experts.act_name = act
    torch.manual_seed(2)
    x, g = torch.randn(T, D), torch.randn(T, D)
    fused = lambda *a: sorted_dispatch(*a, fused=True)  # noqa: E731
    # fp64: fused against the loop reference, to rounding (the grouped kernel has no fp64).
    layer64 = layer.double()
    got = run(fused, layer64, x.double(), routing_for(pattern, torch.float64), g.double())
    want = run(loop_dispatch, layer64, x.double(), routing_for(pattern, torch.float64), g.double())
    for name, a, b in zip(NAMES, got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=lambda m, n=name: f"{n}: {m}")
    # fp32: fused against the grouped path.
    layer32 = layer.float()
    got = run(fused, layer32, x, routing_for(pattern), g)
    want = run(sorted_dispatch, layer32, x, routing_for(pattern), g)
    for name, a, b in zip(NAMES, got, want):
        assert_close(a, b, torch.float32, name)
    used = set(routing_for(pattern).expert_ids_TK.unique().tolist())
    for e in set(range(E)) - used:  # an expert without rows gets an exactly-zero gradient
        assert got[3][e].abs().max() == 0 and got[4][e].abs().max() == 0


def test_fused_bf16_matches_loop():
    layer = make_layer(seed=3, d=D, f=F, dtype=torch.bfloat16, routing="topk", num_experts=E,
                       top_k=K, num_shared_experts=0)
    torch.manual_seed(4)
    x, g = torch.randn(T, D, dtype=torch.bfloat16), torch.randn(T, D)
    got = run(lambda *a: sorted_dispatch(*a, fused=True), layer, x, routing_for("uniform"), g)
    want = run(loop_dispatch, layer, x, routing_for("uniform"), g)
    assert got[0].dtype == torch.bfloat16
    for name, a, b in zip(NAMES, got, want):
        assert_close(a, b, torch.bfloat16, name)


def test_fused_with_frozen_experts_gives_input_and_weight_grads_only():
    layer = make_layer(seed=1, d=D, f=F, routing="topk", num_experts=E, top_k=K,
                       num_shared_experts=0)
    layer.experts.requires_grad_(False)
    torch.manual_seed(2)
    x, g = torch.randn(T, D), torch.randn(T, D)
    got = run(lambda *a: sorted_dispatch(*a, fused=True), layer, x, routing_for("uniform"), g)
    want = run(loop_dispatch, layer, x, routing_for("uniform"), g)
    assert got[3] is None and got[4] is None
    for name, a, b in zip(NAMES[:3], got, want):
        assert_close(a, b, torch.float32, name)


def test_fused_passes_numerical_gradcheck():
    torch.manual_seed(0)
    t, d, f, e = 6, 4, 5, 3
    x = torch.randn(t, d, dtype=torch.float64, requires_grad=True)
    w_gu = torch.randn(e, d, 2 * f, dtype=torch.float64, requires_grad=True)
    w_d = torch.randn(e, f, d, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 2], [2, 1], [0, 1], [2, 0], [2, 1], [0, 2]])
    order = torch.argsort(ids.reshape(-1), stable=True)
    counts = torch.bincount(ids.reshape(-1), minlength=e).tolist()
    weight = torch.rand(t * 2, dtype=torch.float64, requires_grad=True)
    for act in ("silu", "gelu_tanh"):
        assert torch.autograd.gradcheck(
            lambda x, a, b, w, act=act: fused_expert_ffn(x, a, b, order // 2, w, counts, act),
            (x, w_gu, w_d, weight))


def test_auto_dispatch_takes_the_fused_path_on_cpu_and_config_checks_the_mode(monkeypatch):
    calls = []
    layer = make_layer(routing="topk", num_experts=4, top_k=2, num_shared_experts=0)
    real = type(layer.experts).fused_dispatch

    def spy(self, *a):
        calls.append("fused")
        return real(self, *a)

    monkeypatch.setattr(type(layer.experts), "fused_dispatch", spy)
    layer(torch.randn(5, 32))
    assert calls == ["fused"]
    make_layer(routing="topk", num_experts=4, top_k=2, dispatch="grouped")(torch.randn(5, 32))
    assert calls == ["fused"]  # "grouped" never asks for it
    with pytest.raises(ConfigError, match="MoEConfig.dispatch"):
        MoEConfig(dispatch="fast")


def test_expert_bins_balance_rows_and_refuse_when_one_expert_dominates():
    from utamoe.moe.expert_threads import expert_bins

    def segs(counts):
        out, start = [], 0
        for e, n in enumerate(counts):
            out.append((e, slice(start, start + n)))
            start += n
        return out

    bins = expert_bins(segs([50, 40, 30, 30, 20, 20, 10]), workers=2)
    loads = [sum(s.stop - s.start for _, s in b) for b in bins]
    assert sorted(loads) == [100, 100]
    assert sorted(e for b in bins for e, _ in b) == list(range(7))
    assert expert_bins(segs([500, 10, 10, 10]), workers=2) is None  # one expert dominates
    assert expert_bins(segs([10, 10, 10]), workers=2) is None  # fewer than 2 experts per worker
    assert expert_bins(segs([10] * 8), workers=1) is None


def test_experts_on_worker_threads_equal_the_serial_run(monkeypatch):
    """The expert-parallel path (whole experts per thread) against the calling thread alone."""
    from utamoe.moe import expert_threads

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    used = []
    real_bins = expert_threads.expert_bins
    monkeypatch.setattr(expert_threads, "expert_bins",
                        lambda *a: used.append(real_bins(*a)) or used[-1])
    try:
        layer = make_layer(seed=1, d=D, f=F, routing="topk", num_experts=E, top_k=K,
                           num_shared_experts=0)
        torch.manual_seed(2)
        x, g = torch.randn(T, D), torch.randn(T, D)
        fused = lambda *a: sorted_dispatch(*a, fused=True)  # noqa: E731
        got = run(fused, layer, x, routing_for("uniform"), g)
        assert used and all(b is not None for b in used)  # forward and backward ran in parallel
        with expert_threads.serial_experts():
            want = run(fused, layer, x, routing_for("uniform"), g)
        for name, a, b in zip(NAMES, got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        monkeypatch.setenv("OMP_WAIT_POLICY", "active")  # spinning OpenMP threads: stay serial
        used.clear()
        run(fused, layer, x, routing_for("uniform"), g)
        assert used == []
    finally:
        torch.set_num_threads(threads)


def test_a_forked_child_gets_its_own_expert_threads():
    """After fork the parent's worker threads do not exist: the child must start a new pool, not
    queue work on an inherited one that nothing runs (which would hang). (The child runs no
    multi-threaded torch op: after the parent used OpenMP threads, that hangs in a forked child
    whatever utamoe does; DataLoader workers run single-threaded for that reason.)"""
    import multiprocessing as mp

    from utamoe.moe import expert_threads

    expert_threads._workers(2).submit(lambda: None).result()  # the parent has a live pool
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_pool_in_child).get(timeout=60) == (True, "done")


def _pool_in_child():
    from utamoe.moe import expert_threads

    fresh = expert_threads._pool is None
    return fresh, expert_threads._workers(2).submit(lambda: "done").result(timeout=30)
