"""utamoe.train.engines: FSDP wrap units, ZeRO-3 leaf modules and the DeepSpeed batch settings
the trainer gives Accelerate's engines (checked on the plugins, single process), activation
checkpointing equal to the plain backward, and the shipped Accelerate launch configs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from tests.model.helpers import mixed_batch, tiny_model
from utamoe.config import ConfigError
from utamoe.moe import MoEConfig, TaskAwareMoE
from utamoe.train.config import TrainConfig
from utamoe.train.engines import configure_engine, enable_activation_checkpointing

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def fake_accelerator(kind: str, **plugins):
    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=getattr(DistributedType, kind),
                           state=SimpleNamespace(**plugins))


def test_fsdp_wraps_each_ta_moe_layer_and_each_decoder_layer():
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    acc = fake_accelerator("FSDP", fsdp_plugin=plugin)
    dense, _, _ = tiny_model(moe=None)
    assert configure_engine(acc, dense, TrainConfig()) == {"fsdp_units": ["LlamaDecoderLayer"]}
    model, _, _ = tiny_model(MoEConfig(num_experts=4))
    assert configure_engine(acc, model, TrainConfig()) == {
        "fsdp_units": ["LlamaDecoderLayer", "TaskAwareMoE"]}
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    units = [name for name, m in model.named_modules() if policy(m)]
    assert units == ["lm.layers.0", "lm.layers.0.mlp", "lm.layers.1", "lm.layers.1.mlp"]


def test_deepspeed_gets_the_batch_and_zero3_marks_moe_layers_as_leaves():
    pytest.importorskip("deepspeed")
    from accelerate.utils import DeepSpeedPlugin

    model, _, _ = tiny_model(MoEConfig(num_experts=4))
    plugin = DeepSpeedPlugin(zero_stage=3, gradient_accumulation_steps=1)
    done = configure_engine(fake_accelerator("DEEPSPEED", deepspeed_plugin=plugin), model,
                            TrainConfig(batch_size=6, clip_grad=0.5))
    assert done == {"ds_micro_batch": 6, "z3_leaves": 2}
    ds = plugin.deepspeed_config
    assert ds["train_micro_batch_size_per_gpu"] == 6 and ds["gradient_clipping"] == 0.5
    assert "train_batch_size" not in ds
    leaves = [n for n, m in model.named_modules() if getattr(m, "_z3_leaf", False)]
    assert leaves == ["lm.layers.0.mlp", "lm.layers.1.mlp"]
    assert all(isinstance(model.get_submodule(n), TaskAwareMoE) for n in leaves)
    zero2 = DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=1)
    assert configure_engine(fake_accelerator("DEEPSPEED", deepspeed_plugin=zero2), model,
                            TrainConfig()) == {"ds_micro_batch": 32}
    with pytest.raises(ConfigError, match="train.grad_accum=1"):
        configure_engine(fake_accelerator("DEEPSPEED", deepspeed_plugin=zero2), model,
                         TrainConfig(grad_accum=2))


def test_no_engine_no_changes():
    model, _, _ = tiny_model()
    assert configure_engine(fake_accelerator("MULTI_CPU"), model, TrainConfig()) == {}


@pytest.mark.parametrize("routing", ["learned", "oracle"])
def test_activation_checkpointing_gives_the_plain_losses_and_gradients(routing):
    def loss_and_grads(checkpointing: bool):
        model, _, enc = tiny_model(MoEConfig(num_experts=4, group_routing=routing))
        if checkpointing:
            assert enable_activation_checkpointing(model) == 2
        model.train()
        batch, _ = mixed_batch(enc)
        out = model(batch)
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        return out.loss.detach(), {k: v.detach() for k, v in out.moe_losses.items()}, grads

    loss, moe, grads = loss_and_grads(False)
    loss_ck, moe_ck, grads_ck = loss_and_grads(True)
    torch.testing.assert_close(loss_ck, loss)
    assert moe_ck.keys() == moe.keys()
    for k in moe:
        torch.testing.assert_close(moe_ck[k], moe[k])
    assert grads_ck.keys() == grads.keys() and any(".mlp.router." in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads_ck[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_shipped_accelerate_configs_parse_and_name_their_engine():
    kinds = {}
    for path in sorted(ACCELERATE_CONFIGS.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        kinds[path.stem] = cfg["distributed_type"]
        assert cfg["num_processes"] >= 1 and cfg["mixed_precision"] == "no", path
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}
    fsdp = yaml.safe_load((ACCELERATE_CONFIGS / "fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    for stage in (2, 3):
        ds = yaml.safe_load((ACCELERATE_CONFIGS / f"zero{stage}.yaml").read_text())["deepspeed_config"]
        assert ds["zero_stage"] == stage
        json.dumps(ds)
