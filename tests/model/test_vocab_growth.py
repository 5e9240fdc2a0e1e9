"""A backbone loaded from a directory grows its vocabulary for the tokens utamoe adds (task
and grounding tokens among them): the new rows of the embedding and output layers are the
mean of the existing rows, and the existing rows are untouched."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from utamoe.hf.parts import HFPart, build_backbone


def test_new_rows_are_the_mean_of_the_old_ones(tmp_path):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type="llama", hidden_size=16, intermediate_size=32,
                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                               vocab_size=40, tie_word_embeddings=False)
    causal = AutoModelForCausalLM.from_config(cfg)
    causal.save_pretrained(tmp_path)
    emb_old = causal.get_input_embeddings().weight.detach().clone()
    head_old = causal.get_output_embeddings().weight.detach().clone()
    lm, head = build_backbone(HFPart(path=str(tmp_path)), vocab_size=46)
    emb = lm.get_input_embeddings().weight
    assert emb.shape == (46, 16) and head.weight.shape == (46, 16)
    assert torch.equal(emb[:40], emb_old) and torch.equal(head.weight[:40], head_old)
    for new, old in ((emb[40:], emb_old), (head.weight[40:], head_old)):
        assert torch.allclose(new, old.mean(0).expand_as(new), atol=1e-6)
    # A new token's logit is the mean logit: it neither dominates nor vanishes.
    h = torch.randn(3, 16)
    logits = head(h)
    assert torch.allclose(logits[:, 40], logits[:, :40].mean(1), atol=1e-5)
