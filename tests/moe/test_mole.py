"""MoLE (MoME's routed adapters beside each FFN): exact no-op at init, top-1 routing per
instance or token, grouped == loop dispatch, Gumbel straight-through, the balance loss, and
upcycling (plain and the UTAMoE stages) through the MoLE wrapper."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from utamoe.config import ConfigError
from utamoe.moe import (
    MoEConfig,
    MoLEConfig,
    MoLELayer,
    RoutingSession,
    TaskAwareMoE,
    UnsupportedArchitectureError,
    add_mole,
    mole_layers,
    route,
    upcycle,
)
from utamoe.train.stages import split_ffn, upcycle_stage

from .helpers import assert_close, grads

D, DE, E = 16, 4, 4
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY)).eval()


def randomise_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-zero up-projections and biases, so that adapters change outputs and get gradients."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in mole_layers(model):
            for p in layer.adapters.parameters():
                p.normal_(std=0.2)


def make_layer(dtype=torch.float32, seed: int = 0, **cfg) -> MoLELayer:
    torch.manual_seed(seed)
    config = MoLEConfig(**{"num_experts": E, "bottleneck": 8, **cfg})
    layer = MoLELayer(torch.nn.Linear(D, D, bias=False), config, D, DE)
    randomise_adapters(layer, seed + 1)
    layer.to(dtype)
    for gate in (layer.instance_gate, layer.token_gate):
        if gate is not None:
            gate.float()
            torch.nn.init.normal_(gate.weight, std=1.0)  # decisive routing in small tests
    return layer


def per_token_reference(layer: MoLELayer, x_TD, ids_T, w_T) -> torch.Tensor:
    return torch.stack([layer.ffn(x_TD[t]) + w_T[t] * layer.adapters.expert_forward(x_TD[t:t + 1],
                                                                                   int(ids_T[t]))[0]
                        for t in range(x_TD.shape[0])])


@pytest.mark.parametrize("cfg, key", [
    ({"num_experts": 0}, "num_experts"), ({"bottleneck": 0}, "bottleneck"),
    ({"routing": "sentence"}, "routing"), ({"gumbel_tau": 0.0}, "gumbel_tau"),
    ({"balance_loss_coef": -1.0}, "balance_loss_coef"), ({"layers": [-1]}, "layers"),
    ({"act": "swish"}, "act"), ({"dispatch": "fast"}, "dispatch")])
def test_config_errors_name_the_key(cfg, key):
    with pytest.raises(ConfigError, match=f"MoLEConfig.{key}:"):
        MoLEConfig(**cfg)


@pytest.mark.parametrize("routing", ["instance", "token", "instance_token"])
def test_zero_initialised_adapters_leave_llama_logits_unchanged(routing):
    dense = tiny_llama()
    model = copy.deepcopy(dense)
    added = add_mole(model, MoLEConfig(routing=routing), instance_dim=8)
    assert len(added) == 2 and mole_layers(model) == added
    assert all(isinstance(layer.mlp, MoLELayer) for layer in model.model.layers)
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad(), route(model, instances=torch.randn(2, 8)):
        got = model(input_ids=ids).logits
    assert torch.equal(got, dense(input_ids=ids).logits)


def test_instance_top1_picks_one_adapter_per_sample_and_only_it_learns():
    layer = make_layer(routing="instance")
    with torch.no_grad():
        layer.instance_gate.weight.copy_(5.0 * torch.eye(E))
    inst = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])  # -> adapters 1 and 3
    x = torch.randn(2, 5, D)
    with route(torch.nn.Sequential(layer), instances=inst) as session:
        y = layer(x)
    ids_T = torch.tensor([1] * 5 + [3] * 5)
    w_T = torch.softmax(5.0 * inst, -1).max(-1).values.repeat_interleave(5)
    torch.testing.assert_close(y.reshape(10, D), per_token_reference(layer, x.reshape(10, D), ids_T, w_T))
    assert session.layer_stats()["0"]["mole_tokens"].tolist() == [0, 5, 0, 5]
    y.square().sum().backward()
    for name in ("w_down", "b_down", "w_up", "b_up"):
        g = getattr(layer.adapters, name).grad
        nonzero = [e for e in range(E) if g[e].abs().sum() > 0]
        assert nonzero == [1, 3], name
    assert layer.instance_gate.weight.grad.abs().sum() > 0  # the router learns from the task loss


@pytest.mark.parametrize("routing", ["token", "instance_token"])
def test_token_modes_route_each_token(routing):
    layer = make_layer(routing=routing)
    x, inst = torch.randn(2, 8, D), torch.randn(2, DE)
    with torch.no_grad(), route(layer, instances=inst):
        y = layer(x)
    logits = x.reshape(16, D) @ layer.token_gate.weight.T
    if routing == "instance_token":
        logits = logits + (inst @ layer.instance_gate.weight.T).repeat_interleave(8, 0)
    w_T, ids_T = torch.softmax(logits, -1).max(-1)
    with torch.no_grad():
        torch.testing.assert_close(y.reshape(16, D), per_token_reference(layer, x.reshape(16, D), ids_T, w_T))
    assert all(len(set(ids_T.view(2, 8)[b].tolist())) > 1 for b in range(2))  # per token, not per sample


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("routing", ["instance", "token", "instance_token"])
def test_grouped_dispatch_equals_loop_in_values_and_grads(routing, dtype):
    fast = make_layer(dtype, routing=routing, balance_loss_coef=0.1)
    slow = make_layer(dtype, routing=routing, balance_loss_coef=0.1, dispatch="loop")
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(3, 6, D, dtype=dtype)
    inst = torch.randn(3, DE)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, 4:] = 0  # padding: only real tokens are routed and computed
    g = torch.randn(3, 6, D, dtype=dtype)
    outs = []
    for layer in (fast, slow):
        xi = x.clone().requires_grad_()
        with route(layer, instances=inst, attention_mask=mask) as session:
            y = layer(xi)
            ((y.float() * g.float()).sum() + session.aux_loss()).backward()
        outs.append((y, xi.grad, grads(layer)))
    assert_close(outs[0][0], outs[1][0], dtype, "y")
    assert_close(outs[0][1], outs[1][1], dtype, "x.grad")
    assert outs[0][2].keys() == outs[1][2].keys()
    for name in outs[0][2]:
        assert_close(outs[0][2][name], outs[1][2][name], dtype, name)
    assert torch.equal(outs[0][0][0, 4:], fast.ffn(x)[0, 4:])  # no adapter on padding


def test_gumbel_is_straight_through_in_training_and_argmax_in_eval():
    layer = make_layer(routing="instance", gumbel=True).train()
    logits = torch.randn(64, E, requires_grad=True)
    ids, w = layer._select(logits)
    assert torch.equal(w, torch.ones(64))  # exactly 1 forward
    assert not torch.equal(ids, logits.argmax(-1))  # sampled, not the argmax
    (w * torch.arange(64.0)).sum().backward()
    assert logits.grad.abs().sum() > 0
    ids_eval, w_eval = layer.eval()._select(logits)
    assert torch.equal(ids_eval, logits.argmax(-1)) and torch.equal(w_eval, torch.ones(64))

    # End to end: one sampled adapter per sequence with weight 1, and the gate gets gradients.
    layer.train()
    x = torch.randn(3, 5, D)
    with route(layer, instances=torch.randn(3, DE)):
        y = layer(x)
    delta = (y - layer.ffn(x)).detach()
    with torch.no_grad():
        for b in range(3):
            hits = [e for e in range(E)
                    if torch.allclose(delta[b], layer.adapters.expert_forward(x[b], e), atol=1e-6)]
            assert len(hits) == 1, (b, hits)
    (y * torch.randn_like(y)).sum().backward()
    assert layer.instance_gate.weight.grad.abs().sum() > 0


def test_balance_loss_and_token_counts_match_a_hand_computation():
    layer = make_layer(routing="token", num_experts=3, balance_loss_coef=0.5)
    x = torch.randn(2, 4, D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    with torch.no_grad(), route(layer, attention_mask=mask) as session:
        layer(x)
    x_v = x[mask.bool()]  # the 5 real tokens
    probs = torch.softmax(x_v @ layer.token_gate.weight.T, -1)
    counts = torch.bincount(probs.argmax(-1), minlength=3)
    expected = 3 * ((counts / 5.0) * probs.mean(0)).sum()
    torch.testing.assert_close(session.losses()["mole_balance"], expected)
    torch.testing.assert_close(session.aux_loss(), 0.5 * expected)
    assert session.layer_stats()["moe"]["mole_tokens"].tolist() == counts.tolist()


def test_mole_then_upcycle_keeps_the_adapters_and_the_logits():
    model = tiny_llama()
    add_mole(model, MoLEConfig(), instance_dim=8)
    randomise_adapters(model)
    adapters = {k: v.clone() for k, v in model.state_dict().items() if ".adapters." in k}
    ids, inst = torch.randint(0, 97, (2, 9)), torch.randn(2, 8)
    with torch.no_grad(), route(model, instances=inst):
        ref = model(input_ids=ids).logits
    upcycle(model, MoEConfig())
    for block in model.model.layers:
        assert isinstance(block.mlp, MoLELayer) and isinstance(block.mlp.ffn, TaskAwareMoE)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in adapters.items())
    with torch.no_grad(), route(model, instances=inst) as session:
        torch.testing.assert_close(model(input_ids=ids).logits, ref, atol=1e-5, rtol=1e-5)
    assert {"model.layers.0.mlp", "model.layers.0.mlp.ffn"} <= set(session.layer_stats())
    assert {"group", "balance", "z", "mole_balance"} == set(session.losses())
    with pytest.raises(UnsupportedArchitectureError, match=r"layers\.0\.mlp\.ffn is already a TaskAwareMoE"):
        upcycle(model)


def test_split_ffn_then_upcycle_stage_keep_the_adapters_and_the_logits():
    unified = torch.nn.Module()  # what the stages touch of a UnifiedModel: .lm and .config.moe
    unified.lm, unified.config = tiny_llama(), SimpleNamespace(moe=None)
    add_mole(unified.lm, MoLEConfig(routing="instance_token"), instance_dim=8)
    randomise_adapters(unified.lm)
    ids, inst, labels = torch.randint(0, 97, (2, 9)), torch.randn(2, 8), torch.tensor([0, 1])

    def logits():
        with torch.no_grad(), route(unified.lm, task_labels=labels, instances=inst):
            return unified.lm(input_ids=ids).logits

    ref = logits()
    split_ffn(unified)
    assert all(b.mlp.ffn.config.group_routing == "oracle" for b in unified.lm.model.layers)
    torch.testing.assert_close(logits(), ref, atol=1e-5, rtol=1e-5)
    upcycle_stage(unified, MoEConfig(num_experts=4, top_k=1))
    layer = unified.lm.model.layers[1].mlp
    assert isinstance(layer, MoLELayer) and layer.ffn.config.num_experts == 4
    assert layer.adapters.w_up.abs().sum() > 0  # the randomised adapters, not fresh ones
    torch.testing.assert_close(logits(), ref, atol=1e-5, rtol=1e-5)


def test_instance_routing_under_a_kv_cache_matches_the_full_forward():
    model = tiny_llama()
    add_mole(model, MoLEConfig(), instance_dim=8)
    randomise_adapters(model)
    ids, inst = torch.randint(0, 97, (2, 9)), torch.randn(2, 8)
    with torch.no_grad(), route(model, instances=inst):
        full = model(input_ids=ids).logits[:, -1]
        cache = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
        step = model(input_ids=ids[:, -1:], cache=cache, use_cache=True).logits[:, -1]  # S = 1
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_aux_loss_averages_each_loss_over_the_modules_that_report_it():
    session = RoutingSession()
    moe_coefs = {"group": 0.1, "balance": 0.01, "z": 0.001}
    for name, (g, b, z) in {"l0": (1.0, 2.0, 3.0), "l1": (4.0, 5.0, 6.0)}.items():
        losses = {"group": torch.tensor(g), "balance": torch.tensor(b), "z": torch.tensor(z)}
        session.record(name, losses, dict, moe_coefs)
    old_formula = sum(r.coefs[k] * v for r in session.records for k, v in r.losses.items()) / 2
    torch.testing.assert_close(session.aux_loss(), old_formula)  # TA-MoE only: unchanged
    for name, v in {"m0": 7.0, "m1": 9.0}.items():
        session.record(name, {"mole_balance": torch.tensor(v)}, dict, {"mole_balance": 0.5})
    expected = 0.1 * 2.5 + 0.01 * 3.5 + 0.001 * 4.5 + 0.5 * 8.0
    torch.testing.assert_close(session.aux_loss(), torch.tensor(expected))


def test_instance_routing_without_instances_says_how_to_pass_them():
    layer = make_layer(routing="instance")
    x = torch.randn(2, 3, D)
    with pytest.raises(RuntimeError, match=r"utamoe\.moe\.route\(model, instances=emb\)"):
        layer(x)
    with route(layer, task_labels=torch.tensor([0, 1])), pytest.raises(RuntimeError, match="instances="):
        layer(x)
    with route(layer, instances=torch.randn(3, DE)), pytest.raises(ValueError, match="one embedding"):
        layer(x)


def test_add_mole_chooses_layers_and_refuses_twice_or_missing_layers():
    model = tiny_llama()
    add_mole(model, MoLEConfig(routing="token", layers=[1]))  # token routing needs no instance_dim
    assert not isinstance(model.model.layers[0].mlp, MoLELayer)
    assert isinstance(model.model.layers[1].mlp, MoLELayer)
    with pytest.raises(ValueError, match="already has MoLE"):
        add_mole(model, MoLEConfig(routing="token", layers=[1]))
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        add_mole(model, MoLEConfig(routing="token", layers=[5]))
    with pytest.raises(ValueError, match="needs instance_dim"):
        add_mole(model, MoLEConfig(layers=[0]))
