"""Executors backed by `diffusers` pipelines saved in a local directory (an optional extra).

    executors:
      t2i:  {use: diffusers_t2i, model_dir: /models/sd-turbo, steps: 2, guidance_scale: 0.0}
      edit: {use: diffusers_edit, model_dir: /models/instruct-pix2pix, steps: 20}

`DiffusersT2I` loads `DiffusionPipeline.from_pretrained(model_dir)` (the pipeline class its
model_index.json names) and calls it with the span's text. `DiffusersEdit` loads an
image-conditioned pipeline (InstructPix2Pix, or image-to-image: `pipeline_class:
AutoPipelineForImage2Image` turns a text-to-image checkpoint into one) and calls it with the
span's text and the conversation's latest image; with boxes in the span, the result is
composited so that pixels outside the boxes stay the input's own (as the box-grounded editor
does). Pipelines load on first use, from local files only (no hub download), and
`call_kwargs` passes anything else a pipeline takes (negative_prompt, strength,
image_guidance_scale, ...).

diffusers is imported only here and only when such an executor is built, so utamoe works
without it; building one without it installed says how to install it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from utamoe.hf.local import RemoteCodeRefused, pretrained
from utamoe.tasks_exec.executors import ExecContext, ExecRequest, ExecResult, ExecutorError
from utamoe.tasks_exec.regions import composite
from utamoe.vision.processor import to_rgb

INSTALL_HINT = "pip install 'utamoe[diffusers]' (or: pip install diffusers)"


def _diffusers():
    """The diffusers module, or an error that says how to install it."""
    try:
        import diffusers
    except ImportError as err:
        raise ExecutorError(f"the diffusers executors need the optional 'diffusers' package, "
                            f"which is not installed ({err}); {INSTALL_HINT}") from err
    return diffusers


class _DiffusersExecutor:
    """Shared loading and calling; subclasses say what goes into the pipeline."""

    name = tag = ""

    def __init__(self, model_dir: str | Path | None = None, steps: int = 25,
                 guidance_scale: float | None = None, seed: int = 0, device: str = "cpu",
                 pipeline_class: str | None = None, call_kwargs: dict[str, Any] | None = None,
                 pipeline=None):
        if pipeline is None:
            if model_dir is None or not Path(model_dir).is_dir():
                raise ExecutorError(f"{self.name}: model_dir {model_dir} is not a directory; give "
                                    "a local directory a diffusers pipeline was saved to "
                                    "(save_pretrained / a downloaded checkpoint)")
            _diffusers()  # fail at build time, not at the first span
        if steps < 1:
            raise ExecutorError(f"{self.name}: steps {steps} must be >= 1")
        self.model_dir, self.steps, self.guidance_scale = model_dir, steps, guidance_scale
        self.seed, self.device, self.pipeline_class = seed, device, pipeline_class
        self.call_kwargs = dict(call_kwargs or {})
        self._pipe = pipeline

    @property
    def pipeline(self):
        if self._pipe is None:
            d = _diffusers()
            cls = d.DiffusionPipeline
            if self.pipeline_class:
                cls = getattr(d, self.pipeline_class, None)
                if cls is None:
                    raise ExecutorError(f"{self.name}: diffusers has no {self.pipeline_class!r}")
            try:
                pipe = pretrained(cls, self.model_dir, f"{self.name}: model_dir")
            except RemoteCodeRefused as err:
                raise ExecutorError(str(err)) from None
            pipe = pipe.to(self.device)
            if hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
        return self._pipe

    def _call(self, **inputs) -> list[np.ndarray]:
        import torch

        kwargs = {"num_inference_steps": self.steps, **inputs, **self.call_kwargs}
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = self.guidance_scale
        kwargs["generator"] = torch.Generator(self.device).manual_seed(self.seed)
        out = self.pipeline(**kwargs)
        images = out.images if hasattr(out, "images") else out[0]
        return [_uint8(img) for img in images]


def _uint8(img) -> np.ndarray:
    """A pipeline's image (PIL, or float array in [0, 1]) as HxWx3 uint8."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    return to_rgb(arr)


class DiffusersT2I(_DiffusersExecutor):
    name, tag = "diffusers_t2i", "t2i"

    def __init__(self, *args, height: int | None = None, width: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.height, self.width = height, width

    def __call__(self, request: ExecRequest) -> ExecResult:
        if not request.text:
            raise ValueError(f"<{request.tag}> needs a prompt (text) to draw")
        size = {k: v for k, v in (("height", self.height), ("width", self.width)) if v}
        return ExecResult(images=self._call(prompt=request.text, **size)[:1],
                          info={"pipeline": type(self.pipeline).__name__})


class DiffusersEdit(_DiffusersExecutor):
    """Instruction editing; `size` is the side the input is resized to for the pipeline
    (default: its own size rounded down to a multiple of 8, which latent pipelines need)."""

    name, tag = "diffusers_edit", "edit"

    def __init__(self, *args, size: int | None = None, keep_outside_boxes: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.size, self.keep_outside_boxes = size, keep_outside_boxes

    def __call__(self, request: ExecRequest) -> ExecResult:
        from PIL import Image

        image = request.need_image()
        if not request.text:
            raise ValueError(f"<{request.tag}> needs an instruction (text)")
        h, w = image.shape[:2]
        side = (self.size, self.size) if self.size else (max(8, h // 8 * 8), max(8, w // 8 * 8))
        pil = Image.fromarray(to_rgb(image, side))
        edited = to_rgb(self._call(prompt=request.text, image=pil)[0], (h, w))
        grounded = bool(request.boxes) and self.keep_outside_boxes
        if grounded:
            edited = composite(image, edited, request.boxes)
        return ExecResult(images=[edited], info={"pipeline": type(self.pipeline).__name__,
                                                 "grounded": grounded})


def diffusers_t2i(context: ExecContext, model_dir: str | None = None, **options) -> DiffusersT2I:
    options.setdefault("device", context.device)
    return DiffusersT2I(model_dir, **options)


def diffusers_edit(context: ExecContext, model_dir: str | None = None, **options) -> DiffusersEdit:
    options.setdefault("device", context.device)
    return DiffusersEdit(model_dir, **options)
