"""The three systems in one model: MoVE (three encoders incl. the codec, ADT, router) in front of
a backbone whose FFNs are TA-MoE layers with MoLE adapters beside them. Zero-initialised
adapters change nothing; save, load and generate round-trip; mixed decoding equals each request
alone; a missing sentence-encoder directory is a clear error at load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from utamoe.config import ConfigError
from utamoe.infer.engine import Engine, Request
from utamoe.infer.sampling import SamplingConfig
from utamoe.model.io import ModelDirError, load_model_dir, save_model_dir
from utamoe.moe import TaskAwareMoE, moe_layers
from utamoe.moe.mole import MoLELayer, mole_layers

from ..infer.batch import answers, pictures
from .helpers import images, mixed_batch, perturb_mome, tiny_mome_model


@pytest.fixture(scope="module")
def trained():
    model, tok, enc = tiny_mome_model()
    perturb_mome(model)
    return model.eval(), tok, enc


def test_the_layers_compose_and_zero_adapters_change_nothing():
    with_mole, _, enc = tiny_mome_model(seed=3)
    without, _, _ = tiny_mome_model(seed=3, mole=False)
    blocks = with_mole.lm.layers
    assert all(isinstance(b.mlp, MoLELayer) and isinstance(b.mlp.ffn, TaskAwareMoE) for b in blocks)
    assert len(moe_layers(with_mole)) == len(mole_layers(with_mole)) == len(blocks)
    state = {k.replace(".mlp.ffn.", ".mlp."): v for k, v in with_mole.state_dict().items()}
    missing, unexpected = without.load_state_dict(state, strict=False)
    assert not missing and all(".adapters." in k or "_gate" in k for k in unexpected)
    batch, _ = mixed_batch(enc)
    with torch.no_grad():
        assert torch.equal(with_mole(batch).loss, without(batch).loss)


def test_save_load_and_generate_round_trip(trained, tmp_path):
    model, tok, enc = trained
    save_model_dir(model, tmp_path / "m", tok)
    meta = json.loads((tmp_path / "m" / "utamoe.json").read_text())
    assert [e["name"] for e in meta["config"]["move"]["encoders"]] == ["vit", "dino", "codec"]
    loaded, tok2 = load_model_dir(tmp_path / "m")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    enc2 = loaded.sequence_encoder(tok2)
    batch, _ = mixed_batch(enc)
    with torch.no_grad():
        assert torch.equal(model(batch).loss, loaded(batch).loss)
    img = images(2)
    cfg = SamplingConfig(max_new_tokens=5)
    tasks, prompts = ["vqa", "caption"], ["what color is the circle ?", "describe the image ."]
    assert answers(model, enc, tasks, prompts, img, cfg) == \
        answers(loaded, enc2, tasks, prompts, img, cfg)
    pics = pictures(model, enc, ["a red circle at the top left"], SamplingConfig(cfg_scale=2.0))
    assert np.array_equal(pics[0], pictures(loaded, enc2, ["a red circle at the top left"],
                                                   SamplingConfig(cfg_scale=2.0))[0])


def test_mixed_decoding_equals_each_request_alone(trained):
    model, _, enc = trained
    img = images(1)[0]
    reqs = [Request("vqa", "what color is the circle ?", img, SamplingConfig(max_new_tokens=5)),
            Request("t2i", "a red circle", None, SamplingConfig(temperature=1.0, seed=3, cfg_scale=2.0)),
            Request("grounding", "where is the red circle ?", img, SamplingConfig(max_new_tokens=5))]
    got = Engine(model, enc).generate(reqs)
    for r, g in zip(reqs, got):
        if r.task == "t2i":
            assert np.array_equal(g.image, pictures(model, enc, [r.prompt], r.sampling)[0])
        else:
            assert g.text == answers(model, enc, [r.task], [r.prompt], [img], r.sampling)[0]


def test_the_instruction_changes_the_answer_path(trained):
    """Two prompts route differently: the MoVE weights differ per instruction."""
    model, _, enc = trained
    batch, _ = mixed_batch(enc)
    inst = model.instance_embeddings(batch)
    w = model.und_encoder.weights(inst[:2], 2, "cpu")
    assert not torch.allclose(w[0], w[1])


def test_missing_sentence_encoder_directory_is_a_clear_error(trained, tmp_path):
    model, tok, _ = trained
    save_model_dir(model, tmp_path / "m", tok)
    meta = json.loads((tmp_path / "m" / "utamoe.json").read_text())
    meta["config"]["sentence_encoder"] = str(tmp_path / "gone")
    (tmp_path / "m" / "utamoe.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match="names sentence_encoder=.*gone"):  # never followed
        load_model_dir(tmp_path / "m")
    with pytest.raises(ConfigError, match="gone.*not a Hugging Face model directory"):
        load_model_dir(tmp_path / "m", follow_paths=True)
