"""Expert banks behind one protocol: the registry, LoRA banks owning their frozen base, and a
bank registered from outside utamoe running in a TA-MoE layer on both dispatch paths."""

from __future__ import annotations

import pytest
import torch

from utamoe.config import ConfigError
from utamoe.moe import MoEConfig, TaskAwareMoE
from utamoe.moe.experts import EXPERT_BANKS, ExpertBank, FFNExperts, register_expert_bank

from .helpers import make_layer


class ScaledIdentityExperts(ExpertBank):
    """A toy expert type: expert e multiplies its input by a learned scalar."""

    @classmethod
    def build(cls, config, hidden, inter, act, num_experts, shared_with=None):
        return cls(num_experts)

    def __init__(self, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        self.scale_E = torch.nn.Parameter(torch.arange(1.0, num_experts + 1))

    def init_from(self, w_gate_up, w_down, experts=None):
        pass

    def sorted_forward(self, x_MD, offsets_E):
        counts = torch.diff(offsets_E, prepend=offsets_E.new_zeros(1)).long()
        return x_MD * self.scale_E.repeat_interleave(counts)[:, None]

    def expert_forward(self, x_ND, e):
        return x_ND * self.scale_E[e]


def test_registered_bank_runs_on_both_dispatch_paths():
    register_expert_bank("scaled", ScaledIdentityExperts)
    try:
        torch.manual_seed(0)
        layer = TaskAwareMoE(MoEConfig(expert_type="scaled", num_experts=4, top_k=1,
                                       num_shared_experts=0), 16, 32)
        assert isinstance(layer.experts, ScaledIdentityExperts)
        x = torch.randn(10, 16)
        fast = layer(x)
        layer.config.dispatch = "loop"
        torch.testing.assert_close(layer(x), fast)
    finally:
        EXPERT_BANKS.pop("scaled")
    with pytest.raises(ConfigError, match="register_expert_bank"):
        MoEConfig(expert_type="scaled")
    with pytest.raises(TypeError, match="ExpertBank"):
        register_expert_bank("bad", torch.nn.Linear)


def test_lora_bank_owns_its_base_and_shared_experts_borrow_it():
    layer = make_layer(expert_type="lora", num_experts=4, top_k=1, num_shared_experts=1)
    names = [n for n, _ in layer.named_parameters()]
    assert "experts.base.w_gate_up" in names and not any(n.startswith("shared.base") for n in names)
    assert layer.shared.base is layer.experts.base  # one frozen copy per layer
    assert not layer.experts.base.w_gate_up.requires_grad


def test_ffn_bank_init_from_copies_only_the_chosen_experts():
    bank = FFNExperts(4, 8, 16)
    w_gu, w_d = torch.ones(8, 32), torch.full((16, 8), 2.0)
    bank.init_from(w_gu, w_d, experts=MoEConfig(num_experts=4, top_k=1).group_experts(1))
    assert torch.equal(bank.w_gate_up[2], w_gu) and torch.equal(bank.w_down[3], w_d)
    assert not torch.equal(bank.w_gate_up[0], w_gu)


def test_group_expert_arithmetic():
    cfg = MoEConfig(num_experts=8, top_k=2)
    assert list(cfg.group_experts(0)) == [0, 1, 2, 3] and list(cfg.group_experts(1)) == [4, 5, 6, 7]
    assert [cfg.expert_group(e) for e in range(8)] == [0] * 4 + [1] * 4
