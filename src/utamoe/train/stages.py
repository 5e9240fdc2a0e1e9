"""Stage mechanics: model surgery, trainable-parameter selection, LoRA on and off.

Surgery (run at the start of a stage, recorded so a resumed run replays it):
- `split_ffn`: every dense MLP of the backbone becomes one FFN copy per task group,
  routed by the task label (a TaskAwareMoE with one expert per group, oracle
  routing, no shared expert). The dense MLP itself is kept aside, frozen, in
  `model.ffn_stash`, to become the shared expert later. UTAMoE stage 1.
- `upcycle`: FFNs become TA-MoE layers (or the plain top-k baseline). After
  `split_ffn`, group g's experts start from task FFN g, the shared experts from
  the stashed dense FFN, and the group router keeps what it learned; otherwise
  every expert copies the dense MLP. UTAMoE stage 2.
Both see through MoLE adapters (utamoe.moe.mole): the FFN inside the wrapper is split
or upcycled, the adapters stay beside it.
Trainable parameters are chosen with globs over names (`lm.layers.*.self_attn.*`);
LoRA adapters come from PEFT and are merged into the base weights at stage end.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from utamoe.config import ConfigError
from utamoe.model.io import current_name
from utamoe.model.unified import UnifiedModel
from utamoe.moe import MoEConfig, TaskAwareMoE
from utamoe.moe.blocks import decoder_layers, inner_mlp, set_inner_mlp
from utamoe.moe.experts import GatedFFN, dense_weights
from utamoe.moe.upcycle import check_dense_mlp, detect_activation
from utamoe.tasks import GROUPS, group_index
from utamoe.vision.mixture import frozen_parameters

SPLIT_CONFIG = dict(routing="task_aware", group_names=GROUPS, num_experts=len(GROUPS),
                    top_k=1, num_shared_experts=0, group_routing="oracle",
                    balance_loss_coef=0.0, z_loss_coef=0.0)


def split_ffn(model) -> None:
    """UTAMoE stage-1 surgery (see module docstring)."""
    _, layers = decoder_layers(model.lm)
    stash = nn.ModuleDict()
    for i, block in enumerate(layers):
        mlp = inner_mlp(block)
        check_dense_mlp(mlp, f"lm.layers.{i}.mlp" + (".ffn" if mlp is not block.mlp else ""))
        act = detect_activation(mlp)
        w_gate_up, w_down = dense_weights(mlp)
        ffn = GatedFFN(w_gate_up.shape[0], w_down.shape[0], act).to(w_gate_up.dtype)
        with torch.no_grad():
            ffn.w_gate_up.copy_(w_gate_up)
            ffn.w_down.copy_(w_down)
        stash[str(i)] = ffn
        set_inner_mlp(block, TaskAwareMoE.from_weights(MoEConfig(**SPLIT_CONFIG), act,
                                                       (w_gate_up, w_down)))
    model.ffn_stash = stash.requires_grad_(False)
    model.config.moe = MoEConfig(**SPLIT_CONFIG)  # so a stage-1 model saves and reloads as such


def upcycle_stage(model, moe: MoEConfig) -> None:
    """UTAMoE stage-2 surgery: TA-MoE from the split task FFNs, or from the dense MLPs."""
    if moe.routing == "task_aware":
        group_index(moe.group_names, "moe.group_names")
    stash = getattr(model, "ffn_stash", None)
    if stash is None:
        model.upcycle(moe)
        return
    _, layers = decoder_layers(model.lm)
    for i, block in enumerate(layers):
        split = inner_mlp(block)
        dense = (stash[str(i)].w_gate_up.detach(), stash[str(i)].w_down.detach())
        # Group g of the new layer starts from the task FFN of the group with g's *name*, so
        # a recipe may list group_names in any order.
        order = [list(split.config.group_names).index(name) for name in moe.group_names] \
            if moe.routing == "task_aware" else range(split.config.num_groups)
        groups = [(split.experts.w_gate_up[g].detach(), split.experts.w_down[g].detach())
                  for g in order]
        new = TaskAwareMoE.from_weights(moe, stash[str(i)].act_name, dense,
                                        groups if moe.routing == "task_aware" else None)
        if moe.routing == "task_aware" and split.config.group_names == moe.group_names:
            new.router.group_gate.load_state_dict(split.router.group_gate.state_dict())
        set_inner_mlp(block, new)
    del model.ffn_stash
    model.config.moe = moe


def apply_surgery(model, ops: list[str], moe: MoEConfig | None) -> None:
    for op in ops:
        if op == "split_ffn":
            split_ffn(model)
        elif op == "upcycle":
            upcycle_stage(model, moe or model.config.moe)
        else:  # validated in the config already
            raise ValueError(f"unknown surgery {op!r}")


def select_trainable(model: nn.Module, trainable: list[str], frozen: list[str]) -> list[str]:
    """Set requires_grad from globs (empty `trainable` = all); returns the trainable names.

    Parameters that are frozen by construction (the image tokenizer, a LoRA base, the FFN
    stash, a MoVE encoder configured `frozen`) stay frozen whatever the globs say."""
    always_frozen = ("image_tokenizer.", "ffn_stash.")
    fixed = frozen_parameters(model)  # MoVE encoders configured `frozen`
    all_names = [name for name, _ in model.named_parameters()]
    trainable, frozen = _current_globs(trainable, all_names), _current_globs(frozen, all_names)
    names = []
    for name, p in model.named_parameters():
        on = not trainable or any(fnmatch.fnmatchcase(name, g) for g in trainable)
        on = on and not any(fnmatch.fnmatchcase(name, g) for g in frozen)
        on = on and not name.startswith(always_frozen) and ".base." not in name and id(p) not in fixed
        if ".lora_" in name:  # PEFT adapters: trainable unless explicitly frozen
            on = not any(fnmatch.fnmatchcase(name, g) for g in frozen)
        p.requires_grad_(on)
        if on:
            names.append(name)
    unused = [g for g in (*trainable, *frozen) if not any(fnmatch.fnmatchcase(n, g) for n in all_names)]
    if unused:
        raise ValueError(f"the glob(s) {unused} match no parameter of the model (a typo?)")
    if not names:
        raise ValueError(f"no parameter matches trainable={trainable} minus frozen={frozen}")
    return names


def _current_globs(globs: list[str], names: list[str]) -> list[str]:
    """Globs written for an older utamoe's parameter names (a resumed run's config.yaml from
    model format 1: `und_aligner.*`), renamed when they match nothing as written and their
    current name does (utamoe.model.io.current_name); any other glob is kept as it is."""
    def matches(g: str) -> bool:
        return any(fnmatch.fnmatchcase(n, g) for n in names)

    return [current_name(g) if not matches(g) and matches(current_name(g)) else g for g in globs]


def add_lora(model, rank: int, alpha: float, targets: list[str], dropout: float = 0.0) -> None:
    """PEFT LoRA adapters on the backbone's modules named in `targets` (e.g. q_proj)."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=dropout)
    inject_adapter_in_model(cfg, model.lm)


def merge_lora(model) -> int:
    """Fold every LoRA adapter into its base layer and remove the wrappers; returns the count."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
            merged += 1
    return merged


def preflight(model_config, stages) -> None:
    """Every stage's surgery, LoRA targets and trainable globs, tried before the run starts on
    a copy of the model built on the meta device (no memory, no compute), so a typo in stage
    2's globs is a config error at load, not a crash after stage 1 has trained."""
    import copy

    with torch.device("meta"):
        ghost = UnifiedModel.build(copy.deepcopy(model_config))
        for i, stage in enumerate(stages):
            where = f"stages.{i} ({stage.name})"
            try:
                apply_surgery(ghost, stage.surgery, stage.moe)
                if stage.lora is not None:
                    add_lora(ghost, stage.lora.rank, stage.lora.alpha, stage.lora.targets)
                select_trainable(ghost, stage.trainable, stage.frozen)
                if stage.lora is not None:
                    merge_lora(ghost)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            except ValueError as err:
                raise ConfigError(f"{where}: {err} (check its trainable / frozen globs and "
                                  "lora.targets against the model's parameter names)") from None
