"""The image tokenizer: a VQ model that turns pixels into a grid of codes and back.

Janus-style unified models generate images as a sequence of discrete codes; this
module is the codec. Its encoder, decoder and 1x1 quant convs are transformers'
Janus VQ-VAE blocks (`JanusVQVAEEncoder`, `JanusVQVAEDecoder`) built from a small
`JanusVQVAEConfig`, and the parameter names match `JanusVQVAE`'s, so a real Janus
VQ and ours run the same code path (`from_janus`):

    encode: pixels -> encoder -> quant_conv -> L2-normalise -> nearest code -> codes (B, h, w)
    decode: codes -> L2-normalised codebook row -> post_quant_conv -> decoder -> pixels

The quantizer is ours (`L2VectorQuantizer`), not HF's `JanusVQVAEVectorQuantizer`:
HF's forward neither normalises nor lets a decoder gradient reach the encoder
(`JanusVQVAE.forward` decodes from indices), while its `get_codebook_entry` does
normalise. Ours normalises latents and codes in both directions (LlamaGen/Janus:
cosine-similarity lookup, which keeps codebook usage high) and trains with a
straight-through estimator, a codebook loss and a commitment loss. Training lives
in `tokenizer_train.py`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utamoe.config import ConfigError, from_dict, to_dict
from utamoe.fsutil import atomic_directory, disk_errors, holds_format

CONFIG_FILE = "tokenizer_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "utamoe-vq-tokenizer"
IS_OWN = holds_format(CONFIG_FILE, FORMAT_NAME)  # what save_pretrained may replace


class TokenizerLoadError(OSError):
    """A tokenizer directory is missing, incomplete or does not match its config."""


@dataclass(frozen=True)
class TokenizerConfig:
    """The VQ model's shape and its training recipe (saved with the weights).

    Downsampling is 2 ** (len(channel_multiplier) - 1): the default four levels give
    48 -> 6, a 6x6 grid of 36 codes in which each 16 px ShapesWorld cell is exactly
    2x2 codes. Channel counts must be multiples of 32 (the Janus blocks use
    GroupNorm with 32 groups).
    """

    image_size: int = 48
    # "patch": per-patch MLP encoder / decoder (the ShapesWorld default: ~17x cheaper
    # per step than the Janus blocks on CPU, see docs/tokenizer.md); "janus": the
    # transformers Janus VQ-VAE conv blocks (what a real Janus VQ uses).
    encoder_type: str = "patch"
    hidden_channels: int = 256  # patch MLP width
    base_channels: int = 32
    channel_multiplier: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 1
    latent_channels: int = 64
    code_dim: int = 8
    codebook_size: int = 256
    # Loss weights: LlamaGen/Janus's codebook (1.0) and commitment (0.25) terms.
    codebook_weight: float = 1.0
    commitment_weight: float = 0.25
    # Reconstruction loss weight 1 + edge_weight * |local gradient| (see tokenizer_train).
    edge_weight: float = 4.0
    # Dead-code restart: every `restart_every` steps, codes unused since the last
    # check are re-initialised from random encoder outputs of the current batch.
    restart_every: int = 10
    restart_until: float = 0.8  # fraction of training after which restarts stop
    # Training recipe (overridable per call of train_tokenizer).
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_multiplier", tuple(self.channel_multiplier))
        self._validate()

    def _validate(self) -> None:
        if not self.channel_multiplier or any(m < 1 for m in self.channel_multiplier):
            raise ConfigError("tokenizer.channel_multiplier needs >= 1 positive entries")
        if self.encoder_type not in ("patch", "janus"):
            raise ConfigError(f"tokenizer.encoder_type must be 'patch' or 'janus', got "
                              f"{self.encoder_type!r}")
        chans = [self.base_channels * m for m in self.channel_multiplier] + [self.latent_channels]
        if self.encoder_type == "janus" and any(c % 32 for c in chans):
            raise ConfigError(f"tokenizer channels {chans} must be multiples of 32 "
                              "(GroupNorm with 32 groups in the Janus blocks); change "
                              "base_channels / latent_channels")
        if self.image_size % self.downsample:
            raise ConfigError(f"tokenizer.image_size {self.image_size} must be divisible by "
                              f"the downsampling factor {self.downsample}")
        for key in ("num_res_blocks", "code_dim", "codebook_size", "steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"tokenizer.{key} must be >= 1, got {getattr(self, key)}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_multiplier) - 1)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.downsample

    @classmethod
    def quick(cls, **changes: Any) -> TokenizerConfig:
        """The smoke-test setting (~10 s on 2 CPU cores; lower quality allowed)."""
        return replace(cls(steps=300), **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TokenizerConfig:
        return from_dict(cls, dict(data or {}), "tokenizer")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def janus_config(self):
        """The transformers `JanusVQVAEConfig` that builds our encoder and decoder."""
        from transformers import JanusVQVAEConfig

        return JanusVQVAEConfig(
            base_channels=self.base_channels, channel_multiplier=list(self.channel_multiplier),
            num_res_blocks=self.num_res_blocks, latent_channels=self.latent_channels,
            embed_dim=self.code_dim, num_embeddings=self.codebook_size,
            num_patches=self.grid_size, in_channels=3, out_channels=3, dropout=0.0)


class L2VectorQuantizer(nn.Module):
    """Nearest-code lookup on the unit sphere with a straight-through gradient.

    `embedding` is named as in HF's Janus quantizer so Janus weights load unchanged.
    `usage` counts how often each code was picked since the last dead-code check.
    """

    def __init__(self, codebook_size: int, code_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, code_dim)
        # Uniform init as in LlamaGen; normalised at use, so only directions matter.
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("usage", torch.zeros(codebook_size), persistent=False)

    def codebook(self) -> torch.Tensor:
        return F.normalize(self.embedding.weight, dim=-1)

    def nearest(self, z_ND: torch.Tensor) -> torch.Tensor:
        """Code ids (N,) of unit vectors z_ND: max cosine similarity = min L2 distance."""
        return torch.argmax(z_ND @ self.codebook().t(), dim=-1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> normalised code vectors (B, D, h, w), as Janus decodes."""
        return self.codebook()[codes].permute(0, 3, 1, 2).contiguous()

    def forward(self, z_BDhw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Quantise latents: (z_q with straight-through gradient, codes (B, h, w), losses)."""
        B, D, h, w = z_BDhw.shape
        z_ND = F.normalize(z_BDhw.permute(0, 2, 3, 1).reshape(-1, D), dim=-1)
        codes = self.nearest(z_ND.detach())
        q_ND = self.codebook()[codes]
        losses = {
            "codebook": F.mse_loss(q_ND, z_ND.detach()),  # moves codes to the latents
            "commitment": F.mse_loss(z_ND, q_ND.detach()),  # keeps the encoder near its codes
        }
        if self.training:
            self.usage += torch.bincount(codes, minlength=self.usage.numel()).to(self.usage)
        q_ND = z_ND + (q_ND - z_ND).detach()
        return q_ND.view(B, h, w, D).permute(0, 3, 1, 2), codes.view(B, h, w), losses

    @torch.no_grad()
    def restart_dead(self, z_ND: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Re-initialise codes unused since the last call from rows of z_ND (this
        batch's encoder outputs, unit vectors, plus a little noise so that two revived
        codes drawn from one latent still differ); reset the usage counts.
        Returns how many codes were revived."""
        dead = torch.nonzero(self.usage == 0).flatten()
        if len(dead):
            # Draw latents in proportion to their distance from their nearest code:
            # the badly-fitted ones (rare patches: objects, not the background that
            # fills most of an image) are what the spare codes should cover.
            err = 1 - (z_ND @ self.codebook().t()).max(dim=-1).values
            weights = err.clamp(min=1e-6) if float(err.sum()) > 1e-3 else torch.ones_like(err)
            pick = torch.multinomial(weights.float().cpu(), len(dead), replacement=True,
                                     generator=generator).to(z_ND.device)
            noise = torch.randn(len(dead), z_ND.shape[1], generator=generator) * 0.01
            self.embedding.weight[dead] = F.normalize(z_ND[pick] + noise.to(z_ND), dim=-1)
        self.usage.zero_()
        return len(dead)


class PatchEncoder(nn.Module):
    """Pixels (B, 3, H, W) -> latents (B, C, H/p, W/p): a p x p patch embedding (a
    stride-p conv, as in ViT-VQGAN) then a per-patch MLP; no spatial context, which a
    world whose objects sit exactly on 2x2-code cells does not need."""

    def __init__(self, patch: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, hidden, patch, patch), nn.GELU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.GELU(),
                                 nn.Conv2d(hidden, latent, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


class PatchDecoder(nn.Module):
    """Latents (B, C, h, w) -> pixels (B, 3, h*p, w*p): per-code MLP then a linear
    un-patchify (a stride-p transposed conv)."""

    def __init__(self, patch: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(latent, hidden, 1), nn.GELU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.GELU(),
                                 nn.ConvTranspose2d(hidden, 3, patch, patch))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


class VQTokenizer(nn.Module):
    """encode: images -> codes (B, h, w); decode: codes -> pixels (B, 3, H, W) in [-1, 1]."""

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        super().__init__()
        from transformers.models.janus.modeling_janus import (
            JanusVQVAEDecoder,
            JanusVQVAEEncoder,
        )

        self.config = config = config or TokenizerConfig()
        if config.encoder_type == "janus":
            hf = config.janus_config()
            self.encoder, self.decoder = JanusVQVAEEncoder(hf), JanusVQVAEDecoder(hf)
        else:
            self.encoder = PatchEncoder(config.downsample, config.hidden_channels,
                                        config.latent_channels)
            self.decoder = PatchDecoder(config.downsample, config.hidden_channels,
                                        config.latent_channels)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.code_dim, 1)
        self.quantize = L2VectorQuantizer(config.codebook_size, config.code_dim)
        self.post_quant_conv = nn.Conv2d(config.code_dim, config.latent_channels, 1)

    @property
    def num_codes(self) -> int:
        return self.config.codebook_size

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    # ------------------------------------------------------------ pixels <-> tensors

    def to_pixels(self, images) -> torch.Tensor:
        """uint8 (B, H, W, 3) / (H, W, 3) arrays or tensors, or float (B, 3, H, W) in
        [-1, 1], as float (B, 3, H, W) in [-1, 1] on the model's device."""
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        if x.dtype == torch.uint8:
            x = x.unsqueeze(0) if x.dim() == 3 else x
            x = x.permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1.0  # NCHW: channels-last is ~10x slower here
        elif x.dim() == 3:
            x = x.unsqueeze(0)
        size = self.config.image_size
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (size, size):
            raise ValueError(f"expected uint8 (B, {size}, {size}, 3) or float (B, 3, {size}, "
                             f"{size}) images, got {x.dtype} {tuple(x.shape)}")
        return x.to(self.quant_conv.weight)

    @staticmethod
    def to_uint8(pixels: torch.Tensor) -> np.ndarray:
        """Pixels (B, 3, H, W) in [-1, 1] -> uint8 numpy (B, H, W, 3)."""
        x = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round()
        return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    # ------------------------------------------------------------ the codec

    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents (B, code_dim, h, w) of float pixels."""
        return self.quant_conv(self.encoder(pixels))

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Images (uint8 or float in [-1, 1]) -> codes LongTensor (B, h, w)."""
        z = self.latents(self.to_pixels(images))
        B, D, h, w = z.shape
        z_ND = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, D), dim=-1)
        return self.quantize.nearest(z_ND).view(B, h, w)

    def decode_vectors(self, q_BDhw: torch.Tensor) -> torch.Tensor:
        """Quantised (unit) code vectors -> unclamped pixels; training uses this."""
        return self.decoder(self.post_quant_conv(q_BDhw))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) or (B, h*w) -> pixels (B, 3, H, W) in [-1, 1]."""
        codes = torch.as_tensor(codes, dtype=torch.long, device=self.quant_conv.weight.device)
        g = self.grid_size
        if codes.dim() == 2 and codes.shape[1] == g * g:
            codes = codes.view(-1, g, g)
        if codes.dim() != 3 or tuple(codes.shape[1:]) != (g, g):
            raise ValueError(f"expected codes (B, {g}, {g}) or (B, {g * g}), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise ValueError(f"codes must lie in [0, {self.num_codes}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return self.decode_vectors(self.quantize.lookup(codes)).clamp(-1, 1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Training forward: (reconstruction, codes, VQ losses); gradients reach the encoder."""
        q, codes, losses = self.quantize(self.latents(pixels))
        return self.decode_vectors(q), codes, losses

    # ------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | os.PathLike, replace: bool = False) -> Path:
        """Write config JSON + safetensors atomically: into a temp dir next to the
        target, then renamed over it, so a killed save never leaves a broken tokenizer. An
        existing directory is replaced only when it is a tokenizer of this kind or empty (else
        utamoe.fsutil.NotOurs), or with `replace`."""
        from safetensors.torch import save_file

        with disk_errors(directory, "the VQ tokenizer"), \
                atomic_directory(directory, IS_OWN, "a VQ image tokenizer directory", replace) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
            meta = {"format": FORMAT_NAME, "version": 1, "config": self.config.to_dict()}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return Path(directory).resolve()

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike,
                        map_location: str | torch.device = "cpu") -> VQTokenizer:
        """Load a directory written by `save_pretrained`; TokenizerLoadError names the
        file at fault and says what to do when it is missing, corrupt or mismatched."""
        from safetensors.torch import load_file

        root = Path(directory)
        cfg_path, w_path = root / CONFIG_FILE, root / WEIGHTS_FILE
        if not root.is_dir():
            raise TokenizerLoadError(f"{root}: no tokenizer directory here; train one with "
                                     "`utamoe tokenizer train` or pass the right path")
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise TokenizerLoadError(f"{p}: missing; a tokenizer directory holds "
                                         f"{CONFIG_FILE} and {WEIGHTS_FILE} (re-save or retrain)")
        config = _read_config(cfg_path)
        try:
            state = load_file(str(w_path), device=str(map_location))
        except Exception as e:  # safetensors raises its own error types on corrupt files
            raise TokenizerLoadError(f"{w_path}: unreadable safetensors file ({e}); "
                                     "retrain or copy the directory again") from e
        model = cls(config)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise TokenizerLoadError(f"{w_path}: weights do not match {cfg_path} ({e}); the "
                                     "two files come from different tokenizers") from e
        return model.to(map_location).eval()

    @classmethod
    def from_janus(cls, janus_vq: nn.Module, image_size: int | None = None) -> VQTokenizer:
        """Wrap a transformers `JanusVQVAE` (e.g. `JanusForConditionalGeneration
        .from_pretrained(local_dir).model.vqmodel`): same blocks, same weights; encoding
        uses our L2-normalised lookup, which is what Janus's own VQ does (codebook_l2_norm)."""
        c = janus_vq.config
        grid = int(c.num_patches)
        levels = len(c.channel_multiplier)
        config = TokenizerConfig(
            image_size=image_size or grid * 2 ** (levels - 1), encoder_type="janus",
            base_channels=c.base_channels,
            channel_multiplier=tuple(c.channel_multiplier), num_res_blocks=c.num_res_blocks,
            latent_channels=c.latent_channels, code_dim=c.embed_dim,
            codebook_size=c.num_embeddings)
        model = cls(config)
        model.load_state_dict(janus_vq.state_dict(), strict=True)
        return model.to(next(janus_vq.parameters()).device).eval()


def _read_config(path: Path) -> TokenizerConfig:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerLoadError(f"{path}: not valid JSON ({e}); retrain or re-save") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME or "config" not in meta:
        raise TokenizerLoadError(f"{path}: not a utamoe tokenizer config (expected "
                                 f"format '{FORMAT_NAME}' and a 'config' object)")
    try:
        return TokenizerConfig.from_dict(meta["config"])
    except (ConfigError, TypeError) as e:
        raise TokenizerLoadError(f"{path}: bad tokenizer config: {e}") from e
