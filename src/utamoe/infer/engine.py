"""The one decoding loop: text answers, conversations and image codes, alone or in one batch.

Every request becomes one row of a left-padded batch (an image request with classifier-free
guidance two: as written and with its prompt replaced by `<null>` tokens, as in training);
position ids count only real tokens, so padding does not shift positions. All rows advance
together, one forward pass per step through the shared backbone (with a KV cache), whose
TA-MoE layers route each row to its own expert group. Text rows read `lm_head` and stop at
`<eos>` or their `max_new_tokens`; image rows read `gen_head` for the code grid in raster
order, guided as `uncond + scale * (cond - uncond)`, and their codes become pixels through
the model's image tokenizer (`VQTokenizer.to_uint8`). Answers keep their task spans when the
tokenizer has span tokens (utamoe.text.span_tokens.decode_answer).

Who draws what (`shared_sampling`):
- False (the server's mixed batches): each request keeps its own sampling settings and its own
  random generator, drawing only for its own row, so it gets the tokens it would get alone,
  whatever it is batched with;
- True (one caller's batch, e.g. `Predictor.answer(image, [q1, q2])`): the requests share one
  sampling setting and one generator seeded by it, and are sampled together, row after row, as
  any batched sampler does.

A request may carry a per-cell `CellConstraint` (the box-grounded editor): a cell that is not
free is not sampled; its given code is fed back as if it had been, so the model conditions on
the unchanged surroundings when it fills the free cells. With every cell free a constrained
request is the unconstrained one, draw for draw.

`on_step(i, event)` reports progress per request: ("token", text so far) for text,
("progress", codes done) for images. With `trace=True` each request also gets the routing of
every generated token: per MoE layer, the group and the experts of the position that produced
it (utamoe.moe.route's trace), for the web page's experts view. `use_cache=False` recomputes
the whole sequence at every step; it exists to check the cache (same tokens) and to measure
what the cache buys (benchmarks/generation_cache.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache

from utamoe.data.conversations import Turn
from utamoe.data.sequences import Encoder, TokenSequence, collate
from utamoe.infer.sampling import SamplingConfig, guided, pick
from utamoe.tasks import get_task
from utamoe.text.span_tokens import decode_answer


@dataclass
class CellConstraint:
    """Which cells of an image request's code grid are sampled: `free` (N,) bool in raster order;
    every other cell i gets `codes[i]`."""

    free: torch.Tensor
    codes: Sequence[int]


@dataclass
class Request:
    """One generation: a registered `task` (its layout says text or image), its prompt and input
    image (processed to the model's size), or `turns` (a conversation ending with a user turn:
    its next answer), or an edit's input image as `input_codes`; `constraint` for image tasks."""

    task: str
    prompt: str = ""
    image: np.ndarray | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    turns: Sequence[Turn] | None = None
    input_codes: Sequence[int] | None = None
    constraint: CellConstraint | None = None


@dataclass
class Result:
    text: str | None = None
    codes: list[int] | None = None  # image tasks: the code grid in raster order
    image: np.ndarray | None = None  # image tasks: HxWx3 uint8 (unless pixels=False)
    # per generated token: {"layers": [{"layer": name, "group": g, "experts": [e, ...]}, ...]}
    trace: list[dict] = field(default_factory=list)
    tokens: int = 0  # how many tokens were generated (an answer's <eos> included; codes)
    stopped: bool = False  # text: the answer ended with <eos> (False: it hit max_new_tokens)


class Engine:
    """Decoding for one model and its sequence encoder (see the module docstring)."""

    def __init__(self, model, encoder: Encoder, use_cache: bool = True):
        self.model, self.encoder, self.use_cache = model, encoder, use_cache

    @torch.no_grad()
    def generate(self, requests: Sequence[Request], *, shared_sampling: bool = False,
                 trace: bool = False, on_step: Callable[[int, tuple], None] | None = None,
                 pixels: bool = True) -> list[Result]:
        if not requests:
            return []
        return _Run(self, list(requests), shared_sampling, trace, on_step).decode(pixels)


