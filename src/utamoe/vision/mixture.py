"""MoVE (MoME's mixture of vision experts): several understanding encoders in one slot.

    image --encoder_i--> feature map (h_i, w_i, C_i) --aligner_i--> (h_i, w_i, D)
          --transform--> (Q, D) queries           (Q = query_grid**2, the same for every encoder)
    sum_i  w_i(instruction) * queries_i  -->  the backbone's understanding features (Q, D)

- Encoders (`VisionExpert`) are Hugging Face vision models built from a config or
  loaded from a local directory (SigLIP, CLIP, DINOv2, ResNet, ...: any whose
  forward(pixel_values=...) gives a `last_hidden_state` of patch tokens (B, L, C),
  with or without leading CLS/register tokens, or a conv map (B, C, h, w)), or the
  encoder of the model's own VQ codec (`kind: codec`, frozen; it is the model's
  `image_tokenizer`, referenced, not copied). Feature grids and widths may differ:
  each encoder has its own aligner to the backbone width, and the transform brings
  every grid to the same query length.
- Transform: "avgpool" (adaptive average pooling of the original map to the query
  grid) or "adt" (utamoe.vision.deformable: pooling, then deformable layers that
  sample the encoder's original map around each query's reference point).
- Aggregate: "add" (sum over encoders) or "router" (MoME's instance-level soft
  router: the instruction embedding (utamoe.model.instructions) -> MLP -> softmax
  over encoders; the last layer starts at zero, so the mixture starts as the mean).

The mixture is a drop-in understanding encoder (utamoe.vision.encoders: forward +
num_tokens) that also takes the instruction embeddings of its images; inside a
routing session it reports the encoder weights it used (statistics only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from utamoe.config import ConfigError
from utamoe.moe.context import RoutedModule
from utamoe.vision.aligners import MLPAligner
from utamoe.vision.deformable import AdaptiveDeformableTransform
from utamoe.vision.encoders import get_encoder_kind


@dataclass
class VisionExpertConfig:
    """One encoder of a MoVE mixture (MoME's vision experts)."""

    # A label for reports and routing maps (unique in the mixture).
    name: str = "encoder"
    # A registered encoder kind (utamoe.vision.encoders): "hf", a Hugging Face vision model
    # (`path` to a local directory or `config` with a model_type: siglip_vision_model,
    # clip_vision_model, dinov2, resnet, pix2struct_vision_model, ...); "codec", the encoder of
    # the model's own VQ image tokenizer (always frozen); or a plug-in's.
    kind: str = "hf"
    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # Frozen encoders run without gradients (the usual case for pretrained ones).
    frozen: bool = False


@dataclass
class MoVEConfig:
    """MoME's mixture of vision experts: each encoder's feature map -> its own MLP aligner (to the
    backbone width) -> a transform to `query_grid`**2 tokens -> aggregated over encoders.
    Defaults are ours (the paper does not publish them); docs/mome.md says why."""

    encoders: list[VisionExpertConfig] = field(default_factory=list)
    # "avgpool": adaptive average pooling to the query grid; "adt": pooling, then `adt_layers`
    # adaptive deformable layers (self-attention, deformable cross-attention, FFN).
    transform: Literal["avgpool", "adt"] = "adt"
    # "add": sum of the encoders' outputs; "router": instance-level soft router (instruction
    # embedding -> MLP -> softmax over encoders -> weighted sum). Table 1 of the paper.
    aggregate: Literal["add", "router"] = "router"
    query_grid: int = 6
    adt_layers: int = 1
    adt_heads: int = 4
    adt_points: int = 4
    adt_ffn_mult: int = 2
    # "vectorised" (grid_sample) or "reference" (loops over heads and points; tests, debugging).
    adt_impl: Literal["vectorised", "reference"] = "vectorised"
    router_hidden: int = 128

    def __post_init__(self) -> None:
        if not self.encoders:
            raise ConfigError("model.move.encoders: give at least one encoder")
        names = [e.name for e in self.encoders]
        if len(set(names)) != len(names):
            raise ConfigError(f"model.move.encoders: names must be unique, got {names}")
        for i, e in enumerate(self.encoders):
            where = f"model.move.encoders.{i} ({e.name})"
            get_encoder_kind(e.kind, f"{where}.kind").check(e, where)
        for key in ("query_grid", "adt_heads", "adt_points", "adt_ffn_mult", "router_hidden"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.move.{key} must be >= 1, got {getattr(self, key)}")
        if self.adt_layers < 0:
            raise ConfigError(f"model.move.adt_layers must be >= 0, got {self.adt_layers}")


class VisionExpert(nn.Module):
    """One encoder of the mixture: its tower (by its kind; None for the codec), aligner and
    transform."""

    def __init__(self, name: str, tower: nn.Module | None, aligner: nn.Module, transform: nn.Module,
                 query_grid: int, frozen: bool, side: int | None, kind: str = "hf"):
        super().__init__()
        self.name, self.frozen, self.side, self.query_grid = name, frozen, side, query_grid
        self.kind = kind
        self.tower = tower  # None for the codec: the model's image tokenizer is bound instead
        self.aligner, self.transform = aligner, transform
        if frozen and tower is not None:
            tower.requires_grad_(False)
        self.bind_codec(None)

    def bind_codec(self, image_tokenizer: nn.Module | None) -> None:
        # A reference, not a submodule: the codec's weights are saved once, with the tokenizer.
        object.__setattr__(self, "_codec", image_tokenizer)

    @property
    def codec(self) -> nn.Module | None:
        """The model's image tokenizer (for kinds that read it)."""
        return self.__dict__.get("_codec")

    def raw_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C): the encoder's original feature map (its kind's)."""
        return get_encoder_kind(self.kind).features(self, pixel_values)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, Q, D) queries in the backbone width."""
        fmap_BHWD = self.aligner(self.raw_features(pixel_values).to(self.aligner.fc1.weight.dtype))
        if isinstance(self.transform, AdaptiveDeformableTransform):
            return self.transform(fmap_BHWD)
        pooled = F.adaptive_avg_pool2d(fmap_BHWD.permute(0, 3, 1, 2), self.query_grid)
        return pooled.flatten(2).transpose(1, 2)


