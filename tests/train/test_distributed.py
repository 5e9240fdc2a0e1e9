"""Two CPU processes (gloo) against one: the tiny UTAMoE recipe (pretrain, stage 1 split FFNs,
stage 2 TA-MoE with LoRA) under DDP follows the single-process run with the same global batch.

The reference is one process with `grad_accum: 2` whose micro-batch m is the batch that rank m
draws (a batch is a pure function of (seed, stage, step, rank): utamoe.train.data), so both runs
see the same samples per optimiser step: DDP averages the two ranks' gradients, the reference
adds the two micro-batches' gradients of loss / 2. The routing losses are per process in DDP and
per micro-batch in the reference: the same batches either way. Tolerance: relative 1e-4 on every
step's global-batch loss (`global_loss`), 1e-4 absolute on the final weights (float summation
order differs: an all-reduce average against an accumulated sum).

FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3 run on the CPU too, through a small shim in the trainer
(train/engines.make_accelerator): their tests are in test_engines_cpu.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.conftest import UTAMOE_STAGES, tiny_recipe
from utamoe.train.config import build_config

WORKER = Path(__file__).with_name("ddp_worker.py")


def launch_two(raw: dict, run: Path, port: int) -> None:
    cfg = run.parent / f"{run.name}.json"
    cfg.write_text(json.dumps(raw))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), str(WORKER), str(cfg), str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def curve(run: Path) -> list[tuple[str, int, float]]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["global_step"], r["global_loss"]) for r in recs if "global_loss" in r]


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


@pytest.mark.parametrize("loading", ["memory", pytest.param("disk", marks=pytest.mark.slow)])
def test_ddp_two_processes_follow_one_process_with_the_same_global_batch(tiny_assets, tmp_path,
                                                                          monkeypatch, loading):
    """`disk`: the split read from disk by a worker process on each rank (utamoe.train.data)."""
    from utamoe.train.data import TrainData
    from utamoe.train.trainer import Trainer

    def recipe(out, **train):
        raw = tiny_recipe(tiny_assets, out, UTAMOE_STAGES, batch_size=3, **train)
        raw["data"].update(loading=loading, workers=int(loading == "disk"))
        return raw

    launch_two(recipe(tmp_path / "ddp"), tmp_path / "ddp", port=29533)

    draw = TrainData.batch

    def as_rank(self, stage, position, *args):  # micro-batch m of step k = rank m's batch k
        self.rank = position % 2
        return draw(self, stage, position // 2, *args)

    monkeypatch.setattr(TrainData, "batch", as_rank)
    ref_cfg = build_config(recipe(tmp_path / "ref", grad_accum=2))
    Trainer(ref_cfg, tmp_path / "ref", progress=False).run()

    got, want = curve(tmp_path / "ddp"), curve(tmp_path / "ref")
    assert [g[:2] for g in got] == [w[:2] for w in want] and len(got) == 9
    for g, w in zip(got, want):
        assert g[2] == pytest.approx(w[2], rel=1e-4), (g, w)
    assert len({w[2] for w in want}) == 9  # the losses move: the comparison is not vacuous
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "ref")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-4, msg=name)
