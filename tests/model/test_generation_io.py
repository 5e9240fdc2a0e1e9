"""Sampling with the KV cache equals sampling without it; save/load round trips; CLI errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from utamoe.cli import main
from utamoe.infer.predictor import Predictor
from utamoe.model.io import load_model_dir, save_model_dir

from .helpers import images, mixed_batch, tiny_model


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model, tok, enc = tiny_model()
    model.eval()
    batch, _ = mixed_batch(enc)
    with torch.no_grad():
        ref = model(batch)
    save_model_dir(model, tmp_path / "m", tok)
    loaded, tok2 = load_model_dir(tmp_path / "m")
    with torch.no_grad():
        out = loaded(batch)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=0)
    assert loaded.config.moe == model.config.moe
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert tok2.encode("a red circle") == tok.encode("a red circle")
    # Saving again over the same directory replaces it whole (no stale files, no leftovers).
    save_model_dir(loaded, tmp_path / "m", tok2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_interrupted_save_keeps_the_previous_model(tmp_path, monkeypatch):
    model, tok, enc = tiny_model(moe=None)
    save_model_dir(model, tmp_path / "m", tok)
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(model.image_tokenizer), "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        save_model_dir(model, tmp_path / "m", tok)
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    load_model_dir(tmp_path / "m")


def test_cli_generate_and_answer_and_their_errors(tmp_path, capsys):
    model, tok, enc = tiny_model(moe=None)
    save_model_dir(model, tmp_path / "m", tok)
    img = tmp_path / "x.png"
    Image.fromarray(images(1)[0]).save(img)
    m = str(tmp_path / "m")
    assert main(["generate", "--model", m, "--prompt", "a red circle", "--prompt", "a blue square",
                 "--num-images", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert sorted(p.name for p in tmp_path.glob("g_*.png")) == ["g_0_0.png", "g_0_1.png", "g_1_0.png", "g_1_1.png"]
    assert main(["answer", "--model", m, "--image", str(img), "--question", "what color ?"]) == 0
    assert "what color ?\t" in capsys.readouterr().out
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(small)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    cases = [
        (["answer", "--model", str(tmp_path / "nope"), "--image", str(img), "--question", "q"], "does not exist"),
        (["answer", "--model", m, "--image", str(tmp_path / "bad.png"), "--question", "q"], "cannot read image"),
        (["generate", "--model", m, "--prompt", "  ", "--out", str(tmp_path / "e.png")], "is empty"),
        (["answer", "--model", str(tmp_path), "--image", str(img), "--question", "q"], "not a utamoe model directory"),
    ]
    # Any image size is taken: the model's processor resizes it.
    assert main(["answer", "--model", m, "--image", str(small), "--question", "q"]) == 0
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_predictor_load_needs_tokenizers(tmp_path):
    model, tok, enc = tiny_model(moe=None)
    save_model_dir(model, tmp_path / "m")  # no text tokenizer
    with pytest.raises(ValueError, match="no text_tokenizer"):
        Predictor.load(tmp_path / "m")
