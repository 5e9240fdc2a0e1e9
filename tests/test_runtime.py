"""CPU numerics set when utamoe is imported (utamoe/_runtime.py), in fresh processes:
the pytest process has imported torch long before, which is the case they guard against."""

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(code: str, **env) -> str:
    full = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "UTAMOE_FLUSH_DENORMAL")}
    full.update(env, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


PROBE = ("import utamoe, os, torch; from utamoe._runtime import denormals_flushed; "
         "torch.set_num_threads(2); print(os.environ.get('OMP_WAIT_POLICY'), denormals_flushed(2))")


def test_import_sets_passive_wait_and_flushes_denormals_on_worker_threads():
    # Without the import-time setup, fit() flushed denormals on the main thread only:
    # the OpenMP worker computing the other half of every op kept producing them.
    assert _run(PROBE) == "PASSIVE True"


def test_user_settings_win():
    assert _run(PROBE, OMP_WAIT_POLICY="ACTIVE", UTAMOE_FLUSH_DENORMAL="0") == "ACTIVE False"


def test_flag_set_after_the_pool_exists_misses_the_workers():
    # The reason the setup runs at import: the flag is per thread, and workers only
    # inherit it when they are created after it is set.
    code = ("import torch; torch.set_num_threads(2); (torch.ones(1 << 20) * 2).sum(); "
            "torch.set_flush_denormal(True); y = torch.full((1 << 20,), 1e-30) * 1e-10; "
            "print(bool((y == 0).all()))")
    assert _run(code, UTAMOE_FLUSH_DENORMAL="0") == "False"
