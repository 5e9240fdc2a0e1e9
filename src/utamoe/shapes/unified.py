"""ShapesWorld samples of UnifiedMLLM's tasks, with exact ground truth (docs/unifiedmllm.md).

    reason_edit  "remove the shape left of the red circle": the instruction names its target
                 only through the scene (a relation to another object, the only small shape,
                 the shape that is not X); the answer is a task span with the explicit edit
                 and the target's box, and the target image is the edited scene:
                 <edit>remove the green square<box>[0.05,0.05,0.28,0.28]</box></edit>
    seg          "segment the shape above the blue square" (or a direct reference): the answer
                 is <seg>the red circle<box>[..]</box></seg>; the target image is the mask
                 (white where the object covers a pixel, black elsewhere)
    layout       "a red circle [0.06,0.06,0.27,0.27] and a blue square [..]": each object's box
                 (its size and cell follow from the box); the target image is the scene
    dialog       a conversation over one image mixing understanding answers (questions,
                 grounding, captions) and task calls (a reasoning edit or a segmentation)

Boxes inside task spans are the object's tight box rounded *outward* to two decimals, so the
pixels an executor works on (utamoe.tasks_exec.grounded.box_pixels) cover the whole object;
grounding answers keep the nearest rounding of `format_box`, as the grounding task does.
Every sample is a pure function of (seed, split, task, index) like the other tasks.
"""

from __future__ import annotations

import math

import numpy as np

from utamoe.data.conversations import Turn
from utamoe.data.formats import Sample
from utamoe.shapes.questions import (
    CAPTION_PROMPT,
    MAX_TRIES,
    RELATIONS,
    VQA_TYPES,
    SampleContext,
    relation_qa,
    vqa_qa,
)
from utamoe.shapes.render import object_alpha, render
from utamoe.shapes.text import EditOp, apply_edit, describe, edit_instruction, edit_text, refer
from utamoe.shapes.world import (
    Scene,
    SceneObject,
    ShapesWorldConfig,
    cell_center,
    object_box,
    object_side,
)
from utamoe.text.boxes import format_box
from utamoe.text.spans import format_span

REASON_EDIT_KINDS = ("remove", "recolor", "move")


def span_box(obj: SceneObject, config: ShapesWorldConfig) -> tuple[float, float, float, float]:
    """The object's box rounded outward to two decimals (see the module docstring)."""
    x0, y0, x1, y1 = object_box(obj, config)
    down = [max(0.0, math.floor(v * 100 + 1e-9) / 100) for v in (x0, y0)]
    up = [min(1.0, math.ceil(v * 100 - 1e-9) / 100) for v in (x1, y1)]
    return (down[0], down[1], up[0], up[1])


def holds(obj: SceneObject, relation: str, anchor: SceneObject) -> bool:
    """Whether `obj` is `relation` ("left of", ...) `anchor`: by column or row, any distance."""
    return {"left of": obj.col < anchor.col, "right of": obj.col > anchor.col,
            "above": obj.row < anchor.row, "below": obj.row > anchor.row}[relation]


def reasoned_reference(ctx: SampleContext, scene: Scene, obj: SceneObject) -> str | None:
    """A phrase that names `obj` alone without naming its own colour or shape, or None."""
    others = [o for o in scene if o != obj]
    kinds = ["relation", "only_size", "other"]
    ctx.rng.shuffle(kinds)
    for kind in kinds:
        if kind == "relation":
            for i in ctx.rng.permutation(len(others)):
                anchor = others[int(i)]
                ref = refer(scene, anchor, allow_position=False)
                rels = [r for r in RELATIONS if holds(obj, r, anchor)
                        and sum(holds(o, r, anchor) for o in scene if o != anchor) == 1]
                if ref is not None and rels:
                    return f"the shape {ctx.choice(rels)} {ref}"
        elif kind == "only_size" and len(scene) >= 2 \
                and sum(o.size == obj.size for o in scene) == 1:
            return f"the only {obj.size} shape"
        elif kind == "other" and len(others) == 1:
            ref = refer(scene, others[0], allow_position=False)
            if ref is not None:
                return f"the shape that is not {ref}"
    return None


def _reason_edit_op(ctx: SampleContext, scene: Scene, obj: SceneObject, kind: str) -> EditOp | None:
    if kind == "remove":
        return EditOp("remove", obj)
    if kind == "move":
        return EditOp("move", obj, cell=ctx.choice(scene.free_cells()))
    colors = [c for c, s in ctx.combos if s == obj.shape and c != obj.color]
    return EditOp("recolor", obj, color=ctx.choice(colors)) if colors else None


def reason_edit_turn(ctx: SampleContext, scene: Scene) -> tuple[str, str, Scene, dict] | None:
    """(instruction, span answer, edited scene, meta) of one reasoning edit, or None."""
    kind = ctx.choice(REASON_EDIT_KINDS)
    obj = ctx.pick(scene)
    phrase = reasoned_reference(ctx, scene, obj)
    op = _reason_edit_op(ctx, scene, obj, kind) if phrase is not None else None
    if op is None:
        return None
    target = apply_edit(scene, op)
    boxes = [span_box(obj, ctx.config)]
    if op.kind == "move":  # the box it leaves and the box it moves into
        moved = next(o for o in target if o not in scene.objects)
        boxes.append(span_box(moved, ctx.config))
    answer = format_span("edit", edit_instruction(scene, op), boxes)
    meta = {"edit": op.kind, "object": obj.to_json(), "target_scene": target.to_json(),
            "boxes": [list(b) for b in boxes]}
    return edit_text(phrase, op), answer, target, meta


