"""Shared fixtures: one tiny untrained unified model behind a Predictor (built once: ~2 s)."""

from __future__ import annotations

import pytest

from utamoe.infer.predictor import Predictor

from ..model.helpers import tiny_model


@pytest.fixture(scope="session")
def predictor() -> Predictor:
    model, tok, _ = tiny_model(seed=0)
    return Predictor(model, tok)
