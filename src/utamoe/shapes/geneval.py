"""GenEval-style scoring of generated ShapesWorld images, and of edits.

A generated image is parsed back into a scene (utamoe.shapes.parse) and
compared with the scene its prompt asks for, facet by facet, the way GenEval
checks object presence, counting, colours and positions with a detector:

    object    every requested shape is there (as many of each as asked, or more)
    count     exactly as many objects as requested
    color     every requested (shape, colour) pair is there
    size      every requested (shape, size) pair is there
    position  every requested shape is in its requested cell
    correct_all  the parsed scene is exactly the requested one: all of the above,
                 no extra object, nothing the parser could not recognise

Edits are scored the same way against the scene the instruction should produce
from the source image, plus PSNR and SSIM against the ground-truth target image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utamoe.eval.scorers import PSNR_CAP
from utamoe.shapes.parse import parse_image, to_rgb_array
from utamoe.shapes.text import PromptError, apply_edit, parse_description, parse_edit
from utamoe.shapes.world import Scene, ShapesWorldConfig

FACETS = ("object", "count", "color", "size", "position")


@dataclass
class GenerationScore:
    """Facet verdicts for one image; `expected`/`parsed` show why; `error` says why not
    scored (an unreadable prompt or instruction scores False everywhere)."""

    facets: dict[str, bool]
    correct_all: bool
    expected: Scene | None = None
    parsed: Scene | None = None
    error: str | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {**{k: float(v) for k, v in self.facets.items()},
                "correct_all": float(self.correct_all), **self.extra}


def compare_scenes(expected: Scene, parsed: Scene) -> dict[str, bool]:
    """The facet verdicts of `parsed` against `expected` (see module docstring)."""

    def covers(attrs: tuple[str, ...]) -> bool:
        want = Counter(tuple(getattr(o, a) for a in attrs) for o in expected)
        have = Counter(tuple(getattr(o, a) for a in attrs) for o in parsed)
        return not (want - have)

    return {"object": covers(("shape",)), "count": len(parsed) == len(expected),
            "color": covers(("shape", "color")), "size": covers(("shape", "size")),
            "position": covers(("shape", "row", "col"))}


def failed_score(error: str, expected: Scene | None = None) -> GenerationScore:
    """A score that fails every facet, with the reason (no image, unreadable prompt)."""
    return GenerationScore({f: False for f in FACETS}, False, expected, None, error)


def score_generation(spec: Scene | str, image, config: ShapesWorldConfig | None = None,
                     ) -> GenerationScore:
    """Score a generated image against its prompt (a t2i prompt string) or a Scene."""
    config = config or ShapesWorldConfig()
    if isinstance(spec, str):
        try:
            spec = parse_description(spec, config)
        except PromptError as e:
            return failed_score(str(e))
    parsed = parse_image(image, config)
    return GenerationScore(compare_scenes(spec, parsed), parsed == spec, spec, parsed)


def image_similarity(output, target, config: ShapesWorldConfig | None = None,
                     ) -> dict[str, float]:
    """PSNR (dB, capped at PSNR_CAP) and SSIM of `output` against `target` (scikit-image),
    both at the world's image size."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    size = (config or ShapesWorldConfig()).image_size
    out = to_rgb_array(output, size).astype(np.uint8)
    ref = to_rgb_array(target, size).astype(np.uint8)
    same = np.array_equal(ref, out)  # skimage divides by a zero error here
    psnr = PSNR_CAP if same else float(peak_signal_noise_ratio(ref, out, data_range=255))
    ssim = float(structural_similarity(ref, out, channel_axis=2, data_range=255))
    return {"psnr": min(psnr, PSNR_CAP), "ssim": ssim}


def score_edit(instruction: str, output, *, source_image=None, source_scene: Scene | None = None,
               target_image=None, config: ShapesWorldConfig | None = None) -> GenerationScore:
    """Score an edited image: the instruction is read against the source scene (given, or
    parsed from `source_image`), applied, and the result compared with the parse of
    `output`; with `target_image`, PSNR and SSIM against it land in `extra`."""
    config = config or ShapesWorldConfig()
    if source_scene is None:
        if source_image is None:
            raise ValueError("score_edit needs source_scene or source_image")
        source_scene = parse_image(source_image, config)
    extra = image_similarity(output, target_image, config) if target_image is not None else {}
    try:
        expected = apply_edit(source_scene, parse_edit(instruction, source_scene, config))
    except (PromptError, ValueError) as e:
        score = failed_score(f"cannot apply '{instruction}': {e}")
        score.extra = extra
        return score
    parsed = parse_image(output, config)
    return GenerationScore(compare_scenes(expected, parsed), parsed == expected, expected,
                           parsed, extra=extra)


def aggregate(scores: Iterable[GenerationScore]) -> dict[str, float]:
    """Mean of every facet, correct_all and extra metric over a set of scores."""
    rows = [s.as_dict() for s in scores]
    if not rows:
        return {"n": 0}
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    out["n"] = len(rows)
    return out


def scene_from_meta(meta: Mapping[str, Any], key: str = "scene") -> Scene | None:
    """The ground-truth scene ShapesWorld stores in a sample's meta, if any."""
    items = meta.get(key)
    return Scene.from_json(items) if items else None