def object_mask(obj: SceneObject, config: ShapesWorldConfig) -> np.ndarray:
    """uint8 (H, W): 255 where the rendered object covers a pixel at all, else 0."""
    cx, cy = cell_center(config, obj.row, obj.col)
    size = config.image_size
    alpha = object_alpha(obj.shape, cx, cy, object_side(config, obj.size), size, size)
    return np.where(alpha > 0, 255, 0).astype(np.uint8)


def seg_turn(ctx: SampleContext, scene: Scene) -> tuple[str, str, SceneObject, bool]:
    """(request, span answer, the object, whether the request is reasoned) of a segmentation."""
    obj = ctx.pick(scene)
    direct = refer(scene, obj)
    phrase = reasoned_reference(ctx, scene, obj) if ctx.rng.random() < 0.5 else None
    answer = format_span("seg", direct, [span_box(obj, ctx.config)])
    return f"segment {phrase or direct}", answer, obj, phrase is not None


def layout_prompt(scene: Scene, config: ShapesWorldConfig) -> str:
    """'a red circle [0.06,0.06,0.27,0.27] and ...': each object with its box, reading order
    (what utamoe.tasks_exec.builtin.ModelLayout writes from a <layout> span)."""
    return " and ".join(f"a {o.color} {o.shape} {format_box(object_box(o, config))}" for o in scene)


def _understanding_turn(ctx: SampleContext, scene: Scene) -> tuple[str, str, str] | None:
    kind = ctx.choice(("vqa", "vqa", "grounding", "caption"))
    if kind == "caption":
        return kind, CAPTION_PROMPT, describe(scene)
    if kind == "grounding":
        obj = ctx.pick(scene)
        ref = refer(scene, obj, exclude="position")
        return None if ref is None else (kind, f"locate {ref}",
                                         format_box(object_box(obj, ctx.config)))
    qtype = ctx.choice(VQA_TYPES)
    qa = relation_qa(ctx, scene) if qtype == "relation" else vqa_qa(ctx, scene, qtype)
    return None if qa is None else (kind, qa[0], qa[1])


def _dialog(ctx: SampleContext, image: np.ndarray, scene: Scene) -> tuple[list[Turn], list[str]] | None:
    """Turns and their kinds: one or two understanding exchanges, a task call, and maybe one
    more question (every turn is about the conversation's one image)."""
    plan = ["und"] * int(ctx.rng.integers(1, 3)) + ["task"] + (["und"] if ctx.rng.random() < 0.5
                                                              else [])
    turns, kinds = [], []
    for step in plan:
        if step == "task" and ctx.rng.random() < 0.5:
            got = reason_edit_turn(ctx, scene)
            exchange = None if got is None else ("reason_edit", got[0], got[1])
        elif step == "task":
            request, answer, _, _ = seg_turn(ctx, scene)
            exchange = ("seg", request, answer)
        else:
            exchange = _understanding_turn(ctx, scene)
        if exchange is None or any(t.text == exchange[1] for t in turns):
            return None  # no question asked twice
        kinds.append(exchange[0])
        turns += [Turn("user", exchange[1], image if not turns else None),
                  Turn("assistant", exchange[2])]
    return turns, kinds


def make_unified(ctx: SampleContext, task: str, sid: str) -> Sample:
    """Sample `sid` of one of UnifiedMLLM's tasks (see the module docstring)."""
    config = ctx.config
    for _ in range(MAX_TRIES):
        if task == "layout":
            scene = ctx.scene()
            return Sample(sid, task, layout_prompt(scene, config), target_image=render(scene, config),
                          meta={"scene": scene.to_json()})
        scene = ctx.scene(min_objects=1 if task == "seg" else 2)
        image = render(scene, config)
        meta = {"scene": scene.to_json()}
        if task == "seg":
            prompt, answer, obj, reasoned = seg_turn(ctx, scene)
            mask = object_mask(obj, config)
            return Sample(sid, task, prompt, image=image, target=answer,
                          target_image=np.repeat(mask[..., None], 3, axis=2),
                          meta={**meta, "object": obj.to_json(), "reasoned": reasoned})
        if task == "reason_edit":
            got = reason_edit_turn(ctx, scene)
            if got is not None:
                prompt, answer, target, extra = got
                return Sample(sid, task, prompt, image=image, target=answer,
                              target_image=render(target, config), meta={**meta, **extra})
        elif task == "dialog":
            got = _dialog(ctx, image, scene)
            if got is not None:
                turns, kinds = got
                return Sample(sid, task, turns[0].text, turns=turns,
                              meta={**meta, "kinds": kinds})
        else:
            raise ValueError(f"{task!r} is not one of UnifiedMLLM's ShapesWorld tasks")
    raise RuntimeError(f"could not make a '{task}' sample in {MAX_TRIES} scenes")

