"""What produced a number: the settings every evaluation records beside its metrics (the
harness, seeds, precision and device, guidance, temperature, top-k/top-p, max tokens, the prompt
template of each task, prompt rewriting, and the utamoe, torch and transformers versions), so
that two results can be compared or told apart. Harness, seed, precision, CFG and prompt
rewriting each move the numbers reported for unified models; a metrics file without them cannot
be reproduced.

    settings = eval_settings("utamoe eval", predictor, tasks, sampling.to_dict())

`utamoe eval` writes it as `settings` in metrics.json, the GenEval and DPG-Bench writers into
their output folder (utamoe.eval.image_benchmarks), and the lmms-eval model logs it (utamoe.eval.lmms).
"""

from __future__ import annotations

import platform
from typing import Any

import torch
import transformers

from utamoe import __version__


def environment() -> dict[str, Any]:
    """Versions and the machine's compute: what changes numbers between two installs."""
    env = {"utamoe": __version__, "torch": torch.__version__,
           "transformers": transformers.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def eval_settings(harness: str, predictor, tasks, sampling: dict[str, Any],
                  **extra: Any) -> dict[str, Any]:
    """The record of one evaluation: `harness` (who ran it: "utamoe eval", "lmms-eval",
    "geneval layout"), the `sampling` settings as run, and for a `predictor` its precision and
    the prompt template of each of `tasks` (None: an evaluation of given predictions)."""
    out: dict[str, Any] = {"harness": harness, **sampling, "prompt_rewriting": "off"}
    if predictor is not None:
        out["precision"] = predictor.precision
        out["prompt_templates"] = {t: predictor.prompt_template(t) for t in tasks}
    out.update(extra)
    out["versions"] = environment()
    return out
