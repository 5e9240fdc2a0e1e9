"""The small parts of a unified model that are not Hugging Face's: the image-code head (and,
for now, the MLP aligner). Backbone and vision tower come from utamoe.hf.parts.

They have the same structure as Janus's (`fc1`, `hidden_layers`, GELU; `proj_out`,
`vision_head`), so Janus checkpoints map onto them one to one.
"""

from __future__ import annotations

from torch import nn


class MLPAligner(nn.Module):
    """Linear -> (GELU -> Linear) x (depth - 1): features from one space into another."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.hidden_layers = nn.ModuleList(nn.Linear(out_dim, out_dim) for _ in range(depth - 1))
        self.activation_fn = nn.GELU()

    def forward(self, x):
        x = self.fc1(x)
        for layer in self.hidden_layers:
            x = layer(self.activation_fn(x))
        return x


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