class _Stepper:
    """Feeds new input embeddings one step at a time, with or without the KV cache."""

    def __init__(self, model, emb, mask, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.mask = mask
        self.pos = (mask.cumsum(-1) - 1).clamp(min=0)
        self.emb, self.cache = emb, DynamicCache() if use_cache else None
        self.h, self.cache = model.hidden(emb, mask, self.pos, self.cache, use_cache=use_cache)

    def last(self) -> torch.Tensor:
        return self.h[:, -1]

    def step(self, new_emb: torch.Tensor) -> None:
        ones = self.mask.new_ones(self.mask.shape[0], 1)
        self.mask = torch.cat([self.mask, ones], dim=1)
        new_pos = self.pos[:, -1:] + 1
        self.pos = torch.cat([self.pos, new_pos], dim=1)
        if self.use_cache:
            self.h, self.cache = self.model.hidden(new_emb, self.mask, new_pos, self.cache, True)
        else:
            self.emb = torch.cat([self.emb, new_emb], dim=1)
            self.h, _ = self.model.hidden(self.emb, self.mask, self.pos)


class _Run:
    """One `Engine.generate` call: the rows, who draws for them, and the decoding state."""

    def __init__(self, engine: Engine, requests: list[Request], shared: bool, trace: bool,
                 on_step):
        self.model, self.encoder, self.use_cache = engine.model, engine.encoder, engine.use_cache
        self.requests, self.trace, self.on_step = requests, trace, on_step
        self.text = [get_task(r.task).output == "text" for r in requests]
        self.n_codes = self.model.config.code_grid ** 2
        self.draws = _draw_sets(requests, self.text, shared)
        for r, is_text in zip(requests, self.text):
            _check_request(r, is_text, self.n_codes)
        self.seqs, self.cond, self.uncond = self._rows()
        self.row_text = [False] * len(self.seqs)  # whether each row reads text (else codes)
        for i, (c, u) in enumerate(zip(self.cond, self.uncond)):
            self.row_text[c] = self.text[i]
            if u is not None:
                self.row_text[u] = self.text[i]
        self.gens = [torch.Generator().manual_seed(requests[d[0]].sampling.seed) for d in self.draws]
        self.budget = [r.sampling.max_new_tokens if t else self.n_codes
                       for r, t in zip(requests, self.text)]
        self.out: list[list[int]] = [[] for _ in requests]
        self.done = [False] * len(requests)
        self.results = [Result() for _ in requests]

    def _rows(self):
        """Per draw set: its requests' rows as written, then their unconditional twins."""
        seqs: list[TokenSequence] = []
        cond: list[int] = [0] * len(self.requests)
        uncond: list[int | None] = [None] * len(self.requests)
        for d in self.draws:
            codes = {i: self._input_codes(self.requests[i]) for i in d}
            for i in d:
                cond[i] = len(seqs)
                seqs.append(self._prefix(self.requests[i], codes[i]))
            for i in d:
                r = self.requests[i]
                if not self.text[i] and r.sampling.cfg_scale != 1.0:
                    uncond[i] = len(seqs)
                    seqs.append(self._prefix(r, codes[i], null_prompt=True))
        return seqs, cond, uncond

    def _input_codes(self, r: Request):
        """An edit's input image as codes, encoded once for both of its rows."""
        if r.input_codes is not None or r.image is None or get_task(r.task).layout != "edit":
            return r.input_codes
        return self.encoder.image_codes(self.encoder.process(r.image))

    def _prefix(self, r: Request, codes, null_prompt: bool = False) -> TokenSequence:
        if r.turns is not None:
            return self.encoder.conversation(r.task, r.turns)
        return self.encoder.prefix(r.task, r.prompt, r.image, null_prompt=null_prompt,
                                   input_codes=None if codes is None else list(codes))

    # ------------------------------------------------------------------ the loop

    def decode(self, pixels: bool) -> list[Result]:
        model = self.model
        batch = collate(self.seqs, self.encoder.special.pad, left_pad=True).to(
            model.gen_embed.weight.device)
        instances = model.instance_embeddings(batch)
        self.routing = model.routing(batch, instances, self.trace)
        self.stepper = self._forward(lambda: _Stepper(
            model, model.embed(batch.input_ids, batch.code_ids, batch.pixel_values, instances),
            batch.attention_mask, self.use_cache))
        steps = max(self.budget)
        for step in range(steps):
            feed = self._pick(self.stepper.last(), step)
            if all(self.done) or step + 1 == steps:
                break
            emb = self._embeddings(feed)
            self._forward(lambda emb=emb: self.stepper.step(emb))
        self._finish(pixels)
        return self.results

    def _forward(self, fn):
        """One forward pass inside the model's routing context (oracle groups, instruction
        embeddings, traces); the trace of what it produced goes to the live requests."""
        with self.routing() as session:
            value = fn()
        if self.trace:
            self._collect_trace(session)
        return value

    def _pick(self, h: torch.Tensor, step: int) -> torch.Tensor:
        """Every row's next token (what it is fed), drawn per draw set."""
        feed = torch.empty(len(self.seqs), dtype=torch.long, device=h.device)
        for g, d in enumerate(self.draws):
            if all(self.done[i] for i in d):
                for i in d:
                    self._feed(feed, i, self.encoder.special.pad if self.text[i] else 0)
            elif self.text[d[0]]:
                self._pick_text(feed, g, d, h)
            else:
                self._pick_codes(feed, g, d, h, step)
        return feed

    def _pick_text(self, feed, g: int, d: list[int], h: torch.Tensor) -> None:
        sp, sampling = self.encoder.special, self.requests[d[0]].sampling
        rows = [self.cond[i] for i in d]
        nxt = pick(self.model.lm_head(_take(h, rows)).float(), sampling, self.gens[g])
        for k, i in enumerate(d):
            if self.done[i]:
                feed[rows[k]] = sp.pad
                continue
            tok = int(nxt[k])
            self.out[i].append(tok)
            self.done[i] = tok == sp.eos or len(self.out[i]) >= self.budget[i]
            feed[rows[k]] = tok
            if self.on_step is not None:
                self.on_step(i, ("token", self._text(i)))

    def _pick_codes(self, feed, g: int, d: list[int], h: torch.Tensor, cell: int) -> None:
        sampling = self.requests[d[0]].sampling
        free = [i for i in d if self.requests[i].constraint is None
                or bool(self.requests[i].constraint.free[cell])]
        drawn: dict[int, int] = {}
        if free:
            rows = [self.cond[i] for i in free]
            twins = [self.uncond[i] for i in free if self.uncond[i] is not None]
            logits = self.model.gen_head(_take(h, rows + twins)).float()
            if twins:
                logits = guided(logits[len(rows):], logits[:len(rows)], sampling.cfg_scale)
            drawn = dict(zip(free, pick(logits, sampling, self.gens[g]).tolist()))
        for i in d:
            code = drawn[i] if i in drawn else int(self.requests[i].constraint.codes[cell])
            self.out[i].append(code)
            self.done[i] = len(self.out[i]) >= self.n_codes
            self._feed(feed, i, code)
            if self.on_step is not None:
                self.on_step(i, ("progress", len(self.out[i])))

    def _feed(self, feed: torch.Tensor, i: int, token: int) -> None:
        feed[self.cond[i]] = token
        if self.uncond[i] is not None:
            feed[self.uncond[i]] = token

    def _embeddings(self, feed: torch.Tensor) -> torch.Tensor:
        """(R, 1, D): the text embedding of text rows' tokens, the code embedding of image rows'."""
        model = self.model
        is_text = self.row_text
        if all(is_text):
            return model.embed(feed[:, None])
        if not any(is_text):
            return model.code_embeddings(feed[:, None])
        text_rows = torch.tensor(is_text, device=feed.device)
        text = model.embed(feed[text_rows][:, None])
        codes = model.code_embeddings(feed[~text_rows][:, None]).to(text.dtype)
        emb = text.new_empty(feed.shape[0], 1, text.shape[-1])
        emb[text_rows], emb[~text_rows] = text, codes
        return emb

    def _text(self, i: int) -> str:
        eos = self.encoder.special.eos
        row = self.out[i][: self.out[i].index(eos)] if eos in self.out[i] else self.out[i]
        return decode_answer(self.encoder.tokenizer, row)

    def _finish(self, pixels: bool) -> None:
        """Answers decoded to text; each draw set's code grids to pixels in one batch."""
        g = self.model.config.code_grid
        for d in self.draws:
            for i in d:
                self.results[i].tokens = len(self.out[i])
            if self.text[d[0]]:
                for i in d:
                    self.results[i].text = self._text(i)
                    self.results[i].stopped = self.encoder.special.eos in self.out[i]
                continue
            for i in d:
                self.results[i].codes = list(self.out[i])
            if pixels:
                codes = torch.tensor([self.out[i] for i in d],
                                     device=self.model.gen_embed.weight.device)
                tok = self.model.image_tokenizer
                images = tok.to_uint8(tok.decode(codes.view(len(d), g, g)))
                for k, i in enumerate(d):
                    self.results[i].image = images[k]

    def _collect_trace(self, session) -> None:
        """The routing of each live request's last position in this forward (what produced its
        next token), per MoE layer."""
        if session is None or not session.traces:
            return
        n_rows = len(self.seqs)
        per_layer = []
        for name, groups_T, experts_TK in session.traces:
            seq = groups_T.shape[0] // n_rows  # tokens per row in this forward (prefix or 1)
            per_layer.append((name, groups_T.view(n_rows, seq)[:, -1],
                              experts_TK.view(n_rows, seq, -1)[:, -1]))
        for i, row in enumerate(self.cond):
            if self.done[i]:
                continue
            self.results[i].trace.append({"layers": [
                {"layer": name, "group": int(g[row]), "experts": [int(e) for e in ex[row]]}
                for name, g, ex in per_layer]})


def _take(h: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Rows of the last hidden states (all of them as they are)."""
    if rows == list(range(h.shape[0])):
        return h
    return h[torch.tensor(rows, device=h.device)]


def _draw_sets(requests: list[Request], text: list[bool], shared: bool) -> list[list[int]]:
    """Indices of the requests that draw from one generator together (see the docstring)."""
    if not shared:
        return [[i] for i in range(len(requests))]
    if len(set(text)) > 1 or any(r.sampling != requests[0].sampling for r in requests):
        raise ValueError("shared_sampling: the requests must be of one output kind (text or "
                         "image) with the same sampling settings")
    return [list(range(len(requests)))]


def _check_request(r: Request, is_text: bool, n_codes: int) -> None:
    c = r.constraint
    if c is None:
        return
    if is_text:
        raise ValueError(f"task {r.task!r} produces text; a cell constraint is for image tasks")
    if len(c.codes) != n_codes or c.free.numel() != n_codes:
        raise ValueError(f"expected {n_codes} constraint codes and cells, got {len(c.codes)} "
                         f"and {c.free.numel()}")
