"""Inference: one decoding engine over requests, behind one predictor.

    from utamoe.infer import Predictor, SamplingConfig
    p = Predictor.load("runs/demo/model")
    p.answer(image, "what color is the circle?")

`engine` is the one decoding loop (text, conversations, image codes, classifier-free guidance,
per-cell constraints, routing traces); `predictor` is the only door to it: the CLI, evaluation,
chat, executors and the server's batcher all call a Predictor.
"""

from utamoe.infer.checks import InputError
from utamoe.infer.engine import CellConstraint, Engine, Request, Result
from utamoe.infer.predictor import Predictor
from utamoe.infer.sampling import SamplingConfig

__all__ = ["CellConstraint", "Engine", "InputError", "Predictor", "Request", "Result",
           "SamplingConfig"]
