"""Sequence packing: a mixed-task list of TokenSequences -> rows that hold several samples each.

A mixed-task batch right-padded to its longest sequence (an edit sample, ~140 tokens)
is ~30 % padding that attention, norms, heads and dense FFNs still compute. `pack`
lays the same samples end to end in rows of at most `max_tokens` tokens instead
(first-fit decreasing: longest first, each into the first row with room; of a few
budgets up to `max_tokens`, the one with the fewest token slots; ties by input order,
so the layout is a pure function of the lengths and training batches stay a pure
function of their position):

    row 0: [ s3 edit (140)                | s0 vqa (60)  | s5 pope (50) | pad ]
    row 1: [ s1 t2i (45) | s2 caption (70) | s4 grounding (66) | ...          ]

What keeps the math exactly that of the unpadded samples (tests/model/test_packing.py):
- per token, `sample_ids` (the token's sample, -1 for padding) and `position_ids`
  (restarting at 0 in each sample): the model turns them into block-diagonal causal
  attention and per-sample rotary positions (utamoe.model.packed_rows);
- labels are shifted inside each sample before packing (a sample's last token predicts
  nothing), so no loss crosses a sample boundary;
- per-sample fields (`group_ids`, `task_ids`, `prompts`, images) are in *packed order*
  (row by row, left to right), which is the order the model meets the samples' und
  slots in, so images need no index; `order[n]` is the input index of packed sample n;
- `attention_mask` (B, S) still marks real tokens: the TA-MoE / MoLE layers skip the
  padding and their token-mean losses see the same tokens as unpacked.
The model's group losses are token means over the same tokens, so packed and padded
batches of the same samples give the same losses and gradients (up to float summation
order). Padding (a tail per row) gets its own positions from 0, so it forms its own
attention block and no query row is ever fully masked.

Shapes: N samples, B rows, S row width (tokens, <= max(max_tokens, longest sample)).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from utamoe.data.sequences import Batch, TokenSequence, blank_rows, sample_fields


@dataclass
class PackedBatch(Batch):
    """A Batch whose rows hold several samples; per-sample fields are (N,) in packed order.

    `group_ids`, `task_ids`, `prompts`, `pixel_values` are per *sample* here (per row in a
    plain Batch, where rows and samples coincide)."""

    sample_ids: torch.Tensor | None = None  # (B, S) the token's sample in packed order, -1: padding
    position_ids: torch.Tensor | None = None  # (B, S) position inside its sample (padding: from 0)
    order: list[int] | None = None  # order[n]: index in pack()'s input of packed sample n
    lengths: list[int] | None = None  # (N,) tokens per sample, packed order

    def to(self, device) -> PackedBatch:
        return PackedBatch(**{f.name: (v.to(device) if torch.is_tensor(v) else v)
                              for f in fields(self) for v in [getattr(self, f.name)]})

    @property
    def num_samples(self) -> int:
        return int(self.task_ids.numel())

    @property
    def efficiency(self) -> float:
        """Real tokens / token slots (B * S): what packing is for."""
        return float(self.attention_mask.sum()) / max(1, self.attention_mask.numel())

    @property
    def padded_efficiency(self) -> float:
        """Real tokens / slots of the same samples right-padded to the longest (`collate`)."""
        return sum(self.lengths) / max(1, len(self.lengths) * max(self.lengths, default=0))


def first_fit_decreasing(lengths: list[int], budget: int) -> list[list[int]]:
    """Rows of sample indices: longest first, each into the first row with room (a row holds
    at most max(budget, its first sample's length) tokens). Ties keep input order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max(0, budget - n))
    return rows


def plan_rows(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Rows of sample indices, each holding at most max(max_tokens, longest sample) tokens,
    with the fewest token slots (rows x width of the fullest row) that first-fit decreasing
    finds over ~50 budgets <= max_tokens: the full budget can leave a last row nearly
    empty where a slightly smaller one balances the rows (ties: the narrower rows, cheaper
    attention). Never more slots than padding (the budget = the longest sample is a
    candidate). `max_tokens` 0: every sample in one row (FlashAttention's variable-length
    kernels want one row). Deterministic."""
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0 (0 = one row), got {max_tokens}")
    if not lengths:
        return []
    if max_tokens == 0:
        return [list(range(len(lengths)))]
    longest, total = max(lengths), sum(lengths)
    # Candidates: the budget, the longest sample, the balanced widths total / rows, and a grid.
    budgets = {max_tokens, longest} | {-(-total // r) for r in range(1, len(lengths) + 1)}
    budgets |= set(range(longest, max_tokens + 1, max(1, (max_tokens - longest) // 16)))
    best, best_cost = None, None
    for budget in sorted(b for b in budgets if longest <= b <= max_tokens) or [longest]:
        rows = first_fit_decreasing(lengths, budget)
        width = max(sum(lengths[i] for i in row) for row in rows)
        cost = (len(rows) * width, width)
        if best_cost is None or cost < best_cost:
            best, best_cost = rows, cost
    return best


def pack(seqs: list[TokenSequence], pad_id: int, max_tokens: int) -> PackedBatch:
    """Pack sequences into rows of at most `max_tokens` tokens (see the module docstring).

    Rows are as wide as the fullest row (<= max(max_tokens, longest sample)); the padding
    is a tail per row. `utamoe.data.sequences.collate` is the unpacked reference."""
    if not seqs:
        raise ValueError("pack() needs at least one sequence")
    lengths = [len(s.input_ids) for s in seqs]
    if min(lengths) < 1:
        raise ValueError(f"sequence {lengths.index(0)} (task {seqs[lengths.index(0)].task!r}) is "
                         "empty; every training sequence needs at least one token")
    rows = plan_rows(lengths, max_tokens)
    order = [i for row in rows for i in row]
    B, S = len(rows), max(sum(lengths[i] for i in row) for row in rows)
    ids, codes, mask, text_labels, code_labels, prompt_mask = blank_rows(B, S, pad_id)
    sample_ids = torch.full((B, S), -1, dtype=torch.long)
    position_ids = torch.zeros(B, S, dtype=torch.long)
    n = 0
    for b, row in enumerate(rows):
        start = 0
        for i in row:
            s, m = seqs[i], lengths[i]
            sl = slice(start, start + m)
            tl, cl = s.labels()
            ids[b, sl], codes[b, sl], mask[b, sl] = torch.tensor(s.input_ids), torch.tensor(s.code_ids), 1
            text_labels[b, sl], code_labels[b, sl] = torch.tensor(tl), torch.tensor(cl)
            prompt_mask[b, start + s.prompt_span[0]:start + s.prompt_span[1]] = True
            sample_ids[b, sl], position_ids[b, sl] = n, torch.arange(m)
            start, n = start + m, n + 1
        position_ids[b, start:] = torch.arange(S - start)  # padding: a block of its own
    packed = [seqs[i] for i in order]
    return PackedBatch(
        ids, codes, mask, text_labels, code_labels, *sample_fields(packed), prompt_mask,
        sample_ids=sample_ids, position_ids=position_ids, order=order,
        lengths=[lengths[i] for i in order],
    )


def is_packed(batch) -> bool:
    """Whether `batch` holds several samples per row (a PackedBatch)."""
    return getattr(batch, "sample_ids", None) is not None
