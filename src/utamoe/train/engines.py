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
- **CPU-only machines** (`make_accelerator`): Accelerate 1.x picks FSDP and DeepSpeed only
  for GPU-class devices, yet both run on the CPU with gloo. DeepSpeed: Accelerate is built
  with `cpu=False` and the gloo backend (DeepSpeed's CPU accelerator talks gloo); FSDP:
  Accelerate is built as for DDP on the CPU (`cpu=True`: MULTI_CPU, gloo), then its state
  is switched to FSDP with the plugin from the launch config's environment (Accelerate's
  own FSDP code then runs unchanged). A machine with a GPU gets Accelerate as before.
- **Between stages** (`structure_template`, `plain_model`): FSDP2 and ZeRO-3 leave the
  model's parameters sharded (DTensors / partitioned), and every DeepSpeed engine leaves
  hooks on them; the next stage's surgery and the final save need a plain module. Before
  `prepare` the trainer keeps a copy of the structure with its parameters on the meta
  device (no memory); at the end of the stage every process gathers the whole weights
  (a collective) into that copy, which becomes the model.
- **Task groups that only some processes have** (DeepSpeed, several processes): the unified
  model runs its understanding encoder, code embedding and each head only for batches that
  need them, and ZeRO fetches (ZeRO-3) and reduces (every stage) per module and parameter in
  execution order, so processes with different task groups issued mismatched collectives
  (a gloo size mismatch in ZeRO-3's first forward / ZeRO-2's first backward, or a hang or
  wrong gradients where sizes happen to fit). `configure_engine` asks there for forwards
  with `every_part` (utamoe.model.unified: every part runs on every forward, zero-weighted
  when unused, values bit-identical; the trainer passes it to each forward). `check_same_groups`
  remains as a guard where that does not help: forwards without it, and `train.split_groups` (one forward per task group,
  so a process with both groups would run more forwards than one with a single group, under
  any engine).
- **Experts without tokens on a process**: DDP finds them (`find_unused_parameters`),
  FSDP2 reduce-scatters zeros for them (`set_reduce_scatter_unused_params`, set here
  after `prepare`), ZeRO-3 leaves give them zero gradients. DeepSpeed ZeRO-1/2 reduces
  gradients in buckets filled in the order autograd produces them, so a parameter that gets
  a gradient on one process and none on another would mis-reduce; utamoe's expert banks are
  one parameter for all their experts (an expert without tokens is a zero slice of a gradient
  that exists anyway), and with `every_part` every process produces the same parameters'
  gradients in the same order (tests/model/test_every_part.py), so ZeRO-2 follows the
  1-process run even with one task group per process (docs/scaling.md). A module with one
  parameter per expert would not.
"""

from __future__ import annotations

import contextlib
import copy
import os

import torch
from torch import nn

from utamoe.config import ConfigError
from utamoe.moe import TaskAwareMoE
from utamoe.moe.blocks import decoder_layers
from utamoe.moe.context import RoutedModule
from utamoe.tasks import GROUPS


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def make_accelerator(**kwargs):
    """Accelerate's `Accelerator` for this machine (kwargs: Accelerator's own). With a GPU:
    Accelerate's choice, unchanged. Without one: a multi-process launch runs on the CPU with
    gloo under the launch config's engine: DDP, FSDP or DeepSpeed (see the module's notes)."""
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import (
        DistributedType,
        FullyShardedDataParallelPlugin,
        InitProcessGroupKwargs,
    )

    if torch.cuda.is_available():
        return _no_zero3_model_init(Accelerator(**kwargs))
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    if launched and _env_flag("ACCELERATE_USE_DEEPSPEED"):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        handlers = [*kwargs.pop("kwargs_handlers", []), InitProcessGroupKwargs(backend="gloo")]
        return _no_zero3_model_init(Accelerator(cpu=False, kwargs_handlers=handlers, **kwargs))
    # cpu=True: a multi-process launch (--multi_gpu / torchrun) uses gloo on the CPU instead
    # of silently running N copies.
    acc = Accelerator(cpu=True, **kwargs)
    if _env_flag("ACCELERATE_USE_FSDP") and acc.distributed_type == DistributedType.MULTI_CPU:
        # Accelerate offers FSDP for MULTI_GPU-class types only; its FSDP code runs on the CPU.
        # Both shared states: every later AcceleratorState() copies PartialState's type.
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launch's environment
        acc.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return acc


def _no_zero3_model_init(accelerator):
    """Under ZeRO-3 Accelerate registers its DeepSpeed config with transformers whatever
    `zero3_init_flag` says, and transformers then builds every model partitioned
    (`deepspeed.zero.Init`): the trainer's meta-device preflight fails on it and surgery
    would copy partitioned weights. utamoe builds and loads the whole model on every process
    and lets `prepare` partition it, so with `zero3_init_flag: false` (configs/accelerate)
    that registration is undone."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return accelerator
    plugin = accelerator.state.deepspeed_plugin
    if not plugin.zero3_init_flag:
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        plugin.dschf = None
    return accelerator


