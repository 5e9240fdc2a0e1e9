"""One decoding loop for text and image requests together: the server's mixed batches.

Each request is one row (an image request with classifier-free guidance two: as
written and with a `<null>` prompt). All rows are left-padded into one batch and
advance together, one forward pass per step through the shared backbone, whose
TA-MoE layers route every row to its own expert group; text rows read `lm_head`
and stop at `<eos>` or their `max_new_tokens`, image rows read `gen_head` for the
code grid. Every request keeps its own sampling settings and its own random
generator, drawing only for its own row, so a request gets the tokens it would get
alone (`generate_text` / `generate_images` with one prompt), whatever it is batched
with; only floating-point summation order differs between batch shapes.

`on_step(i, event)` reports progress per request: ("token", text so far) for text,
("progress", codes done) for images. With `trace=True` each request also gets the
routing of every generated token: per MoE layer, the group and the experts of the
position that produced it (utamoe.moe.route's trace), for the web page's experts view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from utamoe.model.generation import SamplingConfig, _Stepper, pick
from utamoe.tasks import get_task


@dataclass
class Request:
    task: str
    prompt: str
    image: np.ndarray | None = None  # processed (model size, RGB) input image, if the task has one
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class Result:
    text: str | None = None
    image: np.ndarray | None = None
    # per generated token: {"layers": [{"layer": name, "group": g, "experts": [e, ...]}, ...]}
    trace: list[dict] = field(default_factory=list)


@dataclass
class _Row:
    request: int
    cond: bool  # False: the unconditional twin of an image request (CFG)


def _rows(encoder, requests: list[Request]):
    seqs, rows = [], []
    for i, r in enumerate(requests):
        spec = get_task(r.task)
        seqs.append(encoder.prefix(r.task, r.prompt, r.image))
        rows.append(_Row(i, True))
        if spec.output == "image" and r.sampling.cfg_scale != 1.0:
            seqs.append(encoder.prefix(r.task, r.prompt, r.image, null_prompt=True))
            rows.append(_Row(i, False))
    return seqs, rows


@torch.no_grad()
def generate_mixed(model, encoder, requests: list[Request], trace: bool = False,
                   on_step: Callable[[int, tuple], None] | None = None) -> list[Result]:
    from utamoe.data.sequences import collate

    sp = encoder.special
    seqs, rows = _rows(encoder, requests)
    device = model.gen_embed.weight.device
    batch = collate(seqs, sp.pad, left_pad=True).to(device)
    is_text = [get_task(r.task).output == "text" for r in requests]
    cond_row = {r.request: k for k, r in enumerate(rows) if r.cond}
    uncond_row = {r.request: k for k, r in enumerate(rows) if not r.cond}
    gens = [torch.Generator().manual_seed(r.sampling.seed) for r in requests]
    n_codes = model.config.code_grid ** 2
    budget = [r.sampling.max_new_tokens if t else n_codes for r, t in zip(requests, is_text)]
    out: list[list[int]] = [[] for _ in requests]
    done = [False] * len(requests)
    results = [Result() for _ in requests]

    instances = model.instance_embeddings(batch)
    routing = model.routing(batch, instances, trace)

    def forward(fn):
        with routing() as session:
            value = fn()
        if trace:
            _collect_trace(session, rows, cond_row, done, results)
        return value

    text_rows = torch.tensor([is_text[rw.request] for rw in rows], device=device)
    stepper = forward(lambda: _Stepper(model, model.embed(batch.input_ids, batch.code_ids,
                                                          batch.pixel_values, instances),
                                       batch.attention_mask, True))
    for step in range(max(budget)):
        h = stepper.last()
        feed = torch.empty(len(rows), dtype=torch.long, device=device)
        for i, r in enumerate(requests):
            row = cond_row[i]
            if done[i]:
                feed[row] = sp.pad if is_text[i] else 0
                if i in uncond_row:
                    feed[uncond_row[i]] = 0
                continue
            if is_text[i]:
                tok = int(pick(model.lm_head(h[row:row + 1]).float(), r.sampling, gens[i])[0])
                out[i].append(tok)
                done[i] = tok == sp.eos or len(out[i]) >= budget[i]
                feed[row] = tok
                if on_step is not None:
                    on_step(i, ("token", _decode(encoder, out[i], sp.eos)))
            else:
                logits = model.gen_head(h[row:row + 1]).float()
                if i in uncond_row:
                    u = model.gen_head(h[uncond_row[i]:uncond_row[i] + 1]).float()
                    logits = u + r.sampling.cfg_scale * (logits - u)
                code = int(pick(logits, r.sampling, gens[i])[0])
                out[i].append(code)
                done[i] = len(out[i]) >= n_codes
                feed[row] = code
                if i in uncond_row:
                    feed[uncond_row[i]] = code
                if on_step is not None:
                    on_step(i, ("progress", len(out[i])))
        if all(done) or step + 1 == max(budget):
            break
        emb = _next_embeddings(model, feed, text_rows)
        forward(lambda emb=emb: stepper.step(emb))
    for i in range(len(requests)):
        if is_text[i]:
            results[i].text = _decode(encoder, out[i], sp.eos)
        else:
            g = model.config.code_grid
            codes = torch.tensor(out[i], device=device).view(1, g, g)
            pixels = model.image_tokenizer.decode(codes)
            arr = ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
            results[i].image = arr[0].cpu().numpy()
    return results


def _next_embeddings(model, feed: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
    """(R, 1, D): the text embedding of text rows' tokens, the code embedding of image rows'."""
    text = model.embed(feed[text_rows][:, None])
    codes = model.code_embeddings(feed[~text_rows][:, None]).to(text.dtype)
    emb = text.new_empty(feed.shape[0], 1, text.shape[-1])
    emb[text_rows], emb[~text_rows] = text, codes
    return emb


def _decode(encoder, tokens: list[int], eos: int) -> str:
    row = tokens[: tokens.index(eos)] if eos in tokens else tokens
    from utamoe.text.span_tokens import decode_answer

    return decode_answer(encoder.tokenizer, row)


def _collect_trace(session, rows, cond_row, done, results) -> None:
    """The routing of each request's last position in this forward (what produced its next
    token), per MoE layer."""
    if session is None or not session.traces:
        return
    n_rows = len(rows)
    per_layer = []
    for name, groups_T, experts_TK in session.traces:
        seq = groups_T.shape[0] // n_rows  # tokens per row in this forward (prefix or 1)
        per_layer.append((name, groups_T.view(n_rows, seq)[:, -1],
                          experts_TK.view(n_rows, seq, -1)[:, -1]))
    for i, row in cond_row.items():
        if done[i]:
            continue
        results[i].trace.append({"layers": [
            {"layer": name, "group": int(g[row]), "experts": [int(e) for e in ex[row]]}
            for name, g, ex in per_layer]})
