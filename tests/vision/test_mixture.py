"""MoVE (utamoe.vision.mixture): several encoders with different grids and widths in one slot,
the single-encoder average-pooling case equal to the plain path, frozen encoders, the router,
and clear errors for encoder configs that cannot work."""

from __future__ import annotations

import pytest
import torch

from utamoe.config import ConfigError
from utamoe.moe import route
from utamoe.vision.mixture import MixtureOfVisionExperts, MoVEConfig, VisionExpertConfig

from ..model.helpers import mixed_batch, tiny_model

SIGLIP = dict(model_type="siglip_vision_model", patch_size=16, hidden_size=32, intermediate_size=64,
              num_hidden_layers=1, num_attention_heads=4)
DINO = dict(model_type="dinov2", patch_size=8, hidden_size=24, intermediate_size=48,
            num_hidden_layers=1, num_attention_heads=4)
RESNET = dict(model_type="resnet", embedding_size=16, hidden_sizes=[20], depths=[1],
              layer_type="basic", downsample_in_first_stage=False)


def three(transform="adt", aggregate="router", frozen_dino=False, query_grid=3) -> MoVEConfig:
    return MoVEConfig(encoders=[VisionExpertConfig("vit", config=SIGLIP),
                                VisionExpertConfig("dino", config=DINO, frozen=frozen_dino),
                                VisionExpertConfig("conv", config=RESNET),
                                VisionExpertConfig("codec", kind="codec")],
                      transform=transform, aggregate=aggregate, query_grid=query_grid,
                      adt_heads=4, adt_points=2)


def test_one_encoder_with_average_pooling_equals_the_plain_single_encoder_path():
    plain, _, enc = tiny_model(moe=None)
    move = MoVEConfig(encoders=[VisionExpertConfig("vit", config=SIGLIP)], transform="avgpool",
                      aggregate="add", query_grid=3)  # 48 px / 16 px patches: the same 3x3 grid
    mixed, _, enc2 = tiny_model(moe=None, move=move)
    renamed = {k.replace("und_encoder.", "und_encoder.experts.0."): v
               for k, v in plain.state_dict().items() if not k.startswith("image_tokenizer.")}
    missing, unexpected = mixed.load_state_dict(renamed, strict=False)
    assert not unexpected and all(k.startswith("image_tokenizer.") for k in missing)
    batch, _ = mixed_batch(enc)
    assert enc.und_tokens == enc2.und_tokens == 9
    with torch.no_grad():
        a, b = plain(batch), mixed(batch)
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(plain.und_features(batch.pixel_values), mixed.und_features(batch.pixel_values))


@pytest.mark.parametrize("transform", ["avgpool", "adt"])
def test_encoders_with_different_grids_and_widths_train_together(transform):
    model, _, enc = tiny_model(moe=None, move=three(transform, frozen_dino=True))
    und = model.und_encoder
    assert isinstance(und, MixtureOfVisionExperts) and und.names == ["vit", "dino", "conv", "codec"]
    batch, _ = mixed_batch(enc)
    grids = [tuple(e.raw_features(batch.pixel_values).shape[1:3]) for e in und.experts]
    assert grids == [(3, 3), (6, 6), (12, 12), (6, 6)]
    assert enc.und_tokens == 9
    model(batch).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("und_encoder.")}
    for name in ("experts.0.tower", "experts.2.tower", "experts.3.aligner", "router"):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if f".{name}." in n), name
    # the frozen encoder gets no gradient, and the codec is referenced, not copied
    assert all(g is None for n, g in grads.items() if ".experts.1.tower." in n)
    assert not any(".experts.3.tower" in n for n in grads)
    assert not any(n.startswith("und_encoder.experts.3.") and "aligner" not in n and "transform" not in n
                   for n in model.state_dict())


def test_router_starts_uniform_reads_the_instruction_and_reports_its_weights():
    model, _, enc = tiny_model(moe=None, move=three("avgpool"))
    batch, _ = mixed_batch(enc)
    inst = model.instance_embeddings(batch)
    assert inst.shape == (len(batch.task_ids), 32)
    w = model.und_encoder.weights(inst[:3], 3, "cpu")
    assert torch.allclose(w, torch.full((3, 4), 0.25))
    with torch.no_grad():
        model.und_encoder.router.fc2.weight.normal_()
    w = model.und_encoder.weights(inst[:3], 3, "cpu")
    assert torch.allclose(w.sum(1), torch.ones(3)) and not torch.allclose(w[0], w[1])
    with route(model, instances=inst) as session, torch.no_grad():
        model.embed(batch.input_ids, batch.code_ids, batch.pixel_values, inst)
    stats = session.layer_stats()["und_encoder"]
    assert int(stats["move_images"]) == 3
    assert torch.allclose(stats["move_weight"].sum(), torch.tensor(3.0))
    with pytest.raises(ValueError, match="one instruction embedding per image"):
        model.und_encoder(batch.pixel_values, None)


def test_instruction_is_the_mean_embedding_of_the_prompt_tokens():
    model, tok, enc = tiny_model(moe=None, move=three("avgpool"))
    batch, seqs = mixed_batch(enc)
    inst = model.instance_embeddings(batch)
    row = 0  # "what color is the circle ?"
    ids = tok.encode(seqs[row].prompt, add_special_tokens=False)
    expect = model.lm.get_input_embeddings()(torch.tensor(ids)).mean(0)
    assert seqs[row].prompt == "what color is the circle ?"
    assert torch.allclose(inst[row], expect, atol=1e-6)
    assert int(batch.prompt_mask[row].sum()) == len(ids)


def test_bad_encoder_configs_fail_with_the_encoder_named():
    with pytest.raises(ConfigError, match="at least one encoder"):
        MoVEConfig(encoders=[])
    with pytest.raises(ConfigError, match="unique"):
        MoVEConfig(encoders=[VisionExpertConfig("a", config=SIGLIP), VisionExpertConfig("a", config=DINO)])
    with pytest.raises(ConfigError, match=r"encoders\.0 \(x\).*model_type"):
        MoVEConfig(encoders=[VisionExpertConfig("x")])
    llama = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=4, vocab_size=10)
    with pytest.raises(ConfigError, match=r"encoders\.1 \(text\).*not a vision model"):
        tiny_model(moe=None, move=MoVEConfig(encoders=[VisionExpertConfig("vit", config=SIGLIP),
                                                       VisionExpertConfig("text", config=llama)]))
    with pytest.raises(ConfigError, match="model.move.*heads"):
        tiny_model(moe=None, move=MoVEConfig(encoders=[VisionExpertConfig("vit", config=SIGLIP)],
                                             adt_heads=5))
    with pytest.raises(ConfigError, match="image_size"):
        tiny_model(moe=None, move=MoVEConfig(encoders=[VisionExpertConfig(
            "vit", config={**SIGLIP, "image_size": 64})]))


def test_a_loaded_tower_directory_works_and_a_missing_one_is_named(tmp_path):
    from transformers import AutoConfig, AutoModel

    AutoModel.from_config(AutoConfig.for_model(**DINO, image_size=48)).save_pretrained(tmp_path / "dino")
    move = MoVEConfig(encoders=[VisionExpertConfig("dino", path=str(tmp_path / "dino"), frozen=True)],
                      transform="avgpool", aggregate="add", query_grid=3)
    model, _, enc = tiny_model(moe=None, move=move)
    assert model.und_encoder.experts[0].tower.config.model_type == "dinov2"
    move.encoders[0].path = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tiny_model(moe=None, move=move)