def check_same_groups(accelerator, batch, every_part: bool = False,
                      split_groups: bool = False) -> None:
    """Several processes: stop, with the reason, a micro-batch whose task groups differ between
    processes where that would issue mismatched collectives (a gloo error or a hang, or under
    ZeRO-2 wrong gradients, silently):
    - DeepSpeed with a model that runs only the parts its batch needs (forwards without
      `every_part`; `configure_engine` asks for it): ZeRO fetches and reduces
      per module in execution order, so every process must hold the same groups;
    - `split_groups` (train.split_groups, any engine): one forward (and one finiteness
      all-reduce) per task group, so every process must hold the same *number* of groups.
    Otherwise nothing is checked (no collective); else one small all-gather per micro-batch."""
    from accelerate.utils import DistributedType

    if accelerator.num_processes == 1:
        return
    partial = accelerator.distributed_type == DistributedType.DEEPSPEED and not every_part
    if not (partial or split_groups):
        return
    have = torch.zeros(1, len(GROUPS), device=accelerator.device)
    have[0, batch.group_ids.unique().to(accelerator.device)] = 1
    every = accelerator.gather(have)  # (processes, groups)
    count = every.sum(0)
    odd = [g for g, c in zip(GROUPS, count.tolist()) if 0 < c < accelerator.num_processes]
    if partial and odd:
        raise RuntimeError(
            f"DeepSpeed ZeRO: task group(s) {odd} are in some processes' micro-batches and not "
            "in others'; ZeRO cannot reduce gradients of modules that only some processes run "
            "(docs/scaling.md). Run its forwards with every_part (utamoe.model.unified), use FSDP "
            "(configs/accelerate/fsdp.yaml), or a batch size at which every micro-batch holds "
            "every group")
    forwards = every.sum(1).tolist()
    if split_groups and len(set(forwards)) > 1:
        raise RuntimeError(
            f"train.split_groups: the processes' micro-batches hold {[int(f) for f in forwards]} "
            "task groups, so they would run different numbers of forwards (one per group) and "
            "their collectives would not match; turn train.split_groups off, or use batches at "
            "which every micro-batch holds every group")


def is_sharding(accelerator) -> bool:
    """Whether the engine changes the model's parameters in place (FSDP, DeepSpeed)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def structure_template(accelerator, model: nn.Module) -> nn.Module | None:
    """Under FSDP / DeepSpeed: a copy of `model` whose parameters are on the meta device (no
    memory; buffers, ties and flags copied), for `plain_model`; None under other engines."""
    if not is_sharding(accelerator):
        return None
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def full_state(accelerator, prepared) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of a prepared model, whole, on every process (a collective
    under FSDP and ZeRO-3: all processes call it)."""
    from accelerate.utils import DistributedType

    module = accelerator.unwrap_model(prepared)
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(prepared, options=StateDictOptions(full_state_dict=True))
        state.update((n, b) for n, b in module.named_buffers() if n not in state)
        return state
    params = list(module.parameters())
    gather = contextlib.nullcontext()
    if kind == DistributedType.DEEPSPEED and any(hasattr(p, "ds_id") for p in params):  # ZeRO-3
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gather:
        state = {n: p.detach().clone() for n, p in module.named_parameters()}
    state.update((n, b.detach().clone()) for n, b in module.named_buffers())
    return state


