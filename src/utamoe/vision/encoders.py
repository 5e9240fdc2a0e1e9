"""Understanding encoders: pixels -> a sequence of features in the backbone's width, and the kinds
of encoder a MoVE mixture holds.

The unified model holds one module in its `und_encoder` slot and asks it only two
things: `forward(pixel_values (N, 3, H, W) in [-1, 1]) -> (N, P, D)` and
`num_tokens(image_size) -> P`. Anything with that interface fits the slot, so a
mixture of several encoders (MoVE, utamoe.vision.mixture) is a drop-in replacement
for the single one.

`TowerEncoder` is the single encoder: a Hugging Face vision tower (SigLIP, CLIP,
Janus's SigLIP, or any model whose forward(pixel_values=...) returns
`last_hidden_state`) followed by the MLP aligner that maps its width to the
backbone's (the aligner is folded in: an encoder's output is always ready for
the backbone). Its parameters are `tower.*` and `aligner.*`; `tower_encoder` builds it.

Encoder kinds (`VisionExpertConfig.kind` of a MoVE mixture) are registered by name, as
expert banks and executors are: an `EncoderKind` says how its encoder is checked in a
config, built, run to a feature map and saved. Built in: "hf" (a Hugging Face vision
model) and "codec" (the encoder of the model's own VQ image tokenizer, frozen). Add one
with `register_encoder_kind(name, kind)`, or from a package with an entry point of the
group `utamoe.vision_encoders` (utamoe.plugins), which a fresh process and a saved
model's loader find by name.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from utamoe import plugins
from utamoe.config import ConfigError
from utamoe.hf.parts import HFPart, build_vision, hidden_size_of
from utamoe.vision.aligners import GridPosAligner, MLPAligner, patch_grid
from utamoe.vision.tokenizer import TokenizerConfig

ENTRY_POINT_GROUP = "utamoe.vision_encoders"


class TowerEncoder(nn.Module):
    """An HF vision tower + MLP aligner (Janus / LLaVA layout)."""

    def __init__(self, tower: nn.Module, aligner: nn.Module):
        super().__init__()
        self.tower, self.aligner = tower, aligner

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.tower.parameters()).dtype
        hidden = self.tower(pixel_values=pixel_values.to(dtype)).last_hidden_state
        return self.aligner(hidden)

    @torch.no_grad()
    def num_tokens(self, image_size: int) -> int:
        """Features per image (the understanding slots a sequence reserves for it)."""
        device = next(self.parameters()).device
        return self(torch.zeros(1, 3, image_size, image_size, device=device)).shape[1]


def tower_encoder(part: HFPart, image_size: int, d_model: int, depth: int,
                  pos2d: bool = False, pos2d_init: str = "normal") -> TowerEncoder:
    """The single understanding encoder: the `part` tower + its aligner to `d_model` (with the
    grid position in each feature's value when `pos2d`, its tables initialised by `pos2d_init`;
    issue 12)."""
    vision = build_vision(part, image_size)
    if pos2d:
        aligner = GridPosAligner(hidden_size_of(vision), d_model, depth,
                                 patch_grid(vision, image_size), init=pos2d_init)
    else:
        aligner = MLPAligner(hidden_size_of(vision), d_model, depth)
    return TowerEncoder(vision, aligner)


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


# ---------------------------------------------------------------- kinds of MoVE encoder


class EncoderKind:
    """How one kind of MoVE encoder is checked, built, run and saved (see the module docstring).

    `spec` is the encoder's VisionExpertConfig; `expert` the built utamoe.vision.mixture
    VisionExpert (its `tower`, `side`, `frozen`, `name`, and `codec`: the model's image
    tokenizer, referenced, not owned)."""

    always_frozen = False  # the encoder never trains, whatever the config says

    def check(self, spec, where: str) -> None:
        """Raise ConfigError for a spec this kind cannot build (at config time)."""

    def build(self, spec, image_size: int, image_tokenizer, where: str):
        """(tower module or None, feature width C, patch-grid side or None)."""
        raise NotImplementedError

    def features(self, expert, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C): the encoder's own feature map of `pixel_values` (B, 3, H, W)."""
        raise NotImplementedError

    def saved(self, spec, expert):
        """The spec a saved model records (e.g. a loaded tower's config inlined, no paths)."""
        return spec


