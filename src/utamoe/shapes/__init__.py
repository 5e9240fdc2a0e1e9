"""ShapesWorld: the built-in benchmark for unified understanding and generation.

Procedural scenes of 1-3 coloured shapes on a 3x3 grid, six tasks (caption, vqa,
pope, grounding, t2i, edit) with canonical templated text, a renderer and a
deterministic parser that reads any image back into a scene so that generated
images are scored exactly. See docs/shapesworld.md.

    from utamoe.shapes import ShapesWorldConfig, generate_dataset, render, parse_image
"""

from utamoe.shapes.parse import UNKNOWN, parse_image
from utamoe.shapes.render import render
from utamoe.shapes.tasks import (
    generate_dataset,
    iter_split,
    make_sample,
    total_samples,
    write_dataset,
)
from utamoe.shapes.text import (
    EditOp,
    PromptError,
    apply_edit,
    describe,
    parse_description,
    parse_edit,
    refer,
    resolve,
)
from utamoe.shapes.world import (
    COLS,
    ROWS,
    SIZES,
    Scene,
    SceneObject,
    ShapesWorldConfig,
    object_box,
    sample_scene,
    validate_scene,
)

__all__ = [
    "COLS",
    "ROWS",
    "SIZES",
    "UNKNOWN",
    "EditOp",
    "PromptError",
    "Scene",
    "SceneObject",
    "ShapesWorldConfig",
    "apply_edit",
    "describe",
    "generate_dataset",
    "iter_split",
    "make_sample",
    "object_box",
    "parse_description",
    "parse_edit",
    "parse_image",
    "refer",
    "render",
    "resolve",
    "sample_scene",
    "total_samples",
    "validate_scene",
    "write_dataset",
]
