"""The packer: first-fit-decreasing rows within the budget, every sample exactly once, each
sample's tokens, labels and instruction span as `collate` lays them out (the reference),
positions restarting per sample, per-sample fields and images in packed order, and its
efficiency figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utamoe.data.formats import Sample
from utamoe.data.packing import PackedBatch, first_fit_decreasing, pack, plan_rows
from utamoe.data.sequences import Encoder, collate
from utamoe.tasks import task_names
from utamoe.text.tokenizer import SpecialIds, train_text_tokenizer
from utamoe.vision.processor import ImageProcessor

TEXT = ["what color is it ?", "red", "a red circle", "make it blue", "a scene", "describe it ."]


@pytest.fixture(scope="module")
def seqs():
    tok = train_text_tokenizer(TEXT * 5, vocab_size=280)
    enc = Encoder(tok, SpecialIds.of(tok), und_tokens=4, image_codes=lambda img: [1, 2, 3, 4, 5],
                  process=ImageProcessor(16))
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    samples = [Sample("a", "vqa", "what color is it ?", image=imgs[0], target="red"),
               Sample("b", "t2i", "a red circle", target_image=imgs[1]),
               Sample("c", "caption", "describe it .", image=imgs[2], target="a red circle"),
               Sample("d", "edit", "make it blue", image=imgs[3], target_image=imgs[1]),
               Sample("e", "vqa", "what color is it ?", image=imgs[1], target="a scene")]
    return [enc.sample(s) for s in samples], enc.special.pad


def _slots(lengths, rows):
    return len(rows) * max(sum(lengths[i] for i in row) for row in rows)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rows_respect_the_budget_place_every_sample_once_and_beat_padding(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 60, size=40).tolist()
    rows = plan_rows(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(40))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert all(lengths[row[0]] >= lengths[i] for row in rows for i in row)  # longest first
    assert _slots(lengths, rows) <= _slots(lengths, first_fit_decreasing(lengths, 64))
    assert _slots(lengths, rows) <= len(lengths) * max(lengths)  # never worse than padding
    assert sum(lengths) / _slots(lengths, rows) > 0.9  # FFD is near the bound here
    assert plan_rows(lengths, 64) == rows  # deterministic


def test_a_smaller_budget_balances_rows_and_never_loses_to_padding():
    lengths = [34, 28, 33, 26, 19]  # FFD at 64: 3 rows x 62 = 186 slots, padding 5 x 34 = 170
    assert _slots(lengths, first_fit_decreasing(lengths, 64)) == 186
    assert _slots(lengths, plan_rows(lengths, 64)) <= 170


def test_long_samples_get_a_row_of_their_own_and_budget_zero_is_one_row():
    assert first_fit_decreasing([10, 90, 30], 50) == [[1], [2, 0]]
    assert plan_rows([10, 90, 30], 50) == [[1], [2, 0]]
    assert plan_rows([10, 90, 30], 0) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="max_tokens must be >= 0"):
        plan_rows([3], -1)


def test_each_packed_sample_is_laid_out_as_collate_lays_it_out(seqs):
    seqs, pad = seqs
    ref = collate(seqs, pad)
    batch = pack(seqs, pad, 80)
    assert isinstance(batch, PackedBatch) and batch.input_ids.shape[1] <= 80
    assert batch.input_ids.shape[0] < len(seqs)
    assert sorted(batch.order) == list(range(len(seqs)))
    names = task_names()
    for n, i in enumerate(batch.order):
        where = batch.sample_ids == n
        b = int(where.nonzero()[0, 0])
        m = len(seqs[i].input_ids)
        assert int(where.sum()) == m == batch.lengths[n]
        for key in ("input_ids", "code_ids", "text_labels", "code_labels", "prompt_mask"):
            assert torch.equal(getattr(batch, key)[where], getattr(ref, key)[i, :m]), key
        assert batch.position_ids[where].tolist() == list(range(m))
        assert names[int(batch.task_ids[n])] == seqs[i].task == ref.tasks[i]
        assert int(batch.group_ids[n]) == int(ref.group_ids[i])
        assert batch.prompts[n] == seqs[i].prompt
        assert bool(batch.attention_mask[b][where[b]].all())
    pad_tokens = batch.sample_ids < 0
    assert not batch.attention_mask[pad_tokens].any()
    assert (batch.text_labels[pad_tokens] == -100).all()


def test_images_follow_packed_order_and_efficiency_is_reported(seqs):
    seqs, pad = seqs
    ref, batch = collate(seqs, pad), pack(seqs, pad, 80)
    with_image = [i for i, s in enumerate(seqs) if s.image is not None]
    packed_order = [i for i in batch.order if seqs[i].image is not None]
    want = ref.pixel_values[[with_image.index(i) for i in packed_order]]
    assert torch.equal(batch.pixel_values, want)
    real = sum(len(s.input_ids) for s in seqs)
    assert batch.efficiency == pytest.approx(real / batch.attention_mask.numel())
    assert batch.padded_efficiency == pytest.approx(real / ref.attention_mask.numel())
    assert batch.efficiency > batch.padded_efficiency
    moved = batch.to("cpu")
    assert isinstance(moved, PackedBatch) and moved.order == batch.order
