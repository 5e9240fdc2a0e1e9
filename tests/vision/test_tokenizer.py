"""Tests of the VQ image tokenizer: shapes and dtypes of the codec, a short training
run whose loss falls, dead-code restart, save/load round trip and load errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from utamoe.shapes.benchmark import renders as shapes_images
from utamoe.vision import TokenizerConfig, TokenizerLoadError, VQTokenizer

TINY = TokenizerConfig(hidden_channels=32, latent_channels=32, codebook_size=32, steps=40,
                       batch_size=8)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.stack(shapes_images(n, seed=seed))


@pytest.mark.parametrize("encoder_type", ["patch", "janus"])
def test_encode_decode_shapes_and_dtypes(encoder_type):
    torch.manual_seed(0)
    model = VQTokenizer(TokenizerConfig(encoder_type=encoder_type, codebook_size=64)).eval()
    imgs = _images(3)
    codes = model.encode(imgs)
    assert codes.dtype == torch.long and codes.shape == (3, 6, 6) == (3, model.grid_size, model.grid_size)
    assert int(codes.min()) >= 0 and int(codes.max()) < model.num_codes
    pixels = model.decode(codes)
    assert pixels.shape == (3, 3, 48, 48) and pixels.dtype == torch.float32
    assert float(pixels.abs().max()) <= 1.0
    out = model.to_uint8(pixels)
    assert out.shape == (3, 48, 48, 3) and out.dtype == np.uint8
    # float input in [-1, 1] and a single HxWx3 image encode to the same codes
    assert torch.equal(model.encode(model.to_pixels(imgs)), codes)
    assert torch.equal(model.encode(imgs[0]), codes[:1])
    assert torch.equal(model.decode(codes.view(3, 36)), pixels)  # flat codes too


def test_decode_rejects_bad_codes():
    model = VQTokenizer(TINY)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 32\)"):
        model.decode(torch.full((1, 6, 6), 32))
    with pytest.raises(ValueError, match="expected codes"):
        model.decode(torch.zeros(1, 5, 5, dtype=torch.long))


def test_save_load_round_trip_is_identical(tmp_path):
    torch.manual_seed(0)
    model = VQTokenizer(TINY).eval()
    path = model.save_pretrained(tmp_path / "tok")
    model.save_pretrained(tmp_path / "tok")  # overwriting an existing dir works
    loaded = VQTokenizer.from_pretrained(path)
    assert loaded.config == model.config
    imgs = _images(4)
    codes = model.encode(imgs)
    assert torch.equal(loaded.encode(imgs), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temp dirs left


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(TokenizerLoadError, match="no tokenizer directory"):
        VQTokenizer.from_pretrained(tmp_path / "missing")
    path = VQTokenizer(TINY).save_pretrained(tmp_path / "tok")
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TokenizerLoadError, match="model.safetensors: unreadable"):
        VQTokenizer.from_pretrained(path)
    VQTokenizer(TokenizerConfig(codebook_size=16)).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "tokenizer_config.json").replace(path / "tokenizer_config.json")
    VQTokenizer(TINY).save_pretrained(tmp_path / "w")
    (tmp_path / "w" / "model.safetensors").replace(path / "model.safetensors")
    with pytest.raises(TokenizerLoadError, match="do not match"):
        VQTokenizer.from_pretrained(path)
    (path / "tokenizer_config.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(TokenizerLoadError, match="tokenizer_config.json: not a utamoe"):
        VQTokenizer.from_pretrained(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(TokenizerLoadError, match="model.safetensors: missing"):
        VQTokenizer.from_pretrained(path)


def test_janus_parity_decode():
    """Our decode of a wrapped HF JanusVQVAE equals HF's own decode (same blocks/weights)."""
    from transformers import JanusVQVAEConfig
    from transformers.models.janus.modeling_janus import JanusVQVAE

    torch.manual_seed(0)
    hf = JanusVQVAE(JanusVQVAEConfig(base_channels=32, channel_multiplier=[1, 2],
                                     num_res_blocks=1, latent_channels=32, embed_dim=8,
                                     num_embeddings=64, num_patches=4)).eval()
    ours = VQTokenizer.from_janus(hf)
    assert ours.grid_size == 4 and ours.config.image_size == 8
    codes = torch.randint(64, (2, 4, 4))
    with torch.no_grad():
        ref = hf.decode(codes.view(2, 16))
    torch.testing.assert_close(ours.decoder(ours.post_quant_conv(ours.quantize.lookup(codes))), ref)
