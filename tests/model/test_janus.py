"""A tiny random Janus as a utamoe model: understanding and generation logits equal Hugging Face's."""

from __future__ import annotations

import pytest
import torch
from transformers import JanusConfig, JanusForConditionalGeneration

from utamoe.model.io import load_model_dir, save_model_dir
from utamoe.model.janus import from_hf_janus, load_janus
from utamoe.moe import MoEConfig, moe_layers

D, IMAGE_TOKEN, PATCHES = 32, 100, 16  # 32x32 images, 8 px patches -> 4x4 = 16 features / codes


@pytest.fixture()
def janus():
    cfg = JanusConfig(
        text_config=dict(model_type="llama", hidden_size=D, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=120),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, image_size=32, patch_size=8, projection_dim=D, depth=2),
        vq_config=dict(embed_dim=8, num_embeddings=64, base_channels=32, channel_multiplier=[1, 1, 1, 1],
                       num_res_blocks=1, latent_channels=32, projection_dim=D, image_token_embed_dim=D),
        image_token_id=IMAGE_TOKEN)
    torch.manual_seed(0)
    return JanusForConditionalGeneration(cfg).eval()


def understanding_inputs():
    ids = torch.cat([torch.tensor([[1, 2]]), torch.full((1, PATCHES), IMAGE_TOKEN),
                     torch.tensor([[5, 6, 7]])], dim=1)
    return ids, torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def hf_generation_logits(janus, prefix, codes):
    emb = torch.cat([janus.get_input_embeddings()(prefix),
                     janus.prepare_embeddings_for_image_generation(codes)], dim=1)
    return janus.model.generation_head(janus.model.language_model(inputs_embeds=emb).last_hidden_state)


def our_logits(model, prefix, codes, ids, pixels):
    h, _ = model.hidden(model.embed(ids, pixel_values=pixels))
    und = model.lm_head(h)
    gen_ids = torch.cat([prefix, torch.zeros_like(codes)], dim=1)
    code_ids = torch.cat([torch.full_like(prefix, -1), codes], dim=1)
    h, _ = model.hidden(model.embed(gen_ids, code_ids=code_ids))
    return und, model.gen_head(h)


@torch.no_grad()
def test_understanding_and_generation_logits_equal_janus_then_upcycle_keeps_them(janus):
    model = from_hf_janus(janus).eval()
    ids, pixels = understanding_inputs()
    prefix, codes = torch.tensor([[1, 2, 3]]), torch.randint(0, 64, (1, 6))
    ref_und = janus(input_ids=ids, pixel_values=pixels).logits
    ref_gen = hf_generation_logits(janus, prefix, codes)
    und, gen = our_logits(model, prefix, codes, ids, pixels)
    torch.testing.assert_close(und, ref_und, rtol=0, atol=0)
    torch.testing.assert_close(gen, ref_gen, rtol=0, atol=0)
    assert model.image_tokenizer.encode(pixels).shape == (1, 4, 4)
    assert model.image_tokenizer.decode(torch.randint(0, 64, (1, 4, 4))).shape == (1, 3, 32, 32)

    model.upcycle(MoEConfig())  # the user's next step: TA-MoE in Janus's Llama
    assert len(moe_layers(model.lm)) == 2
    und2, gen2 = our_logits(model, prefix, codes, ids, pixels)
    torch.testing.assert_close(und2, ref_und, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gen2, ref_gen, atol=1e-5, rtol=1e-5)


def test_janus_based_model_saves_and_loads(janus, tmp_path):
    model = from_hf_janus(janus).eval()
    save_model_dir(model, tmp_path / "m")
    loaded, _ = load_model_dir(tmp_path / "m")
    ids, pixels = understanding_inputs()
    with torch.no_grad():
        a, _ = model.hidden(model.embed(ids, pixel_values=pixels))
        b, _ = loaded.hidden(loaded.embed(ids, pixel_values=pixels))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_load_janus_from_a_local_directory(janus, tmp_path):
    janus.save_pretrained(tmp_path / "janus")
    model = load_janus(tmp_path / "janus")
    ids, pixels = understanding_inputs()
    with torch.no_grad():
        ref = janus(input_ids=ids, pixel_values=pixels).logits
        h, _ = model.hidden(model.embed(ids, pixel_values=pixels))
    torch.testing.assert_close(model.lm_head(h), ref, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_janus(tmp_path / "missing")
