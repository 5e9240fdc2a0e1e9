"""MoEConfig: impossible settings fail at construction with the key named; from_dict names
unknown and mistyped keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


@dataclass
class Precision:
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    flag: bool = False


def test_yaml11_booleans_mean_the_one_matching_word_of_a_string_choice():
    # `mixed_precision: no` in YAML (or --set train.mixed_precision=no) arrives as False.
    assert from_dict(Precision, {"mixed_precision": False}).mixed_precision == "no"
    assert from_dict(Precision, {"flag": False}).flag is False  # real booleans stay booleans
    with pytest.raises(ConfigError, match="must be one of 'auto', 'no', 'bf16', got True"):
        from_dict(Precision, {"mixed_precision": True})  # no choice means yes/on/true
