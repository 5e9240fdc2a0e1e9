"""Plain top-k mode matches transformers' own MoE blocks (Qwen3-MoE, Mixtral) with copied weights."""

from __future__ import annotations

import pytest
import torch
from transformers import MixtralConfig, Qwen3MoeConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from utamoe.moe import MoEConfig, TaskAwareMoE

D, F, E, K = 32, 48, 6, 2


def copy_into_peer(ours: TaskAwareMoE, peer: torch.nn.Module) -> None:
    with torch.no_grad():
        peer.gate.weight.copy_(ours.router.expert_gate.weight)
        peer.experts.gate_up_proj.copy_(ours.experts.w_gate_up.transpose(1, 2))  # (E, 2F, D)
        peer.experts.down_proj.copy_(ours.experts.w_down.transpose(1, 2))  # (E, D, F)


def make_peer(name: str) -> tuple[torch.nn.Module, bool]:
    """The peer block and whether it renormalises its top-k weights."""
    qwen = dict(hidden_size=D, moe_intermediate_size=F, num_experts=E, num_experts_per_tok=K)
    if name == "qwen3_moe-norm":
        return Qwen3MoeSparseMoeBlock(Qwen3MoeConfig(**qwen, norm_topk_prob=True)), True
    if name == "qwen3_moe-nonorm":
        return Qwen3MoeSparseMoeBlock(Qwen3MoeConfig(**qwen, norm_topk_prob=False)), False
    mixtral = dict(hidden_size=D, intermediate_size=F, num_local_experts=E, num_experts_per_tok=K)
    return MixtralSparseMoeBlock(MixtralConfig(**mixtral, router_jitter_noise=0.0)), True


@pytest.mark.parametrize("dispatch", ["grouped", "loop"])
@pytest.mark.parametrize("peer_name", ["qwen3_moe-norm", "qwen3_moe-nonorm", "mixtral"])
def test_topk_mode_matches_peer(peer_name, dispatch):
    peer, normalize = make_peer(peer_name)
    torch.manual_seed(0)
    cfg = MoEConfig(routing="topk", num_experts=E, top_k=K, num_shared_experts=0,
                    normalize_topk=normalize, dispatch=dispatch)
    ours = TaskAwareMoE(cfg, D, F)
    with torch.no_grad():  # peer-sized router init so that routing is not near-uniform
        ours.router.expert_gate.weight.normal_(std=0.5)
    copy_into_peer(ours, peer)
    x = torch.randn(2, 17, D)
    torch.testing.assert_close(ours(x), peer(x), atol=1e-5, rtol=1e-5)
    # Same gradients into the inputs too.
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn_like(x)
    (ours(xa) * g).sum().backward()
    (peer(xb) * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        ours.experts.w_down.grad, peer.experts.down_proj.grad.transpose(1, 2), atol=1e-5, rtol=1e-5
    )
