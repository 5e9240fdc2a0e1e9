"""Questions about a ShapesWorld scene: the context a sample is made in, VQA questions of each
type, relations, and the extra questions per image that training may append (`train.extra_questions`,
utamoe.train.data: k further questions about the same scene after a POPE or VQA answer, the
image encoded once for all k + 1 answers), and the text-only form of a question sample
(`train.text_scene_questions`: the scene written out before the question, the image blank).

Shared by the task generators (utamoe.shapes.tasks, utamoe.shapes.unified) and by the
benchmark's training hook (utamoe.shapes.benchmark); every draw comes from the sample's own
random generator, so a sample stays a pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from utamoe.config import ConfigError
from utamoe.data.formats import Sample
from utamoe.shapes.render import render
from utamoe.shapes.text import describe, refer
from utamoe.shapes.world import Scene, SceneObject, ShapesWorldConfig, sample_scene

CAPTION_PROMPT = "describe the image"
VQA_TYPES = ("color", "shape", "size", "count", "position", "relation")
RELATIONS = ("left of", "right of", "above", "below")
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles"}
MAX_TRIES = 50


@dataclass
class SampleContext:
    """What a task maker needs: the config, the sample's RNG and the split's combinations."""

    config: ShapesWorldConfig
    rng: np.random.Generator
    heldout: bool

    @property
    def combos(self) -> list[tuple[str, str]]:
        """Pairs the sample may show or name."""
        return self.config.all_combos() if self.heldout else self.config.allowed_combos()

    def scene(self, min_objects: int = 1, max_objects: int | None = None) -> Scene:
        lo = max(min_objects, self.config.min_objects)
        hi = min(max_objects or self.config.max_objects, self.config.max_objects)
        n = int(self.rng.integers(lo, hi + 1))
        must = self.config.heldout if self.heldout else None
        return sample_scene(self.rng, self.config, self.combos, n, must)

    def pick(self, scene: Scene) -> SceneObject:
        """A random object, a held-out one when the split is heldout."""
        objs = list(scene)
        if self.heldout:
            held = [o for o in objs if (o.color, o.shape) in set(self.config.heldout)]
            objs = held or objs
        return objs[int(self.rng.integers(len(objs)))]

    def choice(self, items: Sequence):
        return items[int(self.rng.integers(len(items)))]


def vqa_qa(ctx: SampleContext, scene: Scene, qtype: str) -> tuple[str, str] | None:
    if qtype == "count":
        return count_qa(ctx, scene)
    obj = ctx.pick(scene)
    ref = refer(scene, obj, exclude=qtype)
    if ref is None:
        return None
    question = {"color": "what color is {}?", "shape": "what shape is {}?",
                "size": "what size is {}?", "position": "where is {}?"}[qtype]
    return question.format(ref), str(getattr(obj, qtype))


def count_qa(ctx: SampleContext, scene: Scene) -> tuple[str, str] | None:
    # Filter values come from a scene object 3 times in 4 (non-zero counts), else any
    # allowed value (zero counts too); a colour+shape filter must be a nameable pair.
    source = ctx.pick(scene)
    color, shape = source.color, source.shape
    if ctx.rng.random() < 0.25:
        color, shape = ctx.choice(ctx.combos)
    kind = ctx.choice(("all", "color", "shape", "both"))
    color = color if kind in ("color", "both") else None
    shape = shape if kind in ("shape", "both") else None
    count = sum((color is None or o.color == color) and (shape is None or o.shape == shape)
                for o in scene)
    noun = PLURALS[shape] if shape else "objects"
    words = " ".join(w for w in ("how many", color, noun, "are there?") if w)
    return words, str(count)


def relation_qa(ctx: SampleContext, scene: Scene) -> tuple[str, str] | None:
    """"is A <relation> B?" about two objects of `scene`; None if it has fewer than two."""
    pair = _referred_pair(ctx, scene)
    return None if pair is None else _relation_between(ctx, *pair)


def _referred_pair(ctx: SampleContext, scene: Scene):
    """Two different objects of `scene` (a relation's A and B) and referring expressions of them
    that do not use position: (A, B, ref A, ref B); None with fewer than two objects or when
    either has no such expression."""
    if len(scene) < 2:
        return None
    a = ctx.pick(scene)
    b = ctx.choice([o for o in scene if o != a])
    ref_a, ref_b = refer(scene, a, "position"), refer(scene, b, "position")
    return None if ref_a is None or ref_b is None else (a, b, ref_a, ref_b)


def _relation_between(ctx: SampleContext, a, b, ref_a: str, ref_b: str) -> tuple[str, str]:
    truth = _relations(a, b)
    want = bool(ctx.rng.random() < 0.5)  # balanced yes/no
    options = [r for r in RELATIONS if truth[r] == want] or list(RELATIONS)
    rel = ctx.choice(options)
    return f"is {ref_a} {rel} {ref_b}?", "yes" if truth[rel] else "no"


def _relations(a: SceneObject, b: SceneObject) -> dict[str, bool]:
    """Whether each of RELATIONS holds for "A <relation> B"."""
    return {"left of": a.col < b.col, "right of": a.col > b.col,
            "above": a.row < b.row, "below": a.row > b.row}


def relation_steps(ctx: SampleContext, scene: Scene) -> list[tuple[str, str]] | None:
    """A relation question after the two position questions it rests on ("where is A?",
    "where is B?", "is A left of B?"): training-only scaffolding, so that the comparison can be
    learnt from positions already in the text while the lookup from the image is still being
    learnt (intermediate supervision of a two-step task)."""
    pair = _referred_pair(ctx, scene)
    if pair is None:
        return None
    a, b, ref_a, ref_b = pair
    return [(f"where is {ref_a}?", str(a.position)), (f"where is {ref_b}?", str(b.position)),
            _relation_between(ctx, *pair)]


def relation_where(ctx: SampleContext, scene: Scene) -> tuple[str, str] | None:
    """"where is A relative to B?" answered with every relation that holds ("left of, above",
    "below", ...): training-only, the same two lookups as a relation question but about 3 bits
    per answer instead of yes/no's one, so the comparison of both coordinates is supervised on
    every question."""
    pair = _referred_pair(ctx, scene)
    if pair is None:
        return None
    a, b, ref_a, ref_b = pair
    holds = [rel for rel, true in _relations(a, b).items() if true]
    return f"where is {ref_a} relative to {ref_b}?", ", ".join(holds)


def where_both(ctx: SampleContext, scene: Scene) -> tuple[str, str] | None:
    """"where are A and B?" answered with both positions in the order asked ("top left and
    bottom right"): training-only, the two lookups of a relation question without its
    comparison. A one-object question can be answered by a lookup that matches every word of
    the question; here each position must come from its own referent while the other is in
    the question too, which is what a relation question needs first (a single such lookup, A's
    position with the relation word, already answers 78 % of the test's relation questions)."""
    pair = _referred_pair(ctx, scene)
    if pair is None:
        return None
    a, b, ref_a, ref_b = pair
    return f"where are {ref_a} and {ref_b}?", f"{a.position} and {b.position}"


# ---------------------------------------------------------------- extra questions per image

EXTRA_QUESTION_TASKS = ("pope", "vqa")
_EXTRA_TRIES = 20


def pope_question(ctx: SampleContext, scene: Scene) -> tuple[str, str] | None:
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


def vqa_question(ctx: SampleContext, scene: Scene, probs: np.ndarray | None = None
                 ) -> list[tuple[str, str]] | None:
    """The pairs of one extra VQA question: its type drawn uniformly over VQA_TYPES, or with
    probabilities `probs` (one per EXTRA_VQA_KINDS entry); a scaffold kind gives several."""
    if probs is None:
        kind = ctx.choice(VQA_TYPES)
    else:
        kind = EXTRA_VQA_KINDS[int(ctx.rng.choice(len(EXTRA_VQA_KINDS), p=probs))]
    if kind == "relation_steps":
        return relation_steps(ctx, scene)
    two_object_kind = {"relation": relation_qa, "relation_where": relation_where,
                       "where_both": where_both}.get(kind)
    qa = two_object_kind(ctx, scene) if two_object_kind else vqa_qa(ctx, scene, kind)
    return None if qa is None else [qa]


# Kinds only the extra questions use (never asked at test time).
SCAFFOLD_KINDS = ("relation_steps", "relation_where", "where_both")
QUESTION_KINDS = ("pope", *VQA_TYPES, *SCAFFOLD_KINDS)
EXTRA_VQA_KINDS = (*VQA_TYPES, *SCAFFOLD_KINDS)


def check_question_kinds(kinds: dict[str, float]) -> None:
    """`kinds` (train.extra_question_kinds) names only ShapesWorld's question kinds, weights >= 0."""
    bad = sorted(k for k in kinds if k not in QUESTION_KINDS)
    if bad or any(w < 0 for w in kinds.values()):
        raise ConfigError(f"train.extra_question_kinds: ShapesWorld's kinds are "
                         f"{', '.join(QUESTION_KINDS)} with weights >= 0; got {dict(kinds)}")


def extra_questions(sample: Sample, world: ShapesWorldConfig, rng: np.random.Generator,
                    k: int, kinds: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """Up to k (question, answer) pairs of the sample's task about the sample's scene. `kinds`
    (empty: every kind equally) weighs the question kinds: `pope` for a POPE sample's (0: none),
    the VQA types and scaffolds (`relation_steps`: three pairs, counted as one question) for a
    VQA sample's (the kinds absent from `kinds` are not asked)."""
    if sample.task not in EXTRA_QUESTION_TASKS or "scene" not in (sample.meta or {}):
        return []
    probs = None
    if kinds:
        check_question_kinds(kinds)
        if sample.task == "pope":
            if kinds.get("pope", 0.0) <= 0:
                return []
        else:
            weights = np.asarray([float(kinds.get(t, 0.0)) for t in EXTRA_VQA_KINDS])
            if weights.sum() <= 0:
                return []
            probs = weights / weights.sum()  # once per sample, not per question
    scene = Scene.from_json(sample.meta["scene"])
    ctx = SampleContext(world, rng, heldout=sample.id.startswith("heldout"))
    out: list[tuple[str, str]] = []
    asked = 0
    for _ in range(k * _EXTRA_TRIES):
        if asked == k:
            break
        if sample.task == "pope":
            qa = pope_question(ctx, scene)
            pairs = None if qa is None else [qa]
        else:
            pairs = vqa_question(ctx, scene, probs)
        if pairs:
            out.extend(pairs)
            asked += 1
    return out


def text_scene_sample(sample: Sample, world: ShapesWorldConfig) -> Sample | None:
    """The sample as a text-only scene question: its scene's description before its question
    ("a small red circle at top left and ... . is the red circle left of the blue square?") and a
    blank image (no objects: the sequence keeps its layout, the answer must come from the
    text). A cheap first step for the lookup circuit: finding the referred object's words in
    the context and comparing their positions is what a relation question asks of the image.
    None for a sample without a scene (not POPE / VQA, or not generated)."""
    if sample.task not in EXTRA_QUESTION_TASKS or "scene" not in (sample.meta or {}):
        return None
    scene = Scene.from_json(sample.meta["scene"])
    blank = render(Scene(), world)
    return replace(sample, image=blank, prompt=f"{describe(scene)}. {sample.prompt}")
