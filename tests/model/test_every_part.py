"""`UnifiedModel.forward(batch, every_part=True)`: every trainable part runs on every forward (the understanding
encoder on a placeholder image, the code embedding on one code, a head without labels on one
hidden row), zero-weighted, so that processes with different task groups run the same modules
in the same order (DeepSpeed ZeRO, utamoe.train.engines). Held here: the loss, group / task /
routing losses and every gradient are bit-identical to the forward without it; the parts only
it runs get exactly-zero gradients; placeholders record nothing in the routing session and add
no group loss; padded and packed batches, TA-MoE and MoME (MoVE's instruction router, MoLE);
and the parameters' gradients arrive in the same order for an understanding-only batch and a
generation-only batch (what ZeRO's gradient buckets need)."""

from __future__ import annotations

import inspect

import pytest
import torch

from utamoe.data.packing import pack
from utamoe.data.sequences import collate
from utamoe.moe import MoEConfig

from .helpers import mixed_samples, perturb_mome, tiny_model, tiny_mome_model

UND, GEN = ("vqa", "caption", "grounding"), ("t2i", "edit")
# Parts that run only for some task groups (everything else runs on every batch).
PARTS = ("und_encoder.", "gen_embed.", "gen_aligner.", "lm_head.", "gen_head.")


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(encoder, tasks, packed: bool = False):
    seqs = [encoder.sample(s) for s in mixed_samples() if s.task in tasks]
    return pack(seqs, encoder.special.pad, 100) if packed else collate(seqs, encoder.special.pad)


def _run(model, batch, every_part: bool):
    model.zero_grad(set_to_none=True)
    out = model(batch, every_part=every_part)
    out.loss.backward()
    grads = {n: None if p.grad is None else p.grad.detach().clone()
             for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


def _assert_bit_identical(model, encoder, batch):
    off, grads_off = _run(model, batch, False)
    on, grads_on = _run(model, batch, True)
    assert torch.equal(on.loss, off.loss) and on.loss.item() == off.loss.item()
    assert on.group_losses.keys() == off.group_losses.keys()  # no placeholder group
    for g in off.group_losses:
        assert torch.equal(on.group_losses[g], off.group_losses[g]), g
    assert on.task_losses == off.task_losses
    assert on.moe_losses.keys() == off.moe_losses.keys()
    for k in off.moe_losses:
        assert torch.equal(on.moe_losses[k], off.moe_losses[k]), k
    assert [r.name for r in on.session.records] == [r.name for r in off.session.records]
    only_on = []
    for name, g in grads_off.items():
        if g is not None:
            assert torch.equal(grads_on[name], g), name
        elif grads_on[name] is not None:
            assert not grads_on[name].any(), name  # exactly zero
            only_on.append(name)
    # Every part runs: the parameters with a gradient are those of a batch with both groups
    # (not all of them: e.g. SigLIP's pooling head is never used).
    model.zero_grad(set_to_none=True)
    model(_batch(encoder, UND + GEN)).loss.backward()
    assert {n for n, g in grads_on.items() if g is not None} == {
        n for n, p in model.named_parameters() if p.grad is not None}
    return only_on


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_every_part_is_bit_identical_and_zero_for_missing_parts(packed):
    model, _, enc = tiny_model()
    for tasks, missing in ((UND, ("gen_embed.", "gen_aligner.", "gen_head.")),
                           (GEN, ("und_encoder.", "lm_head.")),
                           (UND + GEN, ())):
        only_on = _assert_bit_identical(model, enc, _batch(enc, tasks, packed))
        assert {p for p in PARTS if any(n.startswith(p) for n in only_on)} == set(missing), tasks
    assert inspect.signature(type(model).forward).parameters["every_part"].default is False


def test_every_part_with_mome_instruction_router():
    """MoVE's instruction router needs an instruction for the placeholder image; the mixture
    (a routed module) records nothing for it."""
    model, _, enc = tiny_mome_model()
    perturb_mome(model)
    assert model.needs_instructions
    only_on = _assert_bit_identical(model, enc, _batch(enc, GEN))
    assert any(n.startswith("und_encoder.") for n in only_on)
    only_on = _assert_bit_identical(model, enc, _batch(enc, UND, packed=True))
    assert any(n.startswith("gen_head.") for n in only_on)


SPLIT = MoEConfig(num_experts=2, top_k=1, num_shared_experts=0, group_routing="oracle")


@pytest.mark.parametrize("moe", [
    MoEConfig(), SPLIT, MoEConfig(expert_type="lora", lora_rank=4),
    MoEConfig(dispatch="loop"), MoEConfig(dispatch="grouped"),
    MoEConfig(routing="topk", num_experts=4, num_shared_experts=0), None,
], ids=["ta_moe", "split_oracle", "lora", "loop", "grouped", "topk", "dense"])
def test_gradients_arrive_in_the_same_order_whatever_the_groups(moe):
    """ZeRO reduces gradients in buckets filled in the order autograd produces them: with
    every_part an understanding-only and a generation-only batch produce gradients for the same
    parameters in one order. Also where the experts of one group get no tokens at all (the
    oracle split: one expert per group): an expert bank is one parameter for all its experts,
    so it gets a gradient (zero rows) whatever the routing."""
    model, _, enc = tiny_model(moe)
    order: list[str] = []
    hooks = [p.register_post_accumulate_grad_hook(lambda p, n=n: order.append(n))
             for n, p in model.named_parameters() if p.requires_grad]
    orders = []
    for tasks in (UND, GEN, UND + GEN):
        model.zero_grad(set_to_none=True)
        order.clear()
        model(_batch(enc, tasks), every_part=True).loss.backward()
        orders.append(list(order))
    for h in hooks:
        h.remove()
    assert orders[0] == orders[1] == orders[2]
    # every parameter that gets a gradient, once each (SigLIP's unused pooling head gets none)
    assert sorted(orders[0]) == sorted(n for n, p in model.named_parameters() if p.grad is not None)
    assert any(n.startswith("und_encoder.") for n in orders[0]) and "gen_embed.weight" in orders[0]