def plain_model(accelerator, prepared, template: nn.Module | None) -> nn.Module:
    """The trained model as a plain module: the unwrapped model, or under FSDP / DeepSpeed
    the `structure_template` filled with the gathered weights (every process)."""
    if template is None:
        return accelerator.unwrap_model(prepared)
    state = full_state(accelerator, prepared)
    filled: dict[int, nn.Parameter] = {}  # a tied parameter: one new object for all its holders
    for prefix, module in template.named_modules(remove_duplicate=False):
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in filled:
                whole = state[f"{prefix}.{name}" if prefix else name].detach()
                whole = whole.reshape(p.shape).to(accelerator.device)  # FSDP: 0-d were 1-d
                filled[id(p)] = nn.Parameter(whole, requires_grad=p.requires_grad)
            module._parameters[name] = filled[id(p)]
        for name, b in module._buffers.items():
            key = f"{prefix}.{name}" if prefix else name
            if b is not None and key in state:
                module._buffers[name] = state[key].detach().to(accelerator.device)
    return template


def after_prepare(accelerator, prepared, model: nn.Module) -> None:
    """What an engine needs once the model is wrapped: FSDP2 reduce-scatters zero gradients
    for parameters a process did not use (experts that got no tokens there)."""
    if hasattr(prepared, "set_reduce_scatter_unused_params"):  # FSDP2
        prepared.set_reduce_scatter_unused_params(True)


def shard_unit_classes(model: nn.Module) -> list[str]:
    """Class names of the FSDP wrap units: the backbone's decoder layer and, where present,
    the TA-MoE layer (each MoE layer its own unit)."""
    _, layers = decoder_layers(model.lm)
    names = {type(layers[0]).__name__}
    if any(isinstance(m, TaskAwareMoE) for m in model.modules()):
        names.add(TaskAwareMoE.__name__)
    return sorted(names)


def configure_engine(accelerator, model: nn.Module, train, optimizer=None) -> dict:
    """Tell the active engine about `model` (and its `optimizer`, built on its parameters)
    before `accelerator.prepare` (every stage); returns what was set, for the log and the tests,
    and `every_part: True` when the model's forwards must run every part (the trainer passes
    it to each forward)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        done = _configure_fsdp(accelerator.state.fsdp_plugin, model)
        scalars_as_vectors(model, optimizer)
        return done
    if kind == DistributedType.DEEPSPEED:
        done = _configure_deepspeed(accelerator.state.deepspeed_plugin, model, train)
        if getattr(accelerator, "num_processes", 1) > 1:
            # Every process runs every part in the same order, whatever its task groups
            # (see the module's notes).
            done["every_part"] = True
        scalars_as_vectors(model, optimizer)
        return done
    return {}


def _configure_fsdp(plugin, model: nn.Module) -> dict:
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    # Reset each stage: the policy is resolved against the modules present (a TA-MoE class
    # that stage 1 lacks would be an error there), and Accelerate turns it into a partial.
    plugin.transformer_cls_names_to_wrap = shard_unit_classes(model)
    plugin.auto_wrap_policy = transformer_auto_wrap_policy
    return {"fsdp_units": plugin.transformer_cls_names_to_wrap}


def scalars_as_vectors(model: nn.Module, optimizer=None) -> int:
    """FSDP2 and ZeRO-3 cannot shard 0-d parameters (the TA-MoE layer's learnable alpha,
    "cannot be 0 to view Float as Byte" in DeepSpeed): each becomes a
    1-element vector, in the model and in the optimizer's groups (the layers broadcast it the
    same way). `plain_model` gives them their own shape back. Returns how many."""
    swapped: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.ndim == 0:
                if id(p) not in swapped:
                    swapped[id(p)] = nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad)
                module._parameters[name] = swapped[id(p)]
    if optimizer is not None and swapped:
        for group in optimizer.param_groups:
            group["params"] = [swapped.get(id(p), p) for p in group["params"]]
    return len(swapped)


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
