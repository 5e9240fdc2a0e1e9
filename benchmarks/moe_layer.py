"""Benchmark: our MoE layer against transformers' Qwen3-MoE block and a dense SwiGLU.

Per case (shape x routing skew), dtype (fp32, bf16) and pass (forward; forward+backward)
it prints median milliseconds side by side:
- `ours`: utamoe's TaskAwareMoE with its default dispatch (on CPU the fused expert-by-expert
  path, utamoe.moe.fused; on CUDA sort + torch grouped_mm);
- `ours_grouped` (top-k cases): the same layer with `dispatch="grouped"` (sort + grouped_mm);
- `hf_grouped_mm` / `hf_eager`: transformers' Qwen3MoeSparseMoeBlock with those experts
  implementations, holding our weights (transposed), so both route alike;
- `dense`: a SwiGLU over the same active rows (T*k, + T per shared expert);
- TA-MoE cases: `ours_ta` (2 groups x 4 experts, oracle group routing from per-token task
  labels, k=2, 1 shared) vs `ours_topk` (plain top-2 over the same 8 experts + 1 shared),
  both in a routing session with their router losses in the objective, as in training.
  The HF block has no groups or shared expert: its columns read n/a there.

Each case first asserts that our output (and, in fp32, input and weight gradients) match
the peer: the HF blocks for top-k cases, our loop (reference) dispatch for TA-MoE. Forward
runs under no_grad; forward+backward uses loss (y * g).sum() with a fixed random g (y.sum()
gives a stride-0 gradient that grouped_mm on CPU rejects). Routing "uniform": small random
router weights; "skewed": an offset s*u added to every input and expert e's router row given
a projection -ln(1 + e)/s onto u (Zipf(1)-like loads; the busiest expert's load is printed).
Task splits: per-token labels 50/50 or 90/10, shuffled.

    python benchmarks/moe_layer.py --quick                  # T=512, fp32: under a minute
    python benchmarks/moe_layer.py --cases 'e64k8*' --dtypes fp32 --json
    python benchmarks/moe_layer.py --profile e64k8-uniform  # where our fwd+bwd time goes
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

# Busy-waiting OpenMP threads collapse (5-10x) when another process shares the cores, as on our
# 2-core dev box; sleeping waiters cost little here. Set before torch loads libgomp; override freely.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import Qwen3MoeConfig  # noqa: E402
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock  # noqa: E402

from utamoe.moe import MoEConfig, TaskAwareMoE, route  # noqa: E402

D_MODEL = 512
SKEW_OFFSET = 4.0  # s: size of the shared input offset that carries the routing bias
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# (atol, rtol) for output checks; bf16 rounds every intermediate to 8 mantissa bits.
TOL = {torch.float32: (2e-4, 2e-3), torch.bfloat16: (3e-2, 3e-2)}


@dataclass(frozen=True)
class Case:
    name: str
    experts: int
    top_k: int
    ffn: int
    task_split: float | None = None  # share of "und" tokens (TA-MoE cases only)
    skewed: bool = False

    @property
    def is_ta(self) -> bool:
        return self.task_split is not None


def all_cases(d_model: int = 512) -> list[Case]:
    """The grid; expert widths scale with the model width (given here for d = 512)."""
    s = d_model / 512
    cases = []
    for skewed in (False, True):
        tag = "skewed" if skewed else "uniform"
        cases += [
            Case(f"e8k2-{tag}", 8, 2, round(1024 * s), skewed=skewed),
            Case(f"e64k8-{tag}", 64, 8, round(256 * s), skewed=skewed),
            Case(f"ta50-{tag}", 8, 2, round(1024 * s), task_split=0.5, skewed=skewed),
            Case(f"ta90-{tag}", 8, 2, round(1024 * s), task_split=0.9, skewed=skewed),
        ]
    return cases


# ---------------------------------------------------------------- building the contenders


def our_layer(case: Case, routing: str, dispatch: str = "auto") -> TaskAwareMoE:
    cfg = MoEConfig(
        routing=routing,
        num_experts=case.experts,
        top_k=case.top_k,
        num_shared_experts=1 if case.is_ta else 0,
        group_routing="oracle" if routing == "task_aware" else "learned",
        normalize_topk=True,
        dispatch=dispatch,
    )
    return TaskAwareMoE(cfg, D_MODEL, case.ffn, act="silu")


@torch.no_grad()
def skew_router(gate_weight_ED: torch.Tensor, u_D: torch.Tensor, experts_per_group: int) -> None:
    """Give expert e (local index inside its group) a logit bias of about -ln(1 + e): Zipf(1) loads."""
    local = torch.arange(gate_weight_ED.shape[0]) % experts_per_group
    bias_E = -torch.log1p(local.float()) / SKEW_OFFSET
    gate_weight_ED.normal_(0.0, D_MODEL**-0.5).add_(bias_E[:, None] * u_D[None])


def hf_block(ours: TaskAwareMoE, case: Case, impl: str) -> Qwen3MoeSparseMoeBlock:
    """Qwen3-MoE block with our weights, using experts implementation `impl`."""
    cfg = Qwen3MoeConfig(
        hidden_size=D_MODEL,
        moe_intermediate_size=case.ffn,
        num_experts=case.experts,
        num_experts_per_tok=case.top_k,
        norm_topk_prob=True,
        hidden_act="silu",
    )
    cfg._experts_implementation = impl  # what use_experts_implementation dispatches on
    block = Qwen3MoeSparseMoeBlock(cfg)
    with torch.no_grad():
        block.gate.weight.copy_(ours.router.expert_gate.weight)
        block.experts.gate_up_proj.copy_(ours.experts.w_gate_up.transpose(1, 2))
        block.experts.down_proj.copy_(ours.experts.w_down.transpose(1, 2))
    return block


class DenseSwiGLU(torch.nn.Module):
    """x @ W_gate_up -> silu(gate) * up -> @ W_down: the active work of the MoE, without routing."""

    def __init__(self, ffn: int):
        super().__init__()
        self.w_gate_up = torch.nn.Parameter(torch.randn(D_MODEL, 2 * ffn) * D_MODEL**-0.5)
        self.w_down = torch.nn.Parameter(torch.randn(ffn, D_MODEL) * ffn**-0.5)

    def forward(self, x_ND: torch.Tensor) -> torch.Tensor:
        gate, up = (x_ND @ self.w_gate_up).chunk(2, dim=-1)
        return (F.silu(gate) * up) @ self.w_down


def make_inputs(case: Case, T: int, gen: torch.Generator):
    """Tokens x_TD (with the skew offset if skewed), the offset direction u_D, task labels_T."""
    u_D = torch.randn(D_MODEL, generator=gen)
    u_D /= u_D.norm()
    x_TD = torch.randn(T, D_MODEL, generator=gen)
    if case.skewed:
        x_TD += SKEW_OFFSET * u_D
    labels_T = None
    if case.is_ta:
        labels_T = (torch.arange(T) >= round(case.task_split * T)).long()  # 0 = und, 1 = gen
        labels_T = labels_T[torch.randperm(T, generator=gen)]
    return x_TD, u_D, labels_T


def build(case: Case, T: int, dtype, device, eager: bool = True) -> dict:
    """Every contender of one case as name -> (module, input_ND, labels or None); plus metadata."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x_TD, u_D, labels_T = make_inputs(case, T, gen)
    main = our_layer(case, "task_aware" if case.is_ta else "topk")
    if case.skewed:
        skew_router(main.router.expert_gate.weight, u_D, main.config.experts_per_group)
    rows = T * case.top_k + (T if case.is_ta else 0)
    dense = DenseSwiGLU(case.ffn)
    x_dense = torch.randn(rows, D_MODEL, generator=gen)
    mods = {}
    if case.is_ta:
        topk = our_layer(case, "topk")
        topk.load_state_dict(main.state_dict(), strict=False)  # same experts, shared expert, alpha
        if case.skewed:
            skew_router(topk.router.expert_gate.weight, u_D, case.experts)
        mods["ours_ta"] = (main, x_TD, labels_T)
        mods["ours_topk"] = (topk, x_TD, labels_T)
    else:
        mods["ours"] = (main, x_TD, None)
        mods["ours_grouped"] = (with_dispatch(main, "grouped"), x_TD, None)
        mods["hf_grouped_mm"] = (hf_block(main, case, "grouped_mm"), x_TD[None], None)
        if eager:  # its backward takes seconds at E64k8 whatever T; --quick leaves it out
            mods["hf_eager"] = (hf_block(main, case, "eager"), x_TD[None], None)
    mods["dense"] = (dense, x_dense, None)
    out = {}
    for name, (m, x, lab) in mods.items():
        m = m.to(device=device, dtype=dtype)
        out[name] = (m, x.to(device=device, dtype=dtype), None if lab is None else lab.to(device))
    return out


