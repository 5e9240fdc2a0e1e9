"""utamoe as an lmms-eval model: `lmms-eval --model utamoe --model_args pretrained=RUN/model`.

Registered through lmms-eval's `lmms_eval.models` entry point (pyproject.toml: `utamoe =
"utamoe.eval.lmms_model:manifest"`), so an installed utamoe is found by a fresh lmms-eval
process; the requests are answered by utamoe.eval.lmms.HarnessModel through the Predictor.

model_args (comma-separated key=value, lmms-eval's syntax):
    pretrained=DIR        the model directory (RUN/model); required
    task=vqa              the utamoe text task for every request (default: dialog if the model
                          has conversations, else vqa)
    seed=0                each request's sampling seed
    max_new_tokens=64     when a task's generation_kwargs give none
    settings_path=FILE    write utamoe's settings (precision, prompt template, versions) there
`--device` and `--batch_size` are lmms-eval's own options.

This module imports lmms-eval; nothing in utamoe imports it (only lmms-eval does).
"""

from __future__ import annotations

from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

from utamoe.eval.lmms import HarnessModel
from utamoe.infer.predictor import Predictor


class UtamoeLMM(lmms):
    is_simple = True

    def __init__(self, pretrained: str, task: str | None = None, device: str | None = None,
                 batch_size: int | str = 1, seed: int | str = 0, max_new_tokens: int | str = 64,
                 settings_path: str | None = None, max_batch_size=None, **unknown):
        super().__init__()
        if unknown:
            raise ValueError(f"unknown model_args for utamoe: {', '.join(unknown)} (known: "
                             "pretrained, task, seed, max_new_tokens, settings_path)")
        predictor = Predictor.load(pretrained, device or "cpu")
        self.harness = HarnessModel(predictor, task, int(batch_size), int(seed), int(max_new_tokens),
                                    settings_path)

    def generate_until(self, requests) -> list[str]:
        self.harness.task_dict = self.task_dict  # lmms-eval fills the documents in after init
        return self.harness.generate_until(requests)

    def loglikelihood(self, requests) -> list:
        self.harness.task_dict = self.task_dict
        # lmms-eval 0.7.3's evaluator passes every model output through
        # `unwrap_generation_output`, which turns a (log-probability, is-greedy) pair into its
        # str(); multiple_choice then fails to unpack it. A GenerationResult is passed through
        # as it is, so the pair rides in one (its `text` is not checked).
        return [GenerationResult(text=pair) for pair in self.harness.loglikelihood(requests)]

    def generate_until_multi_round(self, requests) -> list[str]:
        return self.harness.generate_until_multi_round(requests)


def manifest() -> ModelManifest:
    """What lmms-eval's `lmms_eval.models` entry point loads."""
    return ModelManifest(model_id="utamoe", simple_class_path="utamoe.eval.lmms_model.UtamoeLMM")
