"""Hugging Face directories are data (issue 28, items 2, 8 and 12): no load runs code a folder
ships, a vision tower loaded from a path survives the recipe's meta-device preflight, a text
model given as a vision encoder is refused naming the key, and a backbone folder missing or
misshaping weights is an error instead of silently random weights."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from utamoe.config import ConfigError
from utamoe.hf.local import RemoteCodeRefused
from utamoe.hf.parts import HFPart, build_backbone, build_vision
from utamoe.model.config import UnifiedConfig
from utamoe.model.instructions import SentenceEncoder
from utamoe.text.tokenizer import load_text_tokenizer, train_text_tokenizer
from utamoe.train.stages import preflight
from utamoe.vision.mixture import MoVEConfig, VisionExpertConfig

SRC = Path(__file__).resolve().parents[2] / "src" / "utamoe"
LLAMA = dict(model_type="llama", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=2, vocab_size=64)
SIGLIP = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32,
              num_hidden_layers=1, num_attention_heads=2, patch_size=8, image_size=16)


def _save(config: dict, root: Path, causal: bool = True) -> Path:
    cls = AutoModelForCausalLM if causal else AutoModel
    cls.from_config(AutoConfig.for_model(**config)).save_pretrained(root)
    return root


def _with_code(root: Path, file: str = "config.json") -> Path:
    """Give `root` an auto_map pointing at a Python file that leaves a mark when it runs."""
    mark = root / "RAN"
    (root / "evil.py").write_text(f"open({str(mark)!r}, 'w').write('ran')\n")
    meta = json.loads((root / file).read_text()) if (root / file).is_file() else {}
    meta["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model",
                        "AutoTokenizer": ["evil.Tok", None], "AutoModel": "evil.Model"}
    (root / file).write_text(json.dumps(meta))
    return mark


def test_a_backbone_with_auto_map_is_refused_and_its_code_never_runs(tmp_path):
    mark = _with_code(_save(LLAMA, tmp_path / "bb"))
    with pytest.raises(RemoteCodeRefused, match=r"model.backbone: .*config.json has an `auto_map`"):
        build_backbone(HFPart(path=str(tmp_path / "bb")), 64)
    with torch.device("meta"), pytest.raises(RemoteCodeRefused):  # the preflight too
        build_backbone(HFPart(path=str(tmp_path / "bb")), 64)
    assert not mark.exists()


def test_a_tokenizer_with_auto_map_is_refused(tmp_path):
    train_text_tokenizer(["a red circle"] * 20, 280).save_pretrained(str(tmp_path / "tok"))
    mark = _with_code(tmp_path / "tok", "tokenizer_config.json")
    with pytest.raises(RemoteCodeRefused, match="tokenizers.text"):
        load_text_tokenizer(tmp_path / "tok")
    assert not mark.exists()


def test_vision_and_sentence_encoders_with_auto_map_are_refused(tmp_path):
    mark = _with_code(_save(SIGLIP, tmp_path / "vis", causal=False))
    with pytest.raises(RemoteCodeRefused, match="model.vision"):
        build_vision(HFPart(path=str(tmp_path / "vis")), 16)
    with pytest.raises(RemoteCodeRefused, match="model.sentence_encoder"):
        SentenceEncoder(str(tmp_path / "vis"))
    assert not mark.exists()


def test_every_hugging_face_load_goes_through_the_guard():
    """No `X.from_pretrained(...)` in the library except through utamoe.hf.local.pretrained
    (and utamoe's own VQ tokenizer's)."""
    raw = []
    for file in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "from_pretrained":
                owner = ast.unparse(node.func.value)
                if owner not in ("VQTokenizer", "loader") and "_image_tokenizer_class" not in owner:
                    raw.append(f"{file.relative_to(SRC)}:{node.lineno} {ast.unparse(node)[:60]}")
    assert not raw, raw


def test_a_vision_tower_from_a_path_survives_the_meta_preflight(tmp_path):
    _save(SIGLIP, tmp_path / "vis", causal=False)
    with torch.device("meta"):
        tower = build_vision(HFPart(path=str(tmp_path / "vis")), 16)
    assert next(tower.parameters()).device.type == "meta"
    loaded = build_vision(HFPart(path=str(tmp_path / "vis")), 16)
    assert loaded(pixel_values=torch.zeros(1, 3, 16, 16)).last_hidden_state.shape == (1, 4, 16)


def test_a_text_model_as_vision_encoder_names_the_key(tmp_path):
    _save(LLAMA, tmp_path / "llm")
    with pytest.raises(ConfigError, match=r"model.vision: .* not a vision model"):
        build_vision(HFPart(path=str(tmp_path / "llm")), 16)


def _damage(root: Path, edit) -> None:
    weights = root / "model.safetensors"
    save_file(edit(load_file(str(weights))), str(weights), metadata={"format": "pt"})


def test_a_backbone_missing_a_layer_is_an_error_not_random_weights(tmp_path):
    root = _save(LLAMA, tmp_path / "bb")
    _damage(root, lambda sd: {k: v for k, v in sd.items() if ".layers.1." not in k})
    with pytest.raises(ConfigError, match=r"lacks 9 weight\(s\).*layers\.1\."):
        build_backbone(HFPart(path=str(root)), 64)


def test_a_backbone_with_wrong_shapes_or_pickled_weights_is_an_error(tmp_path):
    root = _save(LLAMA, tmp_path / "bb")
    _damage(root, lambda sd: {**sd, "model.norm.weight": torch.ones(3)})
    with pytest.raises(ConfigError, match="model.backbone.path"):
        build_backbone(HFPart(path=str(root)), 64)
    pickled = _save(LLAMA, tmp_path / "pk")
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\nq\x00.")  # not weights
    with pytest.raises(ConfigError, match="model.backbone.path"):
        build_backbone(HFPart(path=str(pickled)), 64)


def test_the_recipe_preflight_takes_vision_paths(tmp_path):
    """model.vision.path and a MoVE encoder's path, built on the meta device by preflight."""
    _save({**SIGLIP, "image_size": 48}, tmp_path / "vis", causal=False)
    base = UnifiedConfig(vision=HFPart(path=str(tmp_path / "vis")), vocab_size=64, num_codes=16,
                         code_grid=4)
    preflight(base, [])
    move = MoVEConfig(encoders=[VisionExpertConfig("sig", path=str(tmp_path / "vis"))])
    preflight(dataclasses.replace(base, move=move), [])