def max_expert_load(layer: TaskAwareMoE, x_TD, labels_T) -> tuple[float, float]:
    """Busiest expert: (share of all T*k assignments, multiple of the mean load)."""
    with torch.no_grad():
        x32 = x_TD.float()
        ids_TK = layer.router(x32, labels_T).expert_ids_TK
    counts_E = torch.bincount(ids_TK.reshape(-1), minlength=layer.config.num_experts).float()
    return float(counts_E.max() / ids_TK.numel()), float(counts_E.max() / counts_E.mean())


# ---------------------------------------------------------------- running and checking


def run_pass(module, x, labels, g, backward: bool):
    """One forward (and backward) of `module`; returns (output, input grad or None)."""
    if not backward:
        with torch.no_grad(), _session(module, labels):
            return module(x), None
    x = x.detach().requires_grad_(True)
    for p in module.parameters():
        p.grad = None
    with _session(module, labels) as session:
        y = module(x)
        loss = (y * g).sum()
        if session is not None:
            loss = loss + session.aux_loss().to(loss.dtype)
    loss.backward()
    return y, x.grad


def _session(module, labels):
    # Labels go through a routing session, as in training; modules without labels run bare.
    return route(module, task_labels=labels) if labels is not None else contextlib.nullcontext()


def assert_close(what: str, case: Case, a, b, dtype) -> None:
    atol, rtol = TOL[dtype]
    a, b = a.float().reshape(b.shape), b.float()
    atol *= max(1.0, b.abs().max().item())  # weight gradients sum many rows: scale with their size
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        err = (a - b).abs().max().item()
        raise AssertionError(
            f"{case.name} {dtype}: {what} differs (max abs err {err:.3g}, atol {atol})"
        )


