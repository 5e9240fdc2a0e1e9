"""What the distributed engines and activation checkpointing need to know about utamoe's model.

The model is single-device code; this file is where the trainer tells Accelerate's
engines about its structure, once per stage (surgery changes the modules):

- **FSDP** (1 or 2): every TA-MoE layer is its own wrap unit, inside its decoder
  layer's unit (`transformer_cls_names_to_wrap`), so an MoE layer's experts are
  gathered together and resharded after it, and the dense parts of a layer stay one unit.
- **DeepSpeed ZeRO-3**: every TA-MoE layer is a *leaf module*
  (`deepspeed.utils.set_z3_leaf_modules`): ZeRO-3 fetches a module's parameters in
  its forward hooks, in the order it traced; with task routing some experts get no
  tokens on some ranks, so per-expert hooks would fire on one rank and not on the other
  and the all-gathers would hang. A leaf gathers all of the layer's parameters on entry.
- **DeepSpeed** (any stage): the trainer has no dataloader for Accelerate to read the
  micro-batch from, so `train_micro_batch_size_per_gpu`, `gradient_clipping` and
  `gradient_accumulation_steps` (1: the trainer accumulates itself, and needs
  `train.grad_accum: 1` under DeepSpeed) are written into the plugin's config here.
- **Activation checkpointing** (`train.activation_checkpointing`): the backbone's decoder
  layers recompute their activations in backward (transformers' own switch). The routed
  layers read their task labels from a routing session that the model opens around its
  forward only; the recompute runs in backward, after that session has closed, so the
  checkpoint's `context_fn` puts each layer's session back for the recompute (the
  recompute does not record losses twice: utamoe.moe.context).
"""

from __future__ import annotations

import contextlib

from torch import nn

from utamoe.config import ConfigError
from utamoe.moe import TaskAwareMoE
from utamoe.moe.context import RoutedModule
from utamoe.moe.upcycle import decoder_layers


def shard_unit_classes(model: nn.Module) -> list[str]:
    """Class names of the FSDP wrap units: the backbone's decoder layer and, where present,
    the TA-MoE layer (each MoE layer its own unit)."""
    _, layers = decoder_layers(model.lm)
    names = {type(layers[0]).__name__}
    if any(isinstance(m, TaskAwareMoE) for m in model.modules()):
        names.add(TaskAwareMoE.__name__)
    return sorted(names)


def configure_engine(accelerator, model: nn.Module, train) -> dict:
    """Tell the active engine about `model` before `accelerator.prepare` (every stage);
    returns what was set, for the log and the tests."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return _configure_fsdp(accelerator.state.fsdp_plugin, model)
    if kind == DistributedType.DEEPSPEED:
        return _configure_deepspeed(accelerator.state.deepspeed_plugin, model, train)
    return {}


def _configure_fsdp(plugin, model: nn.Module) -> dict:
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    # Reset each stage: the policy is resolved against the modules present (a TA-MoE class
    # that stage 1 lacks would be an error there), and Accelerate turns it into a partial.
    plugin.transformer_cls_names_to_wrap = shard_unit_classes(model)
    plugin.auto_wrap_policy = transformer_auto_wrap_policy
    return {"fsdp_units": plugin.transformer_cls_names_to_wrap}


def _configure_deepspeed(plugin, model: nn.Module, train) -> dict:
    if train.grad_accum != 1:
        raise ConfigError(f"train.grad_accum is {train.grad_accum}, but under DeepSpeed the "
                          "engine steps at every backward: set train.grad_accum=1 and raise "
                          "train.batch_size (or the number of processes) instead")
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = train.batch_size
    ds["gradient_accumulation_steps"] = 1
    ds["gradient_clipping"] = float(train.clip_grad)
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    done = {"ds_micro_batch": train.batch_size}
    if int(ds.get("zero_optimization", {}).get("stage", 0)) == 3:
        done["z3_leaves"] = len(set_moe_leaves(model))
    return done


def set_moe_leaves(model: nn.Module) -> list[nn.Module]:
    """Mark every TA-MoE layer a ZeRO-3 leaf module (none present: nothing to mark)."""
    if not any(isinstance(m, TaskAwareMoE) for m in model.modules()):
        return []
    from deepspeed.utils import set_z3_leaf_modules

    return set_z3_leaf_modules(model, [TaskAwareMoE])


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Checkpoint every decoder layer of the backbone (non-reentrant), with the routing
    sessions restored for the recompute; returns how many layers are checkpointed."""
    routed = [m for m in model.lm.modules() if isinstance(m, RoutedModule)]

    def context_fn():
        bound = [(m, m.session, m.session_name) for m in routed]  # the forward's sessions
        return contextlib.nullcontext(), _bound_sessions(bound)

    kwargs = {"use_reentrant": False, "context_fn": context_fn}
    enable = getattr(model.lm, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers releases before the rename
        model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return sum(bool(getattr(m, "gradient_checkpointing", False)) for m in decoder_layers(model.lm)[1])


@contextlib.contextmanager
def _bound_sessions(bound):
    previous = [(m, m.session, m.session_name) for m, _, _ in bound]
    for m, session, name in bound:
        m.session, m.session_name = session, name
    try:
        yield
    finally:
        for m, session, name in previous:
            m.session, m.session_name = session, name
