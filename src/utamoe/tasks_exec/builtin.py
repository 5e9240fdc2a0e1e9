"""Built-in executors: the unified model's own generation and edit, and box segmentation.

    ModelT2I      <t2i>a red circle</t2i>           Predictor.generate on the span's text
    ModelLayout   <layout>a red circle<box>..</box> and a square<box>..</box></layout>
                                                     Predictor.generate on the span written out
                                                     with each box as '[x0,y0,x1,y1]' in place
    ModelEdit     <edit>make it blue</edit>          Predictor.edit of the latest image
    BoxSegmenter  <seg>the circle<box>..</box></seg> a mask of the pixels inside the box(es)
                                                     that are not the background colour

The box-grounded editor (the default for <edit>) is in grounded.py, the diffusers adapter in
diffusers_exec.py. Each has a factory `name(context, **options)` that a config names by
`name` (utamoe.tasks_exec.executors.BUILTIN_EXECUTORS).

The segmenter needs no model: ShapesWorld-like images draw objects on a plain background,
so "the pixels in the box that differ from the image's most common colour" is the object.
Masks are uint8 0 / 255 (a PNG viewers show as black and white; `write_mask_png`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utamoe.infer.sampling import SamplingConfig
from utamoe.tasks_exec.executors import (
    ExecContext,
    ExecRequest,
    ExecResult,
    ExecutorError,
    need_predictor,
    sampling_config,
)
from utamoe.tasks_exec.regions import box_pixels
from utamoe.text.boxes import Box, format_box


class ModelT2I:
    name, tag = "model_t2i", "t2i"

    def __init__(self, predictor, sampling: SamplingConfig | None = None, gen_task: str = "t2i"):
        self.predictor, self.sampling, self.gen_task = predictor, sampling or SamplingConfig(), gen_task

    def prompt(self, request: ExecRequest) -> str:
        return request.text

    def __call__(self, request: ExecRequest) -> ExecResult:
        prompt = self.prompt(request)
        if not prompt:
            raise ValueError(f"<{request.tag}> needs a prompt (text) to draw")
        image = self.predictor.generate([prompt], self.sampling, task=self.gen_task)[0]
        return ExecResult(images=[image], info={"prompt": prompt})


class ModelLayout(ModelT2I):
    """Text-to-image from a layout prompt: each phrase followed by its box as text."""

    name, tag = "model_layout", "layout"

    def prompt(self, request: ExecRequest) -> str:
        parts = request.parts or (request.text, *request.boxes)
        return " ".join(p if isinstance(p, str) else format_box(p) for p in parts).strip()


class ModelEdit:
    name, tag = "model_edit", "edit"

    def __init__(self, predictor, sampling: SamplingConfig | None = None, edit_task: str = "edit"):
        self.predictor, self.sampling, self.edit_task = predictor, sampling or SamplingConfig(), edit_task

    def __call__(self, request: ExecRequest) -> ExecResult:
        image = request.need_image()
        if not request.text:
            raise ValueError(f"<{request.tag}> needs an instruction (text)")
        edited = self.predictor.generate([request.text], self.sampling, images=image,
                                         task=self.edit_task)[0]
        return ExecResult(images=[edited])


def background_colour(image: np.ndarray) -> tuple[int, int, int]:
    """The image's most common RGB colour (ties: the smallest packed value)."""
    rgb = np.asarray(image, dtype=np.uint32).reshape(-1, 3)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    v = int(values[counts.argmax()])
    return (v >> 16) & 255, (v >> 8) & 255, v & 255


def box_mask(image: np.ndarray, boxes: Sequence[Box], tolerance: int = 16) -> np.ndarray:
    """uint8 (H, W) mask, 255 where a pixel lies inside a box and some channel differs from
    the background colour by more than `tolerance`, else 0."""
    image = np.asarray(image)
    bg = np.array(background_colour(image), dtype=np.int16)
    differs = (np.abs(image.astype(np.int16) - bg).max(axis=2) > tolerance)
    inside = box_pixels(boxes, *image.shape[:2])
    return np.where(differs & inside, 255, 0).astype(np.uint8)


class BoxSegmenter:
    """Referring segmentation from a box: see `box_mask`."""

    name, tag = "box_seg", "seg"

    def __init__(self, tolerance: int = 16):
        if not 0 <= tolerance < 255:
            raise ExecutorError(f"box_seg: tolerance {tolerance} must be in [0, 255)")
        self.tolerance = tolerance

    def __call__(self, request: ExecRequest) -> ExecResult:
        image, boxes = request.need_image(), request.need_boxes()
        mask = box_mask(image, boxes, self.tolerance)
        n = int((mask > 0).sum())
        return ExecResult(masks=[mask], text=f"{n} pixels",
                          info={"pixels": n, "background": list(background_colour(image))})


def write_mask_png(mask: np.ndarray, path: str | Path) -> Path:
    """A mask as a greyscale PNG (0 = background, 255 = object); returns the path."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"a mask is HxW uint8, got {mask.dtype} {mask.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)  # 2-D uint8 -> mode "L"
    return path


# ---------------------------------------------------------------- factories (config names)


def model_t2i(context: ExecContext, sampling: dict | None = None, task: str = "t2i") -> ModelT2I:
    return ModelT2I(need_predictor(context, "model_t2i"), sampling_config(sampling, "model_t2i"), task)


def model_layout(context: ExecContext, sampling: dict | None = None,
                 task: str | None = None) -> ModelLayout:
    """Factory: layout spans drawn by the model's own `layout` task when it was trained on one
    (its tokenizer has the <layout> marker), else by its t2i; `task` chooses explicitly."""
    predictor = need_predictor(context, "model_layout")
    if task is None:
        known = getattr(getattr(getattr(predictor, "encoder", None), "special", None), "tasks", {})
        task = "layout" if "layout" in known else "t2i"
    return ModelLayout(predictor, sampling_config(sampling, "model_layout"), task)


def model_edit(context: ExecContext, sampling: dict | None = None, task: str = "edit") -> ModelEdit:
    return ModelEdit(need_predictor(context, "model_edit"), sampling_config(sampling, "model_edit"), task)


def box_seg(context: ExecContext, tolerance: int = 16) -> BoxSegmenter:
    return BoxSegmenter(tolerance)
