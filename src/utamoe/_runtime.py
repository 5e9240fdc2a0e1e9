"""Process-wide CPU numerics, set once when `utamoe` is imported (every entry point:
the CLI, the Python API, the demo, the trainer, the tokenizer).

Two settings, both measured on a shared 2-core machine (NOTES-perf.md):

* ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is already set. With OpenMP's
  default busy-waiting, torch's worker threads spin at every barrier; when another job
  shares the cores, a spinning thread holds the core its partner needs, and the small
  ops of this library ran 10-25x slower (VQ codec: 130-1200 ms/step at 2 threads vs
  51 ms/step PASSIVE and 39-57 ms/step at 1 thread, same load). On a quiet machine
  busy-waiting is ~35 % faster for the demo; set ``OMP_WAIT_POLICY=ACTIVE`` to get it
  back. libgomp reads the variable when it is loaded, i.e. when torch is imported, so
  this only takes effect when `utamoe` is imported before torch (the CLI always is).
* Flush-to-zero / denormals-are-zero (``torch.set_flush_denormal(True)``). The flag
  lives in each thread's MXCSR register: set after torch's OpenMP pool exists it only
  covers the calling thread (the pool's workers keep computing subnormals, at 10-100x
  the cost per op). New threads inherit the creating thread's floating-point state, so
  it is set here, before any parallel op has spawned the pool.
  ``UTAMOE_FLUSH_DENORMAL=0`` leaves the flag alone.
"""

from __future__ import annotations

import os
import sys


def configure_cpu() -> None:
    """Apply the settings above (idempotent)."""
    torch_loaded = "torch" in sys.modules
    if not torch_loaded:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if os.environ.get("UTAMOE_FLUSH_DENORMAL", "1") == "0":
        return
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    torch.set_flush_denormal(True)
    if torch_loaded and torch.get_num_threads() > 1 and not denormals_flushed(torch.get_num_threads()):
        import warnings

        warnings.warn("torch's worker threads were started before utamoe was imported, so they "
                      "do not flush denormal floats (a 10-100x slowdown on tiny activations); "
                      "import utamoe before running torch ops", RuntimeWarning, stacklevel=3)


def denormals_flushed(threads: int = 2) -> bool:
    """Whether every torch worker thread flushes subnormals: an elementwise op large
    enough to be split across `threads` threads whose exact results are all subnormal."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = torch.full((1 << 20,), 1e-30) * 1e-10  # 1e-40 is subnormal in float32
        return bool((y == 0).all())
    finally:
        torch.set_num_threads(before)