class HFEncoder(EncoderKind):
    """A Hugging Face vision model: `path` (a local directory) or `config` (with a model_type)."""

    def check(self, spec, where: str) -> None:
        if spec.path is None and "model_type" not in spec.config:
            raise ConfigError(f"{where}: give a local `path` or a `config` with a `model_type` "
                              "(e.g. 'siglip_vision_model')")

    def build(self, spec, image_size: int, image_tokenizer, where: str):
        tower = build_vision(HFPart(spec.path, spec.config), image_size, where)
        side = patch_grid_of(tower, image_size)
        try:
            with torch.no_grad():
                probe = tower(pixel_values=torch.zeros(1, 3, image_size, image_size))
            hidden = probe.last_hidden_state
        except (TypeError, AttributeError, RuntimeError, ValueError) as err:
            raise ConfigError(f"{where}: {type(tower).__name__} is not a vision model that "
                              f"takes pixel_values and returns last_hidden_state ({err})") from None
        return tower, feature_map(hidden, side, where).shape[-1], side

    def features(self, expert, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(expert.tower.parameters()).dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and not expert.frozen):
            hidden = expert.tower(pixel_values=pixel_values.to(dtype)).last_hidden_state
        return feature_map(hidden, expert.side, f"model.move encoder {expert.name!r}")

    def saved(self, spec, expert):
        if expert.tower is not None:
            spec.path, spec.config = None, expert.tower.config.to_dict()
        return spec


class CodecEncoder(EncoderKind):
    """The encoder of the model's own VQ image tokenizer (before the codebook projection)."""

    always_frozen = True

    def build(self, spec, image_size: int, image_tokenizer, where: str):
        # The model is built before its codec is bound when a saved model loads: the default
        # codec width then.
        config = image_tokenizer.config if image_tokenizer is not None else TokenizerConfig()
        return None, int(config.latent_channels), None

    def features(self, expert, pixel_values: torch.Tensor) -> torch.Tensor:
        codec = expert.codec
        if codec is None:
            raise RuntimeError(f"vision expert {expert.name!r} reads the VQ codec's encoder, but "
                               "the model has no image tokenizer")
        with torch.no_grad():  # the encoder's output before the codebook projection
            return codec.encoder(pixel_values.to(codec.quant_conv.weight)).permute(0, 2, 3, 1)


_KINDS: dict[str, EncoderKind] = {"hf": HFEncoder(), "codec": CodecEncoder()}


def register_encoder_kind(name: str, kind: EncoderKind | type[EncoderKind],
                          replace: bool = False) -> None:
    """Make a kind of vision encoder available as `VisionExpertConfig(kind=name)`."""
    if isinstance(kind, type):
        kind = kind()
    if not isinstance(kind, EncoderKind):
        raise TypeError(f"encoder kind {name!r} must be a utamoe.vision.encoders.EncoderKind")
    if name in _KINDS and not replace:
        raise ConfigError(f"encoder kind {name!r} is already registered; pass replace=True")
    _KINDS[name] = kind


def encoder_kinds() -> list[str]:
    """The registered kinds (built-ins first, then plug-ins)."""
    plugins.discover(ENTRY_POINT_GROUP, register_encoder_kind, _KINDS)
    return list(_KINDS)


def get_encoder_kind(name: str, where: str = "model.move.encoders") -> EncoderKind:
    if name not in _KINDS:
        plugins.discover(ENTRY_POINT_GROUP, register_encoder_kind, _KINDS)
    if name not in _KINDS:
        hint = difflib.get_close_matches(name, list(_KINDS), n=1)
        raise ConfigError(f"{where}: unknown encoder kind {name!r}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; known: {', '.join(_KINDS)} (add one with utamoe.vision.encoders."
                          f"register_encoder_kind or a {ENTRY_POINT_GROUP!r} entry point)")
    return _KINDS[name]