class InstructionRouter(nn.Module):
    """Instruction embedding (N, De) -> MLP -> softmax over the E encoders (N, E)."""

    def __init__(self, instance_dim: int, hidden: int, num_encoders: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(instance_dim, hidden), nn.Linear(hidden, num_encoders)
        nn.init.zeros_(self.fc2.weight)  # uniform weights at the start: the mixture's mean
        nn.init.zeros_(self.fc2.bias)

    def forward(self, instructions_NE: torch.Tensor) -> torch.Tensor:
        x = instructions_NE.float()
        return torch.softmax(F.linear(F.gelu(F.linear(x, self.fc1.weight.float(), self.fc1.bias.float())),
                                      self.fc2.weight.float(), self.fc2.bias.float()), dim=-1)


class MixtureOfVisionExperts(RoutedModule):
    """Several vision experts aggregated into one feature sequence (see the module docstring)."""

    def __init__(self, experts: list[VisionExpert], aggregate: str, router: InstructionRouter | None):
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.aggregate = aggregate
        self.router = router

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.experts]

    @property
    def needs_instructions(self) -> bool:
        return self.router is not None

    def weights(self, instructions: torch.Tensor | None, n: int, device) -> torch.Tensor:
        """(N, E) weight of each encoder per image (all ones for addition)."""
        if self.router is None:
            return torch.ones(n, len(self.experts), device=device)
        if instructions is None or instructions.shape[0] != n:
            got = None if instructions is None else tuple(instructions.shape)
            raise ValueError(f"the MoVE router needs one instruction embedding per image ({n}), "
                             f"got {got}; pass the batch's instructions to the model's embed")
        return self.router(instructions.to(device))

    def forward(self, pixel_values: torch.Tensor, instructions: torch.Tensor | None = None):
        w_NE = self.weights(instructions, pixel_values.shape[0], pixel_values.device)
        out = None
        for e, expert in enumerate(self.experts):
            q_NQD = expert(pixel_values)
            term = q_NQD * w_NE[:, e, None, None].to(q_NQD.dtype)
            out = term if out is None else out + term
        if self.session is not None and self.router is not None:
            w = w_NE.detach()
            self.session.record(self.session_name, {}, lambda: {"move_weight": w.sum(0).cpu(),
                                                                "move_images": torch.tensor(len(w))},
                                {})
        return out

    def num_tokens(self, image_size: int) -> int:
        return self.experts[0].query_grid ** 2


def frozen_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters of frozen vision experts (the trainer's globs cannot unfreeze them)."""
    return {id(p) for m in model.modules() if isinstance(m, VisionExpert) and m.frozen
            and m.tower is not None for p in m.tower.parameters()}


def build_mixture(move: MoVEConfig, image_size: int, d_model: int, aligner_depth: int,
                  instance_dim: int, image_tokenizer: nn.Module | None) -> MixtureOfVisionExperts:
    """A MixtureOfVisionExperts from a MoVEConfig: each encoder built by its kind."""
    experts = []
    for i, spec in enumerate(move.encoders):
        where = f"model.move.encoders.{i} ({spec.name})"
        kind = get_encoder_kind(spec.kind, f"{where}.kind")
        tower, width, side = kind.build(spec, image_size, image_tokenizer, where)
        if move.transform == "adt":
            try:
                transform = AdaptiveDeformableTransform(d_model, move.query_grid, move.adt_layers,
                                                        move.adt_heads, move.adt_points,
                                                        move.adt_ffn_mult, move.adt_impl)
            except ValueError as err:
                raise ConfigError(f"model.move: {err} (the ADT works at the backbone width "
                                  f"{d_model})") from None
        else:
            transform = nn.Identity()
        expert = VisionExpert(spec.name, tower, MLPAligner(width, d_model, aligner_depth), transform,
                              move.query_grid, spec.frozen or kind.always_frozen, side, spec.kind)
        expert.bind_codec(image_tokenizer)
        experts.append(expert)
    router = (InstructionRouter(instance_dim, move.router_hidden, len(experts))
              if move.aggregate == "router" else None)
    return MixtureOfVisionExperts(experts, move.aggregate, router)