def with_dispatch(layer: TaskAwareMoE, mode: str) -> TaskAwareMoE:
    """A copy of `layer` (same weights) that dispatches with `mode`."""
    twin = copy.deepcopy(layer)
    twin.config = copy.copy(layer.config)
    twin.config.dispatch = mode
    return twin


def check(case: Case, mods: dict, dtype, g_all) -> None:
    """Our grouped layer must match the peer: HF blocks (top-k cases) or our loop dispatch (TA-MoE)."""
    if case.is_ta:
        ours, x, labels = mods["ours_ta"]
        peers = [(with_dispatch(ours, "loop"), x, lambda w: w)]
    else:
        ours, x, labels = mods["ours"]
        t = lambda w: w.transpose(1, 2)  # noqa: E731 - HF stores expert weights transposed
        peers = [(mods[n][0], mods[n][1], t) for n in ("hf_grouped_mm", "hf_eager") if n in mods]
        peers.append((mods["ours_grouped"][0], x, lambda w: w))
    agree_T = same_experts(ours, peers[0][0], x, labels)
    # bf16 logits (HF rounds them, we keep fp32) may flip near-ties: compare the tokens that agree.
    if agree_T.float().mean() < (1.0 if dtype == torch.float32 else 0.97):
        raise AssertionError(
            f"{case.name} {dtype}: only {agree_T.float().mean():.1%} tokens route alike"
        )
    backward = bool(agree_T.all())  # one flipped token changes every weight gradient
    g = g_all[: x.shape[0]]
    ya, gxa = run_pass(ours, x, labels, g, backward)
    grads_a = [p.grad for p in _expert_weights(ours)]
    for peer, xb, t in peers:
        yb, gxb = run_pass(peer, xb, labels, g.reshape(xb.shape), backward)
        assert_close("output", case, ya[agree_T], yb.reshape(ya.shape)[agree_T], dtype)
        if backward:
            assert_close("input grad", case, gxa, gxb, dtype)
            for what, ga, pb in zip(
                ("w_gate_up grad", "w_down grad"), grads_a, _expert_weights(peer)
            ):
                assert_close(what, case, t(ga), pb.grad, dtype)


def same_experts(ours: TaskAwareMoE, peer, x_TD, labels_T) -> torch.Tensor:
    """Per token: does the peer pick the same set of experts as our router?"""
    with torch.no_grad():
        ids_TK = ours.router(x_TD, labels_T).expert_ids_TK
        if isinstance(peer, Qwen3MoeSparseMoeBlock):
            peer_TK = peer.gate(x_TD)[2]
        else:
            peer_TK = peer.router(x_TD, labels_T).expert_ids_TK
    return (ids_TK.sort(-1).values == peer_TK.sort(-1).values).all(-1)


