"""What a run checks before its first long step (issue 28, items 9 and 12): every path and file
the recipe names, before tokenizers train; every sample's sequence against the model's
positions, an over-long one an error naming its file and line (or skipped and counted)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from utamoe.config import ConfigError
from utamoe.data.formats import DataFormatError, load_split
from utamoe.train import setup
from utamoe.train.config import build_config

from ..model.helpers import tiny_model
from .conftest import tiny_recipe


def _records(root, prompts):
    root.mkdir(parents=True, exist_ok=True)
    lines = [{"id": f"s{i}", "task": "caption", "group": "und", "prompt": p, "target": "a circle",
              "image": "x.png"} for i, p in enumerate(prompts)]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    Image.new("RGB", (48, 48)).save(root / "x.png")
    return root / "train.jsonl"


def test_a_sequence_past_the_positions_names_its_record_or_is_skipped(tmp_path):
    model, tok, enc = tiny_model(moe=None)  # 256 positions
    split = _records(tmp_path / "d", ["describe", "describe", "word " * 400, "describe"])
    samples, _ = load_split(split)
    with pytest.raises(DataFormatError, match=r"train\.jsonl:3: sample 's2' is \d+ tokens long; "
                                              r"the model has 256 positions"):
        setup.fitting(samples, enc, model, "raise")
    logged = []
    kept, skipped = setup.fitting(samples, enc, model, "skip", log=logged.append)
    assert [s.id for s in kept] == ["s0", "s1", "s3"] and skipped == 1
    assert "1 sample(s) longer than the model's 256 positions skipped" in logged[0]
    lengths = enc.lengths(samples, model.config.code_grid ** 2)
    assert lengths[0] == len(enc.sample(samples[0]).input_ids)  # counted = built


def test_a_broken_backbone_path_is_reported_before_tokenizers_train(tiny_assets, tmp_path,
                                                                    monkeypatch):
    raw = tiny_recipe(tiny_assets, tmp_path / "run")
    raw["tokenizers"] = {"text_vocab_size": 300}  # both tokenizers would be trained (minutes)
    raw["model"]["backbone"] = {"path": str(tmp_path / "no-such-backbone")}

    def trained(*args, **kwargs):
        raise AssertionError("a tokenizer trained before the recipe's paths were checked")

    monkeypatch.setattr(setup, "train_tokenizer", trained)
    monkeypatch.setattr(setup, "train_text_tokenizer", trained)
    monkeypatch.setattr(setup, "load_samples", trained)
    with pytest.raises(FileNotFoundError, match="model.backbone: directory .*no-such-backbone"):
        setup.prepare_run(build_config(raw), tmp_path / "run", acc=None)
    raw["model"]["backbone"] = tiny_recipe(tiny_assets, tmp_path)["model"]["backbone"]
    raw["tokenizers"]["text"] = str(tmp_path / "no-such-tokenizer")
    with pytest.raises(ConfigError, match="tokenizers.text .*no-such-tokenizer"):
        setup.prepare_run(build_config(raw), tmp_path / "run", acc=None)
