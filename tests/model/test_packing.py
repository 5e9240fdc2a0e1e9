"""Packing does not change the math: the same samples packed (several per row, block-diagonal
causal attention, positions restarting per sample) and padded (one per row) give equal losses,
per-task logs and gradients, for a dense model, TA-MoE (padding skip on; learned and oracle
group routing) and MoME's instance-routed MoLE adapters (with MoVE in front); and the block
mask equals its per-sample reference."""

from __future__ import annotations

import pytest
import torch

from utamoe.data.packing import pack
from utamoe.data.sequences import collate
from utamoe.model.packed_rows import (
    attention_mode,
    block_causal_mask,
    block_causal_mask_reference,
    packed_attention,
)
from utamoe.moe import MoEConfig

from .helpers import mixed_samples, perturb_mome, tiny_model, tiny_mome_model

BUDGET = 100  # the helpers' five samples (29-84 tokens) -> 3 rows of width 96, some padding


pytestmark = pytest.mark.usefixtures("one_thread")


def _f(t: torch.Tensor) -> float:
    return float(t.detach())


def _loss_and_grads(model, batch, mode="auto"):
    model.zero_grad(set_to_none=True)
    out = model(batch, attention_mode=mode)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _assert_same_math(model, encoder, mode="auto"):
    seqs = [encoder.sample(s) for s in mixed_samples()]
    padded = collate(seqs, encoder.special.pad)
    packed = pack(seqs, encoder.special.pad, BUDGET)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]  # really several per row
    assert 0 < packed.attention_mask.sum() < packed.attention_mask.numel()  # padding to skip
    a, grads_a = _loss_and_grads(model, padded)
    b, grads_b = _loss_and_grads(model, packed, mode)
    assert _f(b.loss) == pytest.approx(_f(a.loss), rel=1e-6, abs=1e-6)
    assert a.group_losses.keys() == b.group_losses.keys()
    for g in a.group_losses:
        assert _f(b.group_losses[g]) == pytest.approx(_f(a.group_losses[g]), rel=1e-6)
    assert a.task_losses.keys() == b.task_losses.keys()
    for t in a.task_losses:
        assert b.task_losses[t] == pytest.approx(a.task_losses[t], rel=1e-5, abs=1e-6), t
    for k in a.moe_losses:
        assert _f(b.moe_losses[k]) == pytest.approx(_f(a.moe_losses[k]), rel=1e-5, abs=1e-6), k
    assert grads_a.keys() == grads_b.keys() and grads_a
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-4, atol=1e-6, msg=n)
    return a, b


@pytest.mark.parametrize("mode", ["mask", "positions"])
def test_dense_model_packed_equals_padded(mode):
    model, _, enc = tiny_model(None)
    _assert_same_math(model, enc, mode)


@pytest.mark.parametrize("moe", [None, MoEConfig()], ids=["dense", "ta_moe"])
def test_gemma3_sliding_window_model_packed_equals_padded(moe):
    """Gemma 3's sliding-window layers (window 8, shorter than every sample) take the
    "positions" mode: transformers builds the per-sample mask composed with the window."""
    gemma = dict(model_type="gemma3_text", hidden_size=32, intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                 sliding_window=8, max_position_embeddings=256)
    model, _, enc = tiny_model(moe, backbone=gemma)
    assert attention_mode(model.lm.config) == "positions"
    assert "sliding_attention" in model.lm.config.layer_types
    _assert_same_math(model, enc)


@pytest.mark.parametrize("routing", ["learned", "oracle"])
def test_ta_moe_packed_equals_padded_with_per_token_group_labels(routing):
    model, _, enc = tiny_model(MoEConfig(num_experts=4, top_k=2, num_shared_experts=1,
                                         group_routing=routing))
    a, b = _assert_same_math(model, enc)
    stats_a, stats_b = a.moe_stats, b.moe_stats
    assert int(stats_a["tokens"]) == int(stats_b["tokens"])  # padding skipped in both
    assert torch.equal(stats_a["label_group_tokens"], stats_b["label_group_tokens"])
    assert _f(b.moe_losses["group"]) > 0


def test_mome_instance_routed_adapters_packed_equal_padded():
    model, _, enc = tiny_mome_model()
    perturb_mome(model)  # every router and adapter matters
    seqs = [enc.sample(s) for s in mixed_samples()]
    packed = pack(seqs, enc.special.pad, BUDGET)
    with torch.no_grad():
        picks = model.instance_embeddings(packed) @ model.lm.layers[0].mlp.instance_gate.weight.T
    assert picks.argmax(-1).unique().numel() > 1  # samples sharing a row pick different adapters
    _assert_same_math(model, enc)


def test_mole_instance_token_routing_packed_equals_padded():
    from utamoe.moe.mole import MoLEConfig

    model, _, enc = tiny_model(MoEConfig(), mole=MoLEConfig(num_experts=3, bottleneck=8,
                                                            routing="instance_token"))
    perturb_mome(model)
    _assert_same_math(model, enc)


def test_eager_attention_takes_an_additive_mask_and_agrees():
    model, _, enc = tiny_model(None)
    model.lm.config._attn_implementation = "eager"
    assert attention_mode(model.lm.config) == "mask"
    ids = torch.tensor([[0, 0, 1, -1]])
    mask = packed_attention(model.lm, ids, torch.tensor([[0, 1, 0, 0]]))["attention_mask"]
    assert mask.dtype == torch.float32 and mask[0, 0, 2, 1] < -1e30 and mask[0, 0, 2, 2] == 0
    _assert_same_math(model, enc)


def test_without_the_block_mask_samples_would_see_each_other():
    """The equality above can fail: plain causal attention over a packed row changes the loss."""
    model, _, enc = tiny_model(None)
    seqs = [enc.sample(s) for s in mixed_samples()]
    padded, packed = collate(seqs, enc.special.pad), pack(seqs, enc.special.pad, BUDGET)
    with torch.no_grad():
        want = float(model(padded).loss)
        leaky = packed.to("cpu")
        leaky.sample_ids = torch.zeros_like(packed.sample_ids)  # one block per row
        assert abs(float(model(leaky).loss) - want) > 1e-3
        assert float(model(packed).loss) == pytest.approx(want, rel=1e-6)


def test_block_mask_equals_the_per_sample_reference():
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(4):
        lengths = torch.randint(1, 7, (5,), generator=g).tolist()
        ids = [i for i, n in enumerate(lengths) for _ in range(n)]
        rows.append(ids[:24] + [-1] * (24 - len(ids[:24])))
    ids_BS = torch.tensor(rows)
    assert torch.equal(block_causal_mask(ids_BS), block_causal_mask_reference(ids_BS))
    assert block_causal_mask(ids_BS).any(-1).all()  # no query row fully masked (padding too)


def test_flash_attention_needs_one_row_and_bad_modes_say_what_to_do():
    model, _, _ = tiny_model(None)
    ids, pos = torch.zeros(2, 3, dtype=torch.long), torch.arange(3).repeat(2, 1)
    with pytest.raises(ValueError, match="packed attention mode"):
        attention_mode(model.lm.config, "varlen")
    model.lm.config._attn_implementation = "flash_attention_2"
    assert attention_mode(model.lm.config) == "positions"
    with pytest.raises(ValueError, match="pack_tokens: 0"):
        packed_attention(model.lm, ids, pos)
    assert packed_attention(model.lm, ids[:1], pos[:1])["attention_mask"] is None
    with pytest.raises(ValueError, match="mode 'positions'"):
        attention_mode(model.lm.config, "mask")
