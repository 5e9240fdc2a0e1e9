"""Expert parallelism across CPU cores: whole experts per thread instead of threads per GEMM.

The fused dispatch (utamoe.moe.fused) runs a dozen small ops per expert. With the usual
intra-op threading every one of them is an OpenMP parallel region whose threads must meet
(and, under OMP_WAIT_POLICY=PASSIVE, which importing utamoe sets, be woken from sleep), and
every expert's GEMM is split across cores. Measured on 2 cores (benchmarks/RESULTS.md), one
thread running the fused path costs 1.02x the CPU time of the dense SwiGLU over the same
rows, while the 2-thread path cost far more wall time than dense. So when there are enough
experts, `over_experts` hands each of W worker threads (W = torch.get_num_threads()) a bin of
whole experts, balanced by row count, and each worker runs its ops single-threaded: no
parallel regions, no cross-core synchronisation, one expert's rows in one core's cache.
PyTorch releases the GIL inside every kernel, so the workers run concurrently.

Workers write disjoint expert slices of the weight gradients directly and their own (T, D)
accumulator for the token outputs, which are summed in bin order at the end (deterministic
for a given routing). Falls back to the calling thread (normal intra-op threading) when
there is one thread, too few experts with rows (< 2 per worker), a bin would carry more
than 1.25x its share of the rows (one overloaded expert: splitting its GEMM across cores
beats leaving cores idle), or OMP_WAIT_POLICY=ACTIVE (the caller's idle OpenMP threads
spin on the cores the workers need). `serial_experts()` forces the fallback (the
reference in tests).
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

IMBALANCE_LIMIT = 1.25  # the heaviest bin's rows over the mean bin's, above which we stay serial
MIN_EXPERTS_PER_WORKER = 2

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_state = threading.local()


def _single_threaded() -> None:
    torch.set_num_threads(1)  # per thread: OpenMP's and MKL's thread counts are thread-local


def _workers(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(n, thread_name_prefix="utamoe-experts",
                                       initializer=_single_threaded)
            _pool_size = n
        return _pool


def _forget_pool() -> None:
    # A forked child (a DataLoader worker, a launcher) has none of the parent's threads: an
    # inherited executor would queue work that no thread ever runs.
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


@contextlib.contextmanager
def serial_experts():
    """Run every expert on the calling thread inside this block (intra-op threading only)."""
    before = getattr(_state, "serial", False)
    _state.serial = True
    try:
        yield
    finally:
        _state.serial = before


def _omp_threads_spin() -> bool:
    # Busy-waiting OpenMP threads of the calling thread's team would hold the cores the
    # workers need (measured: 1.46x slower than serial with OMP_WAIT_POLICY=ACTIVE).
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "ACTIVE"


def expert_bins(segments: list[tuple[int, slice]], workers: int) -> list[list] | None:
    """`segments` split into `workers` bins of about equal rows (largest expert first, each to
    the lightest bin), or None when expert parallelism would not pay (see the module doc)."""
    if workers < 2 or len(segments) < MIN_EXPERTS_PER_WORKER * workers:
        return None
    bins: list[list] = [[] for _ in range(workers)]
    rows = [0] * workers
    for seg in sorted(segments, key=lambda s: s[1].start - s[1].stop):  # longest first, stable
        i = rows.index(min(rows))
        bins[i].append(seg)
        rows[i] += seg[1].stop - seg[1].start
    if max(rows) > IMBALANCE_LIMIT * sum(rows) / workers:
        return None
    return bins


def over_experts(body, segments: list[tuple[int, slice]], new_accumulator):
    """Call body(e, rows, acc) for every (e, rows) in `segments`, where acc is a tensor from
    `new_accumulator()` (or None) that body adds its token outputs into; returns their sum."""
    bins = None
    if not (getattr(_state, "serial", False) or torch.is_grad_enabled() or _omp_threads_spin()):
        bins = expert_bins(segments, torch.get_num_threads())
    if bins is None:
        acc = new_accumulator()
        for e, rows in segments:
            body(e, rows, acc)
        return acc

    def run(bin_):
        with torch.no_grad():
            acc = new_accumulator()
            for e, rows in bin_:
                body(e, rows, acc)
            return acc

    accs = [f.result() for f in [_workers(len(bins)).submit(run, b) for b in bins]]
    if accs[0] is None:
        return None
    total = accs[0]
    for acc in accs[1:]:
        total.add_(acc)
    return total
