"""FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3 with two CPU processes (gloo) through Accelerate, on the
tiny UTAMoE recipe (pretrain, stage 1 split FFNs, stage 2 TA-MoE with LoRA), launched with the
shipped configs/accelerate/{fsdp,zero2,zero3}.yaml (the trainer's CPU shim: train/engines.py).

Reference: one process with `grad_accum: 2` whose micro-batch m is rank m's batch, as in
test_distributed.py; the engines average the two processes' gradients, the reference adds the
two micro-batches' gradients of loss / 2 (routing losses per process / per micro-batch: the same
batches either way). Tolerance: relative 1e-4 on every step's global-batch loss, 1e-4 absolute
(and relative) on the final weights (an all-reduce / reduce-scatter sums in another order),
but for isolated elements that AdamW's normalisation moves by up to lr (ISOLATED, below).
A resumed run (every process killed mid-run, `--resume`) must match the uninterrupted one to
1e-6 (the same engine, the same reductions: in practice bit for bit).

DeepSpeed's first launch on a machine compiles its shared-memory op (about a minute, cached
in ~/.cache/torch_extensions); the times below are with it cached.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.conftest import UTAMOE_STAGES, tiny_recipe
from tests.train.ddp_worker import skew_by_rank
from tests.train.test_distributed import curve, weights
from utamoe.train.config import build_config

WORKER = Path(__file__).with_name("ddp_worker.py")
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
# Mixed batches on every process: with seed 3 and 4 samples every batch of the 9 steps on both
# ranks holds both task groups (balanced_seed checks); the task-split case is `skew`.
BALANCED = {"seed": 3, "batch_size": 4}


def launch(engine: str, raw: dict, run: Path, port: int, timeout: int = 600, **opts):
    cfg, opt_file = run.parent / f"{run.name}.json", run.parent / f"{run.name}-opts.json"
    cfg.write_text(json.dumps(raw))
    opt_file.write_text(json.dumps(opts))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(CONFIGS / f"{engine}.yaml"), "--num_processes", "2", "--main_process_port", str(port),
           str(WORKER), str(cfg), str(run), str(opt_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def recipe(assets, out, seed: int = 0, batch_size: int = 3, **train) -> dict:
    raw = tiny_recipe(assets, out, UTAMOE_STAGES, batch_size=batch_size, **train)
    raw["run"]["seed"] = seed
    return raw


def reference(assets, out, monkeypatch, seed: int = 0, batch_size: int = 3, skew: bool = False,
              **train):
    """The single-process run with the same global batch (micro-batch m = rank m's batch), on one
    thread like the launched processes (OMP_NUM_THREADS=1): the same kernels and expert path,
    so the comparison sees the engines' reductions, not another thread count's rounding, which
    AdamW's normalisation amplifies on near-zero gradients."""
    from utamoe.train.data import TrainData
    from utamoe.train.trainer import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with monkeypatch.context() as m:
        if skew:
            m.setattr(TrainData, "batch", TrainData.batch)  # restored on exit
            skew_by_rank()
        draw = TrainData.batch

        def as_rank(self, stage, position, *args):
            self.rank = position % 2
            return draw(self, stage, position // 2, *args)

        m.setattr(TrainData, "batch", as_rank)
        raw = recipe(assets, out, seed, batch_size, **train)
        raw["train"]["grad_accum"] = 2
        try:
            Trainer(build_config(raw), out, progress=False).run()
        finally:
            torch.set_num_threads(threads)


# AdamW divides each update by the root of its gradient's running square, so a gradient that
# is ~0 (a cancelling sum, a subnormal) moves its weight by up to lr per step whatever its
# magnitude: the last-bit difference of another summation order turns into an lr-sized
# difference on that one element. Across engines the final weights are therefore compared
# per tensor: all but ISOLATED of the elements within the tolerance, and none further off than
# two full AdamW steps of the tiny recipe (lr 3e-3) per step. A wrong reduction (a missing
# average, an unsynchronised expert) moves whole tensors, far past both.
ISOLATED = 1e-3
STEP_BOUND = 2 * 3e-3 * 9


def assert_weights_follow(got: dict, want: dict, tol: float, isolated: float) -> None:
    assert got.keys() == want.keys()
    for name in want:
        a, b = got[name].double(), want[name].double()
        off = (a - b).abs() > tol + tol * b.abs()
        allowed = max(1, int(isolated * off.numel())) if isolated else 0
        assert int(off.sum()) <= allowed, (name, int(off.sum()), off.numel())
        if isolated:
            assert (a - b).abs().max() <= STEP_BOUND, (name, float((a - b).abs().max()))


def assert_follows(run: Path, ref: Path, rel: float = 1e-4, atol: float = 1e-4,
                   isolated: float = ISOLATED) -> None:
    got, want = curve(run), curve(ref)
    assert [g[:2] for g in got] == [w[:2] for w in want] and len(got) == 9
    for g, w in zip(got, want):
        assert g[2] == pytest.approx(w[2], rel=rel), (g, w)
    assert len({w[2] for w in want}) == 9  # the losses move: the comparison is not vacuous
    assert_weights_follow(weights(run), weights(ref), atol, isolated)
    digests = {p.read_text() for p in run.glob("digest-*-of-2.txt")}
    assert len(digests) == 1  # every process ends with the same plain model


def sharded_checkpoint(run: Path, engine: str) -> list[str]:
    """The last checkpoint's per-process files (a sharded engine writes one set per process)."""
    last = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    if engine == "fsdp":
        files = sorted(p.name for p in (last / "pytorch_model_fsdp_0").glob("*.distcp"))
        assert files == ["__0_0.distcp", "__1_0.distcp"], files
        assert sorted(p.name for p in (last / "optimizer_0").glob("*.distcp")) == files
    else:
        files = sorted(p.name for p in (last / "pytorch_model").glob("zero_pp_rank_*"))
        assert [f for f in files if "optim_states" in f] == [
            "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    return files


def balanced_seed(seed: int, batch_size: int) -> bool:
    """Whether every draw of the recipe (3 stages x 3 steps x 2 ranks) holds both groups
    (the draw of utamoe.train.data.TrainData.batch: tasks ~ the default mixture)."""
    from utamoe.tasks import default_tasks, group_of

    names = sorted(default_tasks())
    for key in np.ndindex(3, 3, 2):
        tasks = np.random.default_rng([seed, *key]).choice(len(names), size=batch_size,
                                                          p=np.full(len(names), 1 / len(names)))
        if len({group_of(names[t]) for t in tasks}) < 2:
            return False
    return True


def follows_one_process(engine: str, assets, tmp_path, monkeypatch, port: int, skew: bool = False,
                        sharded: bool = True, seed: int = 0, batch_size: int = 3, **train) -> Path:
    """Launch `engine` on 2 processes, check its checkpoint layout (`sharded`), run the 1-process
    reference with the same global batch and assert the run follows it; returns the run dir."""
    run = tmp_path / engine
    done = launch(engine, recipe(assets, run, seed, batch_size, **train), run, port, skew=skew)
    assert done.returncode == 0, done.stderr[-3000:]
    if sharded:
        sharded_checkpoint(run, engine)
    reference(assets, tmp_path / "ref", monkeypatch, seed, batch_size, skew, **train)
    assert_follows(run, tmp_path / "ref")
    return run


def test_weights_follow_up_to_isolated_adamw_flips_but_not_a_wrong_reduction():
    torch.manual_seed(0)
    want = {"w": torch.randn(64, 64), "norm": torch.ones(32)}
    flipped = {k: v.clone() for k, v in want.items()}
    flipped["w"][3, 5] += 3e-3  # one near-zero gradient's update, the other way round
    flipped["norm"][7] -= 3e-3
    assert_weights_follow(flipped, want, 1e-4, ISOLATED)
    for wrong in ({"w": want["w"] * 1.01, "norm": want["norm"]},  # e.g. a missing average
                  {"w": want["w"], "norm": want["norm"] + 1e-3}):
        with pytest.raises(AssertionError):
            assert_weights_follow(wrong, want, 1e-4, ISOLATED)
    with pytest.raises(AssertionError):  # a resumed run: every element
        assert_weights_follow(flipped, want, 1e-6, 0.0)


def test_balanced_seed_is_balanced():
    assert balanced_seed(**BALANCED) and not balanced_seed(0, 3)


def test_fsdp_task_split_batches_follow_one_process(tiny_assets, tmp_path, monkeypatch):
    """FSDP2, process 0's batches all understanding, process 1's all generation (each TA-MoE
    layer one FSDP unit; experts without tokens on a process get zero gradients)."""
    follows_one_process("fsdp", tiny_assets, tmp_path, monkeypatch, 29541, skew=True)


def test_zero3_follows_one_process(tiny_assets, tmp_path, monkeypatch):
    follows_one_process("zero3", tiny_assets, tmp_path, monkeypatch, 29542, **BALANCED)


def test_zero3_task_split_batches_follow_one_process(tiny_assets, tmp_path, monkeypatch):
    """ZeRO-3, process 0's batches all understanding, process 1's all generation: the trainer
    turns on the model's `every_part` (every part runs on every process, zero-weighted where
    unused), so both processes fetch and reduce the same modules in the same order."""
    follows_one_process("zero3", tiny_assets, tmp_path, monkeypatch, 29550, skew=True)


@pytest.mark.slow
def test_zero2_follows_one_process(tiny_assets, tmp_path, monkeypatch):
    follows_one_process("zero2", tiny_assets, tmp_path, monkeypatch, 29543, **BALANCED)


@pytest.mark.slow
def test_fsdp_follows_one_process(tiny_assets, tmp_path, monkeypatch):
    follows_one_process("fsdp", tiny_assets, tmp_path, monkeypatch, 29544, sharded=False)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp", "zero2", "zero3"])
def test_killed_run_resumes_exactly(engine, tiny_assets, tmp_path):
    """Every process killed while step 6 runs (stage 1; last checkpoint: step 4), then
    `--resume`: the curve and the weights are the uninterrupted run's."""
    port = {"fsdp": 29545, "zero2": 29546, "zero3": 29547}[engine]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = launch(engine, recipe(tiny_assets, whole, **BALANCED), whole, port)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = launch(engine, recipe(tiny_assets, cut, **BALANCED), cut, port, kill_at=6)
    assert killed.returncode != 0 and not (cut / "model").exists()
    assert json.loads((cut / "checkpoints" / "step-4" / "trainer_state.json").read_text())[
        "trainer"]["global_step"] == 4
    resumed = launch(engine, recipe(tiny_assets, cut, **BALANCED), cut, port, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_follows(cut, whole, rel=1e-6, atol=1e-6, isolated=0.0)  # every element


@pytest.mark.slow
def test_zero2_task_split_batches_follow_one_process(tiny_assets, tmp_path, monkeypatch):
    """ZeRO-2 with process 0's batches all understanding and process 1's all generation:
    ZeRO-2 reduces gradients in buckets filled in autograd's order; with every_part both
    processes produce the same parameters' gradients in the same order
    (tests/model/test_every_part.py), and the TA-MoE layers' experts are banks (one parameter
    for all experts), so experts without tokens still get a (zero) gradient there."""
    follows_one_process("zero2", tiny_assets, tmp_path, monkeypatch, 29548, skew=True, sharded=False)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["zero2", "zero3"])
def test_deepspeed_without_every_part_stops_cleanly_on_task_split_batches(engine, tiny_assets,
                                                                          tmp_path):
    """The guard left for a model that runs only the parts its batch needs (every_part off):
    the run stops at its first step with the reason; it does not hang or crash in gloo."""
    port = {"zero2": 29551, "zero3": 29552}[engine]
    done = launch(engine, recipe(tiny_assets, tmp_path / "ds"), tmp_path / "ds", port, timeout=300,
                  skew=True, every_part_off=True)
    assert done.returncode != 0 and "task group(s) ['und', 'gen']" in done.stderr, done.stderr[-3000:]


class _Accelerator:
    """Just what engines.check_same_groups / configure_engine read: this is process 0 of
    len(groups) processes, whose micro-batches hold the given task groups."""

    def __init__(self, kind: str, groups: list[tuple[str, ...]], zero_stage: int = 2):
        from types import SimpleNamespace

        from accelerate.utils import DistributedType

        from utamoe.tasks import GROUPS

        self.distributed_type, self.num_processes = DistributedType[kind], len(groups)
        self.device, self.gathers = torch.device("cpu"), 0
        self.every = torch.zeros(len(groups), len(GROUPS))
        for i, gs in enumerate(groups):
            self.every[i, [GROUPS.index(g) for g in gs]] = 1
        self.batch = SimpleNamespace(group_ids=torch.tensor([GROUPS.index(g) for g in groups[0]]))
        config = {"zero_optimization": {"stage": zero_stage}}
        self.state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config))

    def gather(self, have):
        self.gathers += 1
        assert torch.equal(have, self.every[:1])
        return self.every


@pytest.mark.parametrize("kind, groups, every_part, split, error", [
    ("DEEPSPEED", [("und",), ("gen",)], False, False, "task group(s) ['und', 'gen']"),
    ("DEEPSPEED", [("und",), ("gen",)], True, False, None),  # no collective at all
    ("DEEPSPEED", [("und", "gen"), ("und", "gen")], False, False, ""),
    ("DEEPSPEED", [("und",), ("gen",)], True, True, ""),  # one forward each
    ("DEEPSPEED", [("und", "gen"), ("gen",)], True, True, "hold [2, 1] task groups"),
    ("MULTI_CPU", [("und", "gen"), ("gen",)], False, True, "train.split_groups"),
    ("MULTI_CPU", [("und",), ("gen",)], False, False, None),
    ("FSDP", [("und", "gen"), ("und",)], False, False, None),
])
def test_check_same_groups_guards_what_every_part_cannot(kind, groups, every_part, split, error):
    """The guard left after every_part: DeepSpeed forwards without it, and split_groups (one
    forward per group) where the processes hold different numbers of groups; None: nothing is
    gathered, "": gathered, no error."""
    from utamoe.train.engines import check_same_groups

    acc = _Accelerator(kind, groups)
    if error:
        with pytest.raises(RuntimeError, match=re.escape(error)):
            check_same_groups(acc, acc.batch, every_part, split)
    else:
        check_same_groups(acc, acc.batch, every_part, split)
    assert acc.gathers == (error is not None)


@pytest.mark.parametrize("processes", [1, 2])
def test_configure_engine_asks_for_every_part_under_deepspeed(processes):
    from types import SimpleNamespace

    from utamoe.train.engines import configure_engine

    acc = _Accelerator("DEEPSPEED", [("und",)] * processes)
    model = torch.nn.Linear(2, 2)
    done = configure_engine(acc, model, SimpleNamespace(grad_accum=1, batch_size=3, clip_grad=1.0))
    assert done.get("every_part", False) is (processes > 1)
    assert not hasattr(model, "every_part")  # a call argument, not an attribute set on the model


PACKED = {"pack": True, "pack_tokens": 160}


@pytest.mark.parametrize("engine", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow),
                                    pytest.param("zero3", marks=pytest.mark.slow)])
def test_packed_runs_follow_one_packed_process(engine, tiny_assets, tmp_path, monkeypatch):
    """Sequence packing under the engines (issue 17): each process packs its own micro-batch; the
    two-process run follows one packed process with the same global batch."""
    port = {"ddp": 29551, "fsdp": 29552, "zero3": 29553}[engine]
    run = follows_one_process(engine, tiny_assets, tmp_path, monkeypatch, port, sharded=False, **PACKED)
    packed = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["pack_efficiency"] <= 1 for r in packed if "loss" in r)
