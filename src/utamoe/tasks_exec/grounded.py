"""The box-grounded editor: regenerate only the image codes inside a box, keep the rest.

`<edit>make it blue<box>[0.35,0.02,0.65,0.31]</box></edit>` asks for a change inside the box
and none outside. The unified model edits by generating a new code grid in raster order
after the edit prefix `<bos> <edit> <img> input codes </img> instruction <img>`
(utamoe.data.sequences). The editor gives the predictor that request with a per-cell
constraint (utamoe.infer.engine.CellConstraint): a grid cell outside every box is not
sampled, its code is the input image's and is fed back, so the model conditions on the
unchanged surroundings when it fills the box; with the same prefix, KV cache, guidance and
draws as the model's own edit otherwise.
Decoding the grid still changes pixels outside the box a little (the decoder mixes
neighbouring cells, and the input was resized to the model's resolution), so the edited
pixels are composited into the input image: every pixel outside the boxes is the input's
own pixel, bit for bit, at the input's own size.

With no box in the span the editor is the model's whole-image edit.
"""

from __future__ import annotations

from utamoe.infer.engine import CellConstraint
from utamoe.infer.sampling import SamplingConfig
from utamoe.tasks_exec.executors import (
    ExecContext,
    ExecRequest,
    ExecResult,
    need_predictor,
    sampling_config,
)
from utamoe.tasks_exec.regions import box_cells, composite


class BoxEditor:
    """The unified model's edit, confined to the span's boxes (see the module docstring)."""

    name = "box_edit"
    tag = "edit"

    def __init__(self, predictor, sampling: SamplingConfig | None = None, task: str = "edit"):
        self.predictor, self.sampling, self.edit_task = predictor, sampling or SamplingConfig(), task

    def __call__(self, request: ExecRequest) -> ExecResult:
        image = request.need_image()
        if not request.text:
            raise ValueError(f"<{request.tag}> needs an instruction (text) to edit the box with")
        if not request.boxes:
            edited = self.predictor.generate([request.text], self.sampling, images=image,
                                             task=self.edit_task)[0]
            return ExecResult(images=[edited], info={"grounded": False})
        p = self.predictor
        free = box_cells(request.boxes, p.code_grid)
        codes_in = p.image_codes(image)
        req = p.request(self.edit_task, request.text, image, self.sampling, input_codes=codes_in,
                        constraint=CellConstraint(free, codes_in))
        (result,) = p.run([req])
        out = composite(image, result.image, request.boxes)
        changed = [i for i, (a, b) in enumerate(zip(result.codes, codes_in)) if a != b]
        return ExecResult(images=[out], info={
            "grounded": True, "regenerated_cells": int(free.sum()), "changed_cells": changed,
            "codes": list(result.codes), "input_codes": list(codes_in)})


def box_edit(context: ExecContext, sampling: dict | None = None, task: str = "edit") -> BoxEditor:
    """Factory: the box-grounded editor on the context's predictor; `sampling` holds
    SamplingConfig fields (temperature, top_k, cfg_scale, seed)."""
    return BoxEditor(need_predictor(context, "box_edit"), sampling_config(sampling, "box_edit"), task)
