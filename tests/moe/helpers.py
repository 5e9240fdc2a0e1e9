"""Shared helpers for the MoE tests: tiny layers, forced routings and gradient comparison."""

from __future__ import annotations

import torch

from utamoe.moe import MoEConfig, TaskAwareMoE


def make_layer(seed: int = 0, d: int = 32, f: int = 64, dtype=torch.float32, **cfg) -> TaskAwareMoE:
    torch.manual_seed(seed)
    layer = TaskAwareMoE(MoEConfig(**cfg), d, f).to(dtype)
    # Non-zero LoRA B so that LoRA experts differ from the base and from each other.
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith(("b_in", "b_out")):
                p.normal_(std=0.05)
    return layer


def twin(layer: TaskAwareMoE, **overrides) -> TaskAwareMoE:
    """A copy of `layer` with the same weights and some config fields changed."""
    cfg = MoEConfig(**{**layer.config.__dict__, **overrides})
    other = TaskAwareMoE(cfg, layer.hidden_size, layer.intermediate_size)
    other.to(next(layer.parameters()).dtype)
    other.load_state_dict(layer.state_dict())
    return other


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype, name: str = "") -> None:
    """fp32: tight elementwise. bf16: error relative to the tensor's scale (bf16 keeps ~3 digits,
    and summation order differs between paths, so small elements can differ a lot relatively)."""
    actual, expected = actual.float(), expected.float()
    if dtype == torch.float32:
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
        return
    scale = expected.abs().max().clamp(min=1e-6)
    err = (actual - expected).abs().max() / scale
    assert err < 2e-2, f"{name}: max error {float(err):.3g} of the tensor's scale"


PATTERNS = ("all_to_one", "skewed_with_empty", "uniform")


def pattern_ids(pattern: str, T: int, K: int = 2, E: int = 8) -> torch.Tensor:
    """(T, K=2) expert ids: "all_to_one" (slot 0 all expert 5, slot 1 all expert 2),
    "skewed_with_empty" (experts 0, 3, 4, 7 get nothing) or "uniform" (random distinct)."""
    if pattern == "all_to_one":
        return torch.stack([torch.full((T,), 5), torch.full((T,), 2)], dim=1)
    if pattern == "skewed_with_empty":
        return torch.stack([torch.tensor([1, 1, 1, 2])[torch.arange(T) % 4],
                            torch.tensor([5, 6, 6, 6])[torch.arange(T) % 4]], dim=1)
    return torch.stack([torch.randperm(E)[:K] for _ in range(T)])
