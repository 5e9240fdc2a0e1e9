"""Where training metrics go besides `RUN/metrics.jsonl`: `train.report_to: [tensorboard, wandb]`,
the names Hugging Face's Trainer and LLaMA-Factory users know.

Explicit: a name that is not a reporter is a config error with the names there are, and a named
reporter whose package is not installed is an error when the run starts (before any data is
prepared), never a silent skip. Every logged record goes to each reporter as scalars at its
global step (a per-expert list such as `expert_load_und` as `expert_load_und/0`, `/1`, ...),
and a routing-collapse alert as text and as `alerts/routing_collapse` = 1.

    tensorboard   RUN/tensorboard/ event files (torch.utils.tensorboard; `pip install tensorboard`)
    wandb         a Weights & Biases run in project `train.wandb_project`, named after the run
                  directory, with the config; its id is kept in RUN/wandb_run_id so a resumed run
                  continues the same wandb run. WANDB_MODE=offline logs to RUN/wandb/ without
                  an account (sync later with `wandb sync`).
"""

from __future__ import annotations

import importlib.util
import math
import uuid
from pathlib import Path

from utamoe.config import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_report_to(names) -> None:
    """Known reporter names whose packages are installed, or a ConfigError saying what to do."""
    for name in names:
        if name not in PACKAGES:
            raise ConfigError(f"train.report_to: unknown reporter {name!r}; use any of "
                              f"{sorted(PACKAGES)} (metrics.jsonl is always written)")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(f"train.report_to names {name!r} but the {PACKAGES[name]} package "
                              f"is not installed: pip install {PACKAGES[name]} (or the "
                              f"utamoe[logging] extra), or remove {name!r} from train.report_to")


def scalars(rec: dict) -> dict[str, float]:
    """The finite numbers of a record, lists of numbers spread as `key/i`."""
    out = {}
    for key, value in rec.items():
        items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, v in items:
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[key if i is None else f"{key}/{i}"] = float(v)
    return out


class TensorBoardReporter:
    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, rec: dict, step: int) -> None:
        for key, value in scalars(rec).items():
            self.writer.add_scalar(key, value, step)

    def alert(self, message: str, step: int) -> None:
        self.writer.add_scalar("alerts/routing_collapse", 1.0, step)
        self.writer.add_text("alerts", message, step)

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    def __init__(self, run_dir: Path, config: dict, project: str = "utamoe"):
        import wandb

        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        self.run = wandb.init(project=project, name=run_dir.resolve().name, id=run_id,
                              resume="allow", dir=str(run_dir), config=config)

    def log(self, rec: dict, step: int) -> None:
        self.run.log(scalars(rec), step=step)

    def alert(self, message: str, step: int) -> None:
        self.run.log({"alerts/routing_collapse": 1.0}, step=step)
        self.run.summary["alert"] = message

    def close(self) -> None:
        self.run.finish()


def open_reporters(names, run_dir: Path, config: dict, wandb_project: str = "utamoe") -> list:
    check_report_to(names)
    out = []
    for name in dict.fromkeys(names):
        out.append(TensorBoardReporter(run_dir, config) if name == "tensorboard"
                   else WandbReporter(run_dir, config, wandb_project))
    return out
