"""Upcycling tiny Hugging Face decoders: same logits at init, experts train, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

from utamoe.moe import (
    MoEConfig,
    TaskAwareMoE,
    UnsupportedArchitectureError,
    moe_layers,
    route,
    upcycle,
)

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)


def tiny(arch: str):
    torch.manual_seed(0)
    if arch == "llama":
        cfg = LlamaConfig(**TINY)
    elif arch == "qwen2":
        cfg = Qwen2Config(**TINY)
    elif arch == "qwen3":
        cfg = Qwen3Config(**TINY, head_dim=8)
    else:
        cfg = Gemma3TextConfig(**TINY, head_dim=8, sliding_window=16)
    return AutoModelForCausalLM.from_config(cfg).eval()


ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]
MOE_CASES = {
    "default": MoEConfig(),
    "topk": MoEConfig(routing="topk", num_experts=4, top_k=2, num_shared_experts=0),
    "lora": MoEConfig(expert_type="lora", lora_rank=8),
}


@pytest.mark.parametrize("moe", list(MOE_CASES), ids=str)
@pytest.mark.parametrize("arch", ARCHS)
def test_upcycled_logits_equal_dense_then_train_apart(arch, moe):
    dense = tiny(arch)
    model = upcycle(copy.deepcopy(dense), MOE_CASES[moe])
    assert len(moe_layers(model)) == 2
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        ref = dense(input_ids=ids).logits
        torch.testing.assert_close(model(input_ids=ids).logits, ref, atol=1e-5, rtol=1e-5)

    model.train()
    expert_params = {n: p.detach().clone() for n, p in model.named_parameters()
                     if ".experts." in n and p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with route(model, task_labels=torch.tensor([0, 1])) as session:
        loss = model(input_ids=ids, labels=ids).loss + session.aux_loss()
        loss.backward()
    opt.step()
    changed = [n for n, p in model.named_parameters() if n in expert_params
               and not torch.equal(p, expert_params[n])]
    assert changed, "no expert parameter moved after one optimiser step"
    with torch.no_grad():
        assert not torch.allclose(model.eval()(input_ids=ids).logits, ref, atol=1e-4)


def test_upcycle_detects_gemma_activation_and_chosen_layers():
    model = upcycle(tiny("gemma3"), MoEConfig(layers=[1]))
    layers = model.model.layers
    assert not isinstance(layers[0].mlp, TaskAwareMoE)
    assert isinstance(layers[1].mlp, TaskAwareMoE)
    assert layers[1].mlp.experts.act_name == "gelu_tanh"
    assert isinstance(upcycle(tiny("llama").model).layers[0].mlp, TaskAwareMoE)  # base model too


def test_group_mlps_initialise_each_groups_experts():
    dense = tiny("llama")
    task_ffns = {i: [copy.deepcopy(b.mlp) for _ in range(2)] for i, b in enumerate(dense.model.layers)}
    with torch.no_grad():
        task_ffns[0][1].down_proj.weight.mul_(2.0)
    model = upcycle(dense, MoEConfig(num_experts=4, top_k=1), group_mlps=task_ffns)
    layer = model.model.layers[0].mlp
    w = task_ffns[0][1].down_proj.weight.T
    torch.testing.assert_close(layer.experts.w_down[2], w)  # experts 2, 3 belong to group "gen"
    torch.testing.assert_close(layer.shared.w_down[0], w / 2)  # shared expert copies the dense MLP


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: AutoModelForCausalLM.from_config(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50)),
         "not a dense gated MLP"),
        (lambda: AutoModelForCausalLM.from_config(Qwen3MoeConfig(
            hidden_size=32, moe_intermediate_size=16, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, vocab_size=50, head_dim=8)),
         "Qwen3MoeSparseMoeBlock is not a dense gated MLP"),
        (lambda: AutoModelForCausalLM.from_config(LlamaConfig(**TINY, mlp_bias=True)), "bias"),
        (lambda: torch.nn.Linear(4, 4), "found no decoder blocks"),
    ],
    ids=["gpt2", "qwen3_moe", "mlp_bias", "not_a_decoder"],
)
def test_unsupported_architectures_fail_clearly(make, match):
    with pytest.raises(UnsupportedArchitectureError, match=match):
        upcycle(make())


def test_upcycling_twice_fails():
    model = upcycle(tiny("llama"))
    with pytest.raises(UnsupportedArchitectureError, match="already a TaskAwareMoE"):
        upcycle(model)
