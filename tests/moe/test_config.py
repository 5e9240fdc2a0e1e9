"""MoEConfig: impossible settings fail at construction with the key named; from_dict names
unknown and mistyped keys."""

from __future__ import annotations

import pytest

from utamoe.config import ConfigError, from_dict
from utamoe.moe import MoEConfig


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_experts=8, top_k=5), r"top_k=5 but there are 4 experts in each group"),
        (dict(routing="topk", num_experts=4, top_k=6), r"4 experts in total"),
        (dict(group_names=()), "at least one task group"),
        (dict(expert_type="adapterz"), "unknown expert type 'adapterz'"),
        (dict(num_experts=7), "do not split evenly into 2 groups"),
        (dict(routing="topk", group_routing="oracle"), "oracle"),
        (dict(alpha_init=1.0), "alpha_init"),
        (dict(num_shared_experts=-1), "num_shared_experts"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MoEConfig(**kwargs)


def test_config_from_dict_names_unknown_and_mistyped_keys():
    assert from_dict(MoEConfig, {"top_k": 1, "group_names": ["a", "b"]}).group_names == ("a", "b")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.moe.topk'.*did you mean 'top_k'"):
        from_dict(MoEConfig, {"topk": 2}, "model.moe")
    with pytest.raises(ConfigError, match=r"'top_k' must be int, got '2'"):
        from_dict(MoEConfig, {"top_k": "2"})
    with pytest.raises(ConfigError, match=r"'routing' must be one of 'task_aware', 'topk'"):
        from_dict(MoEConfig, {"routing": "hash"})
