"""The diffusers adapter: its contract on a stand-in pipeline (always), a clear error when
diffusers is missing, and real tiny Stable Diffusion / InstructPix2Pix pipelines built from
configs, saved to a directory and loaded from it (when diffusers is installed)."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from utamoe.tasks_exec import (
    ExecContext,
    ExecRequest,
    ExecutorError,
    SpanRouter,
    executors_from_config,
)
from utamoe.tasks_exec.diffusers_exec import DiffusersEdit, DiffusersT2I
from utamoe.tasks_exec.regions import box_pixels

BOX = (0.25, 0.25, 0.75, 0.75)


class StandIn:
    """Records what the adapter passes and answers with PIL images, as a pipeline does."""

    loaded: list = []

    def __init__(self):
        self.calls = []

    @classmethod
    def from_pretrained(cls, path, **kw):
        cls.loaded.append((path, kw))
        return cls()

    def to(self, device):
        self.device = device
        return self

    def set_progress_bar_config(self, **kw):
        pass

    def __call__(self, prompt, num_inference_steps, generator, image=None, **kw):
        self.calls.append(dict(prompt=prompt, steps=num_inference_steps, image=image, **kw))
        size = image.size if image is not None else (kw.get("width", 16), kw.get("height", 16))
        return types.SimpleNamespace(images=[Image.new("RGB", size, (0, 200, 0))])


@pytest.fixture
def standin(monkeypatch, tmp_path):
    fake = types.SimpleNamespace(DiffusionPipeline=StandIn)
    monkeypatch.setitem(sys.modules, "diffusers", fake)
    StandIn.loaded = []
    return tmp_path


def test_the_adapter_contract_on_a_stand_in(standin):
    cfg = {"t2i": {"use": "diffusers_t2i", "model_dir": str(standin), "steps": 2, "height": 24,
                   "width": 32, "call_kwargs": {"negative_prompt": "blurry"}},
           "edit": {"use": "diffusers_edit", "model_dir": str(standin), "steps": 3}}
    ex = executors_from_config(cfg, ExecContext(device="cpu"), defaults=False)
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8)
    _, (t2i, edit) = SpanRouter(ex).run("<t2i>a red circle</t2i> <edit>make it green<box>"
                                        "[0.25,0.25,0.75,0.75]</box></edit>", [image])
    assert StandIn.loaded == [(str(standin), {"trust_remote_code": False,
                                              "local_files_only": True})] * 2
    assert t2i.result.images[0].shape == (24, 32, 3)
    call = ex["t2i"].pipeline.calls[0]
    assert (call["prompt"], call["steps"], call["negative_prompt"]) == ("a red circle", 2, "blurry")
    out = edit.result.images[0]
    assert out.shape == image.shape and edit.result.info["grounded"]
    assert ex["edit"].pipeline.calls[0]["image"].size == (24, 16)  # multiples of 8 for latents
    inside = box_pixels([BOX], 20, 30)
    assert np.array_equal(out[~inside], image[~inside]) and (out[inside] == (0, 200, 0)).all()


def test_missing_diffusers_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    with pytest.raises(ExecutorError, match=r"executors\.t2i: .*pip install 'utamoe\[diffusers\]'"):
        executors_from_config({"t2i": {"use": "diffusers_t2i", "model_dir": str(tmp_path)}},
                              defaults=False)
    with pytest.raises(ExecutorError, match="is not a directory"):
        executors_from_config({"t2i": {"use": "diffusers_t2i", "model_dir": str(tmp_path / "x")}},
                              defaults=False)


def _tiny_pipelines(root):
    """Tiny SD text-to-image and InstructPix2Pix pipelines (random weights) saved under root."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), pad_token="<|endoftext|>",
                        model_max_length=16)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16,
                                        intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                        vocab_size=len(vocab), max_position_embeddings=16))
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, norm_num_groups=2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    sched = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                          steps_offset=1)

    def unet(in_channels):
        return UNet2DConditionModel(
            block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=in_channels,
            out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
            norm_num_groups=2, attention_head_dim=2)

    parts = dict(vae=vae, text_encoder=text, tokenizer=tok, scheduler=sched, safety_checker=None,
                 feature_extractor=None, requires_safety_checker=False)
    StableDiffusionPipeline(unet=unet(4), **parts).save_pretrained(root / "t2i")
    StableDiffusionInstructPix2PixPipeline(unet=unet(8), **parts).save_pretrained(root / "ip2p")
    return root / "t2i", root / "ip2p"


def test_tiny_diffusers_pipelines_from_a_directory(tmp_path):
    pytest.importorskip("diffusers")
    t2i_dir, ip2p_dir = _tiny_pipelines(tmp_path)
    ex = executors_from_config({
        "t2i": {"use": "diffusers_t2i", "model_dir": str(t2i_dir), "steps": 2, "height": 32, "width": 32},
        "edit": {"use": "diffusers_edit", "model_dir": str(ip2p_dir), "steps": 2},
    }, defaults=False)
    router = SpanRouter(ex)
    image = np.random.default_rng(1).integers(0, 255, (32, 32, 3), np.uint8)
    _, outs = router.run("<t2i>a red circle</t2i><edit>make it blue<box>[0.25,0.25,0.75,0.75]</box>"
                         "</edit><edit>make it all blue</edit>", [image])
    assert all(o.ok for o in outs), [o.error for o in outs]
    t2i, boxed, whole = (o.result for o in outs)
    assert t2i.images[0].shape == (32, 32, 3) and t2i.info["pipeline"] == "StableDiffusionPipeline"
    assert boxed.info["pipeline"] == "StableDiffusionInstructPix2PixPipeline"
    inside = box_pixels([BOX], 32, 32)
    assert np.array_equal(boxed.images[0][~inside], image[~inside])
    assert not whole.info["grounded"] and not np.array_equal(whole.images[0], image)
    again = ex["t2i"](ExecRequest("t2i", "a red circle"))  # seeded: the same image again
    assert np.array_equal(again.images[0], t2i.images[0])
    assert isinstance(ex["edit"], DiffusersEdit) and isinstance(ex["t2i"], DiffusersT2I)
