"""Run under `accelerate launch` (2 CPU processes) by test_distributed.py and test_engines_cpu.py:
trains a recipe, then each process writes a digest of its weights.

    ddp_worker.py CONFIG.json RUN_DIR [OPTIONS.json]

OPTIONS (all optional): "skew": true: process 0 draws only understanding tasks and process 1
only generation tasks (`skew_by_rank`); "kill_at": n: every process dies (os._exit(17), as if
killed) when its n-th optimiser step starts; "resume": true: continue the run from its newest
checkpoint; "memory": true: write each process's peak memory to memory-<rank>.json;
"every_part_off": true: the model never runs the parts its batch does not need (the engine
never asks the trainer for forwards with `every_part`), to test the guard left for that case."""

import hashlib
import json
import os
import sys
from pathlib import Path

from utamoe.tasks import group_of
from utamoe.train.config import build_config
from utamoe.train.data import TrainData
from utamoe.train.trainer import Trainer

KILLED = 17


def skew_by_rank() -> None:
    """Patch TrainData.batch: process 0's batches all understanding, process 1's all generation
    (the mixture restricted to the group; the rest of the draw is unchanged)."""
    draw = TrainData.batch

    def skewed(self, stage, step, batch_size, mixture, *args):
        group = "und" if self.rank % 2 == 0 else "gen"
        return draw(self, stage, step, batch_size,
                    {t: w for t, w in mixture.items() if group_of(t) == group}, *args)

    TrainData.batch = skewed


def every_part_off() -> None:
    from utamoe.train import trainer

    configure = trainer.configure_engine

    def without_every_part(*args, **kwargs):
        done = configure(*args, **kwargs)
        done.pop("every_part", None)
        return done

    trainer.configure_engine = without_every_part


def die_at(n: int) -> None:
    original, calls = Trainer._step, {"n": 0}

    def dying_step(self, *args):
        calls["n"] += 1
        if calls["n"] == n:
            sys.stdout.flush()
            os._exit(KILLED)
        return original(self, *args)

    Trainer._step = dying_step


def peak_memory() -> dict:
    """Peak resident memory of this process (VmHWM), in MiB."""
    status = Path("/proc/self/status").read_text()
    hwm = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return {"vm_hwm_mib": round(int(hwm.split()[1]) / 1024, 1)}


if __name__ == "__main__":
    raw, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    opts = json.loads(Path(sys.argv[3]).read_text()) if len(sys.argv) > 3 else {}
    if opts.get("skew"):
        skew_by_rank()
    if opts.get("every_part_off"):
        every_part_off()
    if opts.get("kill_at"):
        die_at(int(opts["kill_at"]))
    trainer = Trainer(build_config(raw), out, progress=False)
    trainer.run(resume=bool(opts.get("resume")))
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    rank = trainer.accelerator.process_index
    (out / f"digest-{rank}-of-{trainer.accelerator.num_processes}.txt").write_text(digest.hexdigest())
    if opts.get("memory"):
        (out / f"memory-{rank}.json").write_text(json.dumps(peak_memory()))
