"""Run by test_two_process_training under `accelerate launch --cpu --num_processes 2`:
trains the tiny UTAMoE recipe, then each process writes a digest of its weights."""

import hashlib
import json
import sys
from pathlib import Path

from utamoe.train.config import build_config
from utamoe.train.trainer import Trainer

if __name__ == "__main__":
    raw, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    trainer = Trainer(build_config(raw), out, progress=False)
    trainer.run()
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    rank = trainer.accelerator.process_index
    (out / f"digest-{rank}-of-{trainer.accelerator.num_processes}.txt").write_text(digest.hexdigest())
