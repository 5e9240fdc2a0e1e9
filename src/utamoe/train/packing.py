"""More answers per image: extra questions about the same scene packed into one sequence.

A POPE sample carries one answer token, so a batch of 32 probes gives the binding
circuit 32 bits of gradient per step while it pays for 32 image encodings and
~32 x 50 positions. `pack_questions(k)` appends k further questions about the same
ShapesWorld scene (drawn from the sample's ground-truth scene in `meta`, with the
task's own generators and the same held-out rules) after the sample's answer:

    <bos> <pope> <img> <und_slot> x P </img> q1 <sep> a1 <eos> q2 <sep> a2 <eos> ...

Only the answers carry a loss (as for the first question). The first question keeps
the evaluation layout exactly; the image is encoded once for all k + 1 answers.
Training only (`train.pack_questions`, tasks `pope` and `vqa`); inference is unchanged.
"""

from __future__ import annotations

import numpy as np

from utamoe.data.formats import Sample
from utamoe.data.sequences import Encoder, TokenSequence
from utamoe.data.shapes.tasks import VQA_TYPES, _Ctx, _relation_qa, _vqa_qa
from utamoe.data.shapes.world import Scene, ShapesWorldConfig

PACKABLE = ("pope", "vqa")
_TRIES = 20


def pope_question(ctx: _Ctx, scene: Scene) -> tuple[str, str] | None:
    """A balanced POPE probe about `scene` (positive half the time; negatives adversarial
    or random, as in ShapesWorld's generator)."""
    present = scene.combos()
    if ctx.rng.random() < 0.5:
        obj = ctx.pick(scene)
        color, shape, answer = obj.color, obj.shape, "yes"
    else:
        absent = [p for p in ctx.combos if p not in present]
        near = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
        pool = near if near and ctx.rng.random() < 0.5 else absent
        if not pool:
            return None
        (color, shape), answer = ctx.choice(pool), "no"
    return f"is there a {color} {shape} in the image?", answer


def vqa_question(ctx: _Ctx, scene: Scene) -> tuple[str, str] | None:
    qtype = ctx.choice(VQA_TYPES)
    if qtype == "relation":
        return _relation_qa(ctx, scene) if len(scene) >= 2 else None
    return _vqa_qa(ctx, scene, qtype)


def extra_questions(sample: Sample, world: ShapesWorldConfig, rng: np.random.Generator,
                    k: int) -> list[tuple[str, str]]:
    """Up to k (question, answer) pairs of the sample's task about the sample's scene."""
    if sample.task not in PACKABLE or "scene" not in (sample.meta or {}):
        return []
    scene = Scene.from_json(sample.meta["scene"])
    ctx = _Ctx(world, rng, heldout=sample.id.startswith("heldout"))
    make = pope_question if sample.task == "pope" else vqa_question
    out: list[tuple[str, str]] = []
    for _ in range(k * _TRIES):
        if len(out) == k:
            break
        qa = make(ctx, scene)
        if qa is not None:
            out.append(qa)
    return out


def pack_questions(encoder: Encoder, seqs: list[TokenSequence], samples: list[Sample],
                   world: ShapesWorldConfig, rng: np.random.Generator, k: int) -> list[TokenSequence]:
    """Append k extra questions (prompt, `<sep>`, answer with loss, `<eos>`) to each packable
    understanding sequence, in place; `seqs[i]` must be the sequence of `samples[i]`."""
    sp = encoder.special
    for seq, sample in zip(seqs, samples):
        for question, answer in extra_questions(sample, world, rng, k):
            seq.text(encoder.words(question) + [sp.sep])
            seq.text(encoder.words(answer) + [sp.eos], loss=True)
    return seqs
