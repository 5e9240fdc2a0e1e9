"""Model directories: version-1 directories (before the understanding encoder became one
module) still load with identical outputs, and a version from the future is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel, BertTokenizerFast

from utamoe.model.io import ModelDirError, load_model_dir, save_model_dir
from utamoe.moe import MoEConfig
from utamoe.vision.mixture import MoVEConfig, VisionExpertConfig

from .helpers import mixed_batch, tiny_model


def _as_version_1(src, dst):
    """Rewrite a saved directory the way version 1 laid it out."""
    import shutil

    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    old = {}
    for k, v in weights.items():
        k = k.replace("und_encoder.aligner.", "und_aligner.").replace("und_encoder.tower.", "und_encoder.")
        old[k.replace(".mlp.experts.base.", ".mlp.base.")] = v
    save_file(old, str(dst / "model.safetensors"))
    meta = json.loads((dst / "utamoe.json").read_text())
    meta["version"] = 1
    meta["config"].pop("image_resample")
    (dst / "utamoe.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("moe", [None, MoEConfig(expert_type="lora", num_experts=2, top_k=1)],
                         ids=["dense", "lora-moe"])
def test_version_1_directories_load_with_identical_outputs(tmp_path, moe):
    model, tok, enc = tiny_model(moe=moe)
    save_model_dir(model, tmp_path / "v2", tok)
    _as_version_1(tmp_path / "v2", tmp_path / "v1")
    assert "und_aligner.fc1.weight" in load_file(str(tmp_path / "v1" / "model.safetensors"))
    a, _ = load_model_dir(tmp_path / "v2")
    b, _ = load_model_dir(tmp_path / "v1")
    batch, _ = mixed_batch(enc)
    with torch.no_grad():
        torch.testing.assert_close(a(batch).loss, b(batch).loss, rtol=0, atol=0)


def test_future_version_is_refused(tmp_path):
    model, tok, _ = tiny_model(moe=None)
    save_model_dir(model, tmp_path / "m", tok)
    meta = json.loads((tmp_path / "m" / "utamoe.json").read_text())
    meta["version"] = 99
    (tmp_path / "m" / "utamoe.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match="format version 99"):
        load_model_dir(tmp_path / "m")


def test_directories_saved_with_cfg_dropout_in_the_model_config_still_load(tmp_path):
    """cfg_dropout moved to training (train.cfg_dropout); a utamoe.json written before still
    holds it, and loads with the same outputs."""
    model, tok, enc = tiny_model()
    model.eval()
    save_model_dir(model, tmp_path / "m", tok)
    meta = json.loads((tmp_path / "m" / "utamoe.json").read_text())
    assert "cfg_dropout" not in meta["config"]
    meta["config"]["cfg_dropout"] = 0.1
    (tmp_path / "m" / "utamoe.json").write_text(json.dumps(meta))
    loaded, _ = load_model_dir(tmp_path / "m")
    batch, _ = mixed_batch(enc)
    with torch.no_grad():
        assert torch.equal(loaded(batch).loss, model(batch).loss)


# ---------------------------------------------------------------- a model folder cannot redirect loads

REDIRECTS = {
    "backbone.path": lambda c, d: c["backbone"].update(path=str(d)),
    "backbone.gguf_file": lambda c, d: c["backbone"].update(path=str(d), gguf_file="x.gguf"),
    "vision.path": lambda c, d: c["vision"].update(path=str(d)),
    "janus": lambda c, d: c.update(janus=str(d)),
    "sentence_encoder": lambda c, d: c.update(sentence_encoder="pkg:os"),
    "auto_map": lambda c, d: c["backbone"]["config"].update(auto_map={"AutoModel": "x.Y"}),
}


@pytest.mark.parametrize("key", list(REDIRECTS))
def test_a_saved_model_never_follows_paths_it_names(tmp_path, key):
    """Issue 28, item 4: utamoe.json naming a path, a package or code is refused, naming it."""
    model, tok, _ = tiny_model(moe=None)
    save_model_dir(model, tmp_path / "m", tok)
    meta = json.loads((tmp_path / "m" / "utamoe.json").read_text())
    REDIRECTS[key](meta["config"], tmp_path / "elsewhere")
    (tmp_path / "m" / "utamoe.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match=key):
        load_model_dir(tmp_path / "m")


def _tiny_sentence_encoder(root):
    root.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "color", "is", "the", "where"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(str(root))
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(root)
    return root


def test_the_sentence_encoder_is_saved_inside_the_model(tmp_path):
    enc_dir = _tiny_sentence_encoder(tmp_path / "minibert")
    move = MoVEConfig(encoders=[VisionExpertConfig("codec", kind="codec")], transform="avgpool")
    model, tok, enc = tiny_model(moe=None, move=move, sentence_encoder=str(enc_dir))
    save_model_dir(model, tmp_path / "m", tok)
    shutil.rmtree(enc_dir)  # the original is gone: the copy inside is what loads
    meta = json.loads((tmp_path / "m" / "utamoe.json").read_text())
    assert meta["config"]["sentence_encoder"] == "sentence_encoder"
    loaded, tok2 = load_model_dir(tmp_path / "m")
    batch, _ = mixed_batch(enc)
    with torch.no_grad():
        assert torch.equal(model.instance_embeddings(batch), loaded.instance_embeddings(batch))
        assert torch.equal(model(batch).loss, loaded(batch).loss)