def _expert_weights(m):
    e = m.experts
    return (e.w_gate_up, e.w_down) if hasattr(e, "w_gate_up") else (e.gate_up_proj, e.down_proj)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fns: dict, warmup: int, repeats: int, device) -> dict[str, list[float]]:
    """Wall ms of each run of each function. Contenders take turns within every repeat, so a burst of load
    from another process on a shared machine slows all of them rather than one."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def bench_case(case: Case, T: int, dtype, device, args) -> list[dict]:
    mods = build(case, T, dtype, device, eager=not args.quick)
    layer, x_main, labels = mods["ours_ta" if case.is_ta else "ours"]
    share, ratio = max_expert_load(layer, x_main, labels)
    rows = max(x.reshape(-1, D_MODEL).shape[0] for _, x, _ in mods.values())
    g_all = torch.randn(rows, D_MODEL, generator=torch.Generator().manual_seed(1))
    g_all = g_all.to(device=device, dtype=dtype)
    check(case, mods, dtype, g_all)
    records = []
    for backward in (False, True):
        fns = {}
        for name, (m, x, lab) in mods.items():
            g = g_all[: x.reshape(-1, D_MODEL).shape[0]].reshape(x.shape)
            fns[name] = lambda m=m, x=x, lab=lab, g=g, b=backward: run_pass(m, x, lab, g, b)  # noqa: E731
        times = time_ms(fns, args.warmup, args.repeats, device)
        records.append(record(case, T, dtype, device, backward, times, share, ratio))
    return records


def record(case, T, dtype, device, backward, times, share, ratio) -> dict:
    ms = {name: statistics.median(ts) for name, ts in times.items()}
    ours = ms.get("ours", ms.get("ours_ta"))
    ratios = {"ours/dense": ours / ms["dense"]}
    if "hf_grouped_mm" in ms:
        ratios["ours/hf_grouped_mm"] = ours / ms["hf_grouped_mm"]
    if "hf_eager" in ms:
        ratios["ours/hf_eager"] = ours / ms["hf_eager"]
    if "ours_topk" in ms:
        ratios["ours_ta/ours_topk"] = ours / ms["ours_topk"]
    if "ours_grouped" in ms:
        ratios["ours/ours_grouped"] = ours / ms["ours_grouped"]
    dname = {v: k for k, v in DTYPES.items()}[dtype]
    return {
        "case": case.name, "dtype": dname, "pass": "fwd+bwd" if backward else "fwd",
        "device": str(device), "T": T, "d": D_MODEL, "E": case.experts, "k": case.top_k,
        "f": case.ffn, "task_split": case.task_split, "routing": "skewed" if case.skewed else "uniform",
        "max_expert_share": round(share, 4), "max_expert_load_x_mean": round(ratio, 2),
        "threads": torch.get_num_threads(), "loadavg_1m": round(os.getloadavg()[0], 2), "check": "pass",
        "ms": {k: round(v, 3) for k, v in ms.items()}, "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "min_ms": {k: round(min(v), 3) for k, v in times.items()},  # less sensitive to other processes
    }  # fmt: skip


# ---------------------------------------------------------------- output


COLUMNS = {
    "ours": "ours",
    "ours_topk": "topk",
    "ours_grouped": "grouped",
    "hf_grouped_mm": "hf_gmm",
    "hf_eager": "hf_eager",
    "dense": "dense",
}
RATIOS = {"ours/dense": "/dense", "ours/hf_grouped_mm": "/hf_gmm", "ours_ta/ours_topk": "ta/topk",
          "ours/ours_grouped": "/grouped"}


def table(records: list[dict], title: str) -> Table:
    """ms per contender ("ours" is ours_ta in TA-MoE cases, "topk" its plain top-k twin), ratios of ours."""
    t = Table(title=title)
    for col in (
        ["case", "dtype", "pass", "max load"] + list(COLUMNS.values()) + list(RATIOS.values())
    ):
        t.add_column(col, justify="left" if col in ("case", "dtype", "pass") else "right")
    for r in records:
        ms = dict(r["ms"], ours=r["ms"].get("ours", r["ms"].get("ours_ta")))
        cells = [f"{ms[c]:.1f}" if c in ms else "n/a" for c in COLUMNS]
        ratios = [f"{r['ratios'][c]:.2f}x" if c in r["ratios"] else "n/a" for c in RATIOS]
        load = f"{r['max_expert_share']:.0%} ({r['max_expert_load_x_mean']:.1f}x)"
        t.add_row(r["case"], r["dtype"], r["pass"], load, *cells, *ratios)
    return t


def _labelled(obj, attr: str, label: str) -> None:
    """Wrap obj.attr in a profiler range named `label` (instance attribute; the class is untouched)."""
    fn = getattr(obj, attr)

    def wrapped(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)

    setattr(obj, attr, wrapped)


def stage_times(events, iters: int) -> dict[str, float]:
    """ms per iteration of each direct child of our labelled ranges, and of each backward node."""
    out: dict[str, float] = {}
    for e in events:
        parent = e.cpu_parent.name if e.cpu_parent is not None else None
        if parent in ("moe.forward", "moe.experts"):
            key = f"fwd {'layer' if parent == 'moe.forward' else '  experts'} > {e.name.removeprefix('aten::')}"
        elif parent is None and e.name.startswith("autograd::engine::evaluate_function: "):
            key = "bwd " + e.name.split(": ", 1)[1]
        elif parent is None and e.name == "moe.forward":
            key = "fwd total"
        else:
            continue
        out[key] = out.get(key, 0.0) + e.cpu_time_total / 1e3 / iters
    return out


def profile(case: Case, T: int, device, repeats: int) -> None:
    """Where our layer's fp32 forward+backward time goes, by stage (CPU time; torch.profiler)."""
    from torch.profiler import profile as torch_profile

    mods = build(case, T, torch.float32, device)
    layer, x, labels = mods["ours_ta" if case.is_ta else "ours"]
    _labelled(layer, "forward", "moe.forward")
    _labelled(layer.router, "forward", "moe.router")
    _labelled(layer.experts, "sorted_forward", "moe.experts")  # the grouped path
    _labelled(layer.experts, "fused_dispatch", "moe.experts")  # the fused path (CPU default)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
    for _ in range(2):
        run_pass(layer, x, labels, g, True)
    with torch_profile() as prof:
        t0 = time.perf_counter()
        for _ in range(repeats):
            run_pass(layer, x, labels, g, True)
        sync(device)
        wall = (time.perf_counter() - t0) * 1e3 / repeats
    stages = stage_times(prof.events(), repeats)
    t = Table(title=f"{case.name} fp32 fwd+bwd, T={T}, {wall:.1f} ms/iter wall (profiled), "
                    f"threads={torch.get_num_threads()}")  # fmt: skip
    t.add_column("stage (direct children; bwd = autograd nodes)")
    t.add_column("ms/iter", justify="right")
    t.add_column("share", justify="right")
    for key, ms in sorted(stages.items(), key=lambda kv: -kv[1]):
        if ms >= 0.05:
            t.add_row(key, f"{ms:.2f}", f"{ms / wall:.0%}")
    Console(width=120).print(t)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=2048, help="T, tokens per forward")
    p.add_argument("--d-model", type=int, default=D_MODEL,
                   help="model width d; expert widths scale with it (GPU runs: 2048)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--quick", action="store_true", help="T=512, fp32, 3 repeats, 1 warmup, no hf_eager"
    )
    p.add_argument(
        "--cases", default="*", help="comma-separated globs over case names, e.g. 'e64k8*,ta90*'"
    )
    p.add_argument(
        "--dtypes", default=None, help="comma-separated; default fp32,bf16 (fp32 with --quick)"
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, or auto (cpu, plus cuda when present)"
    )
    p.add_argument(
        "--json", action="store_true", help="JSON lines on stdout (the table goes to stderr)"
    )
    p.add_argument(
        "--profile", metavar="CASE", help="profile our layer on CASE instead of benchmarking"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.repeats, args.warmup = 512, 3, 1
    args.dtypes = args.dtypes or ("fp32" if args.quick else "fp32,bf16")
    return args


def select(cases: list[Case], pattern: str) -> list[Case]:
    globs = [g.strip() for g in pattern.split(",") if g.strip()]
    chosen = [c for c in cases if any(fnmatch.fnmatch(c.name, g) for g in globs)]
    if not chosen:
        names = ", ".join(c.name for c in cases)
        raise SystemExit(f"--cases {pattern!r} matches no case; known: {names}")
    return chosen


def devices(arg: str) -> list[str]:
    if arg == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [arg]


def main(argv=None) -> None:
    global D_MODEL
    args = parse_args(argv)
    D_MODEL = args.d_model
    if args.profile:
        (case,) = select(all_cases(D_MODEL), args.profile)
        profile(case, args.tokens, devices(args.device)[-1], args.repeats)
        return
    console = Console(stderr=args.json, width=max(Console().width, 140))
    cases = select(all_cases(D_MODEL), args.cases)
    for device in devices(args.device):
        title = f"MoE layer, {device}, T={args.tokens}, d={D_MODEL}, threads={torch.get_num_threads()}, "
        title += f"torch {torch.__version__}, median of {args.repeats} (ms), load {os.getloadavg()[0]:.1f}, "
        title += f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
        records = []
        for dname in args.dtypes.split(","):
            for case in cases:
                for r in bench_case(case, args.tokens, DTYPES[dname], device, args):
                    records.append(r)
                    if args.json:
                        print(json.dumps(r), flush=True)
        console.print(table(records, title))


if __name__ == "__main__":
    sys.exit(main())
