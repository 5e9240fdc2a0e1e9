"""The unified model on tiny configs: mixed-task training forward, loss masks, routing labels."""

from __future__ import annotations

import numpy as np
import torch

from utamoe.data.sequences import IGNORE
from utamoe.moe import MoEConfig

from .helpers import mixed_batch, mixed_samples, tiny_model


def test_mixed_task_forward_backward_reaches_every_trainable_part():
    model, tok, enc = tiny_model()
    batch, _ = mixed_batch(enc)
    out = model(batch)
    assert set(out.group_losses) == {"und", "gen"}
    assert set(out.task_losses) == {"vqa", "caption", "grounding", "t2i", "edit"}
    assert set(out.moe_losses) == {"group", "balance", "z"}
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for prefix in ("lm.", "lm_head.", "und_encoder.tower.", "und_encoder.aligner.", "gen_embed.",
                   "gen_aligner.", "gen_head."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), prefix
    assert all(p.grad is None for p in model.image_tokenizer.parameters())  # frozen codec


def test_loss_only_on_answers_and_target_codes():
    model, tok, enc = tiny_model()
    samples = mixed_samples()
    batch, _ = mixed_batch(enc, samples)
    for row, s in enumerate(samples):
        n_text = int((batch.text_labels[row] != IGNORE).sum())
        n_code = int((batch.code_labels[row] != IGNORE).sum())
        if s.group == "und":
            answer = tok.encode(s.target, add_special_tokens=False)
            assert (n_text, n_code) == (len(answer) + 1, 0)  # answer + <eos>
            labelled = batch.text_labels[row][batch.text_labels[row] != IGNORE].tolist()
            assert labelled == answer + [enc.special.eos]
        else:
            assert (n_text, n_code) == (0, model.config.code_grid**2)
        # Padding carries no loss.
        pad = batch.attention_mask[row] == 0
        assert (batch.text_labels[row][pad] == IGNORE).all() and (batch.code_labels[row][pad] == IGNORE).all()


def test_prompts_and_padding_do_not_change_which_tokens_are_scored():
    """Changing padding content leaves the loss unchanged (padding is masked everywhere)."""
    model, tok, enc = tiny_model(moe=MoEConfig(routing="topk", num_experts=4, num_shared_experts=0))
    model.eval()
    batch, _ = mixed_batch(enc)
    with torch.no_grad():
        ref = model(batch).loss
        batch.input_ids[batch.attention_mask == 0] = enc.special.bos
        torch.testing.assert_close(model(batch).loss, ref)


def test_group_router_gets_each_samples_task_group_as_label():
    moe = MoEConfig(group_routing="oracle")
    model, tok, enc = tiny_model(moe=moe)
    batch, _ = mixed_batch(enc)
    out = model(batch)
    per_label = out.moe_stats["label_group_tokens"]  # summed over the 2 layers
    layers = 2
    und_rows = batch.group_ids == 0
    expected = torch.tensor([int(batch.attention_mask[und_rows].sum()),
                             int(batch.attention_mask[~und_rows].sum())]) * layers
    assert torch.equal(per_label.sum(1), expected)
    assert torch.equal(per_label, torch.diag(per_label.diag()))  # oracle: label == group


def test_cfg_null_prompt_replaces_prompt_tokens_only():
    model, tok, enc = tiny_model(moe=None)
    s = mixed_samples()[1]  # t2i
    cond, uncond = enc.sample(s), enc.sample(s, null_prompt=True)
    assert len(cond.input_ids) == len(uncond.input_ids)
    diff = [i for i, (a, b) in enumerate(zip(cond.input_ids, uncond.input_ids)) if a != b]
    assert diff and all(uncond.input_ids[i] == enc.special.null for i in diff)
    assert cond.code_ids == uncond.code_ids


def test_training_sequences_apply_cfg_dropout_to_generation_only():
    from utamoe.data.sequences import training_sequences

    model, tok, enc = tiny_model(moe=None)
    seqs = training_sequences(enc, mixed_samples(), cfg_dropout=1.0, rng=np.random.default_rng(0))
    for s, seq in zip(mixed_samples(), seqs):
        has_null = enc.special.null in seq.input_ids
        assert has_null == (s.group == "gen")
    none = training_sequences(enc, mixed_samples(), cfg_dropout=0.0, rng=np.random.default_rng(0))
    assert all(enc.special.null not in seq.input_ids for seq in none)
