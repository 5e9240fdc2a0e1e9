"""The understanding-encoder slot: a tower + aligner gives (N, P, D) features in the backbone's
width, and the model reserves exactly `num_tokens` slots for it."""

from __future__ import annotations

import torch

from utamoe.vision.encoders import TowerEncoder

from ..model.helpers import tiny_model


def test_tower_encoder_features_and_token_count():
    model, _, enc = tiny_model(moe=None)
    und = model.und_encoder
    assert isinstance(und, TowerEncoder)
    feats = und(torch.zeros(3, 3, 48, 48))
    assert feats.shape == (3, 9, 32)  # 48 px / 16 px patches = 3x3, backbone width 32
    assert und.num_tokens(48) == 9 == model.und_tokens == enc.und_tokens
    names = {n.split(".")[1] for n, _ in model.named_parameters() if n.startswith("und_encoder.")}
    assert names == {"tower", "aligner"}
