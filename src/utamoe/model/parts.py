"""The image-code head of a unified model (Janus's generation head, `proj_out` / `vision_head`,
so Janus checkpoints map onto it one to one). Backbone and vision tower come from
utamoe.hf.parts, the aligners from utamoe.vision.aligners.
"""

from __future__ import annotations

from torch import nn


class GenHead(nn.Module):
    """Backbone hidden state -> logits over image codes (Janus's generation head)."""

    def __init__(self, hidden: int, num_codes: int, proj_dim: int | None = None):
        super().__init__()
        proj_dim = proj_dim or hidden
        self.proj_out = nn.Linear(hidden, proj_dim)
        self.activation_fn = nn.GELU()
        self.vision_head = nn.Linear(proj_dim, num_codes)

    def forward(self, h):
        return self.vision_head(self.activation_fn(self.proj_out(h)))
