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

import torch
import torch.nn.functional as F
from torch import nn

from utamoe.config import ConfigError
from utamoe.moe.context import RoutedModule
from utamoe.vision.deformable import AdaptiveDeformableTransform


def patch_grid_of(tower: nn.Module, image_size: int) -> int | None:
    """The side of a ViT-style tower's patch grid at `image_size` (None if it has no patch size)."""
    patch = getattr(tower.config, "patch_size", None)
    if isinstance(patch, (list, tuple)):
        patch = patch[0]
    return None if patch is None else image_size // int(patch)


def feature_map(hidden: torch.Tensor, side: int | None, where: str) -> torch.Tensor:
    """(B, h, w, C) from a tower's last_hidden_state: a conv map (B, C, h, w) as it is, patch
    tokens (B, L, C) with any leading CLS/register tokens dropped."""
    if hidden.dim() == 4:
        return hidden.permute(0, 2, 3, 1)
    B, L, C = hidden.shape
    if side is None:
        side = int(round(L**0.5))
    extra = L - side * side
    if extra < 0:
        raise ConfigError(f"{where}: the encoder gives {L} tokens, fewer than its {side}x{side} "
                          "patch grid; is model.image_size the size it was built for?")
    return hidden[:, extra:].reshape(B, side, side, C)


class VisionExpert(nn.Module):
    """One encoder of the mixture: its tower (or the codec's encoder), aligner and transform."""

    def __init__(self, name: str, tower: nn.Module | None, aligner: nn.Module, transform: nn.Module,
                 query_grid: int, frozen: bool, side: int | None):
        super().__init__()
        self.name, self.frozen, self.side, self.query_grid = name, frozen, side, query_grid
        self.tower = tower  # None for the codec: the model's image tokenizer is bound instead
        self.aligner, self.transform = aligner, transform
        if frozen and tower is not None:
            tower.requires_grad_(False)

    def bind_codec(self, image_tokenizer: nn.Module | None) -> None:
        # A reference, not a submodule: the codec's weights are saved once, with the tokenizer.
        object.__setattr__(self, "_codec", image_tokenizer)

    def raw_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C): the encoder's original feature map."""
        if self.tower is None:
            codec = self.__dict__.get("_codec")
            if codec is None:
                raise RuntimeError(f"vision expert {self.name!r} reads the VQ codec's encoder, but "
                                   "the model has no image tokenizer")
            with torch.no_grad():  # the encoder's output before the codebook projection
                return codec.encoder(pixel_values.to(codec.quant_conv.weight)).permute(0, 2, 3, 1)
        dtype = next(self.tower.parameters()).dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.tower(pixel_values=pixel_values.to(dtype)).last_hidden_state
        return feature_map(hidden, self.side, f"model.move encoder {self.name!r}")

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


def build_mixture(move, image_size: int, d_model: int, aligner_depth: int,
                  instance_dim: int, image_tokenizer: nn.Module | None) -> MixtureOfVisionExperts:
    """A MixtureOfVisionExperts from a MoVEConfig (utamoe.model.config)."""
    from utamoe.hf.parts import HFPart, build_vision
    from utamoe.model.parts import MLPAligner

    experts = []
    for i, spec in enumerate(move.encoders):
        where = f"model.move.encoders.{i} ({spec.name})"
        if spec.kind == "codec":
            tower, side = None, None
            width = _codec_width(image_tokenizer)
        else:
            try:
                tower = build_vision(HFPart(spec.path, spec.config), image_size)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            side = patch_grid_of(tower, image_size)
            try:
                with torch.no_grad():
                    probe = tower(pixel_values=torch.zeros(1, 3, image_size, image_size))
                hidden = probe.last_hidden_state
            except (TypeError, AttributeError, RuntimeError, ValueError) as err:
                raise ConfigError(f"{where}: {type(tower).__name__} is not a vision model that "
                                  f"takes pixel_values and returns last_hidden_state ({err})") from None
            width = feature_map(hidden, side, where).shape[-1]
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
                              move.query_grid, spec.frozen or spec.kind == "codec", side)
        if spec.kind == "codec":
            expert.bind_codec(image_tokenizer)
        experts.append(expert)
    router = (InstructionRouter(instance_dim, move.router_hidden, len(experts))
              if move.aggregate == "router" else None)
    return MixtureOfVisionExperts(experts, move.aggregate, router)


def _codec_width(image_tokenizer) -> int:
    if image_tokenizer is not None:
        return int(image_tokenizer.config.latent_channels)
    from utamoe.vision.tokenizer import TokenizerConfig  # the model is built before its codec

    return TokenizerConfig().latent_channels
