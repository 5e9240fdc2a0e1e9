"""ShapesWorld task generators and the dataset builder (in memory or written to disk).

UnifiedMLLM's tasks (reasoning edits, referring segmentation, layouts, dialogues) are made in
utamoe.shapes.unified. Every sample gets its own random generator seeded by (seed,
split, task, index), so
a sample does not change when other splits or tasks grow, and any subset can be
regenerated alone. Splits other than `heldout` draw (colour, shape) pairs only
from the allowed combinations - in scenes, edit results *and* question text (a
POPE probe or a count question never names a held-out pair); the `heldout` split
puts at least one held-out pair in every scene and prefers it as the subject.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from utamoe.data.formats import Sample, write_manifest, write_split
from utamoe.shapes.questions import (
    CAPTION_PROMPT,
    MAX_TRIES,
    VQA_TYPES,
    SampleContext,
    relation_qa,
    vqa_qa,
)
from utamoe.shapes.render import render
from utamoe.shapes.text import (
    EDIT_KINDS,
    EditOp,
    apply_edit,
    describe,
    edit_instruction,
    refer,
    t2i_prompt,
)
from utamoe.shapes.unified import make_unified
from utamoe.shapes.world import (
    GENERATOR,
    SIZES,
    SPLITS,
    UNIFIED_TASKS,
    Scene,
    SceneObject,
    ShapesWorldConfig,
    object_box,
)
from utamoe.text.boxes import format_box

# ---------------------------------------------------------------- understanding


def make_caption(ctx: SampleContext) -> tuple[Scene, str, str, dict]:
    scene = ctx.scene()
    return scene, CAPTION_PROMPT, describe(scene), {}


def make_vqa(ctx: SampleContext) -> tuple[Scene, str, str, dict]:
    qtype = ctx.choice(VQA_TYPES)
    for _ in range(MAX_TRIES):
        scene = ctx.scene(min_objects=2 if qtype == "relation" else 1)
        qa = relation_qa(ctx, scene) if qtype == "relation" else vqa_qa(ctx, scene, qtype)
        if qa is not None:
            return scene, qa[0], qa[1], {"qtype": qtype}
    raise RuntimeError(f"could not make a '{qtype}' question in {MAX_TRIES} scenes")


def make_pope(ctx: SampleContext, index: int) -> tuple[Scene, str, str, dict]:
    positive = index % 2 == 0  # exactly half positive, half negative
    for _ in range(MAX_TRIES):
        scene = ctx.scene()
        present = scene.combos()
        if positive:
            obj = ctx.pick(scene)
            color, shape, kind = obj.color, obj.shape, "positive"
        else:
            absent = [p for p in ctx.combos if p not in present]
            # Adversarial probes share a colour or a shape with something in the scene.
            near = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
            kind = "adversarial" if near and ctx.rng.random() < 0.5 else "random"
            pool = near if kind == "adversarial" else absent
            if not pool:
                continue
            color, shape = ctx.choice(pool)
        prompt = f"is there a {color} {shape} in the image?"
        return scene, prompt, "yes" if positive else "no", {"probe": kind}
    raise RuntimeError("could not make a POPE probe")


def make_grounding(ctx: SampleContext) -> tuple[Scene, str, str, dict]:
    for _ in range(MAX_TRIES):
        scene = ctx.scene()
        obj = ctx.pick(scene)
        ref = refer(scene, obj, exclude="position")
        if ref is not None:
            box = format_box(object_box(obj, ctx.config))
            return scene, f"locate {ref}", box, {"object": obj.to_json()}
    raise RuntimeError("could not make a grounding question")


# ---------------------------------------------------------------- generation


def make_edit(ctx: SampleContext) -> tuple[Scene, Scene, str, dict]:
    cfg = ctx.config
    # "add" needs room for one more object, "remove" must leave one behind.
    kinds = [k for k in EDIT_KINDS if not (k == "add" and cfg.max_objects < 2)
             and not (k == "remove" and cfg.max_objects < 2)]
    kind = ctx.choice(kinds)
    for _ in range(MAX_TRIES):
        hi = cfg.max_objects - 1 if kind == "add" else cfg.max_objects
        scene = ctx.scene(min_objects=2 if kind == "remove" else 1, max_objects=hi)
        op = _edit_op(ctx, scene, kind)
        if op is not None:
            target = apply_edit(scene, op)
            return scene, target, edit_instruction(scene, op), {"edit": kind}
    raise RuntimeError(f"could not make a '{kind}' edit")


def _edit_op(ctx: SampleContext, scene: Scene, kind: str) -> EditOp | None:
    free = scene.free_cells()
    if kind == "add":
        color, shape = ctx.choice(ctx.combos)
        row, col = ctx.choice(free)
        return EditOp("add", SceneObject(shape, color, ctx.choice(SIZES), row, col))
    obj = ctx.pick(scene)
    if kind == "remove":
        return EditOp("remove", obj) if len(scene) >= 2 else None
    if kind == "move":
        return EditOp("move", obj, cell=ctx.choice(free))
    colors = [c for c, s in ctx.combos if s == obj.shape and c != obj.color]
    return EditOp("recolor", obj, color=ctx.choice(colors)) if colors else None


# ---------------------------------------------------------------- samples and datasets


def split_id(split: str) -> int:
    """A stable number per split name (the default four are 0..3) for seeding."""
    return SPLITS.index(split) if split in SPLITS else zlib.crc32(split.encode()) + len(SPLITS)


def make_sample(config: ShapesWorldConfig, split: str, task: str, index: int) -> Sample:
    """Sample `index` of `task` in `split`: a pure function of these and the config."""
    task_no = list(config.tasks).index(task) if task in config.tasks else zlib.crc32(task.encode())
    rng = np.random.default_rng([config.seed, split_id(split), task_no, index])
    ctx = SampleContext(config, rng, heldout=split == "heldout")
    sid = f"{split}-{task}-{index:06d}"
    if task in UNIFIED_TASKS:
        return make_unified(ctx, task, sid)
    if task == "t2i":
        scene = ctx.scene()
        return Sample(sid, task, t2i_prompt(scene), target_image=render(scene, config),
                      meta={"scene": scene.to_json()})
    if task == "edit":
        src, dst, prompt, meta = make_edit(ctx)
        return Sample(sid, task, prompt, image=render(src, config),
                      target_image=render(dst, config),
                      meta={"scene": src.to_json(), "target_scene": dst.to_json(), **meta})
    if task == "pope":
        scene, prompt, target, meta = make_pope(ctx, index)
    else:
        maker = {"caption": make_caption, "vqa": make_vqa, "grounding": make_grounding}[task]
        scene, prompt, target, meta = maker(ctx)
    return Sample(sid, task, prompt, image=render(scene, config), target=target,
                  meta={"scene": scene.to_json(), **meta})


def iter_split(config: ShapesWorldConfig, split: str) -> Iterator[Sample]:
    """All samples of one split: `config.sizes[split]` per task, task by task."""
    if split == "heldout" and config.sizes.get(split, 0) and not config.heldout:
        raise ValueError("the heldout split needs held-out pairs: set config.heldout or "
                         "sizes.heldout to 0")
    for task in config.tasks:
        for i in range(config.sizes.get(split, 0)):
            yield make_sample(config, split, task, i)


def generate_dataset(config: ShapesWorldConfig | None = None,
                     progress: Callable[[int], None] | None = None) -> dict[str, list[Sample]]:
    """Every split of `config.sizes` in memory: {split: [Sample, ...]}."""
    config = config or ShapesWorldConfig()
    out: dict[str, list[Sample]] = {}
    for split in config.sizes:
        out[split] = []
        for s in iter_split(config, split):
            out[split].append(s)
            if progress is not None:
                progress(1)
    return out


def write_dataset(out_dir: str | Path, config: ShapesWorldConfig | None = None,
                  progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Generate and write a ShapesWorld dataset in the on-disk format; returns counts."""
    config = config or ShapesWorldConfig()
    out_dir = Path(out_dir)
    counts = {split: write_split(out_dir, split, iter_split(config, split), progress)
              for split in config.sizes}
    write_manifest(out_dir, "shapesworld", {"generator": GENERATOR,
                                            "config": config.to_dict(), "counts": counts})
    return counts


def total_samples(config: ShapesWorldConfig) -> int:
    return sum(config.sizes.values()) * len(config.tasks)
