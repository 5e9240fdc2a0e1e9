"""ShapesWorld as a benchmark that other parts recognise: is this dataset ShapesWorld, and
what ShapesWorld-specific help exists for it.

Generic code (training, the codec trainer, evaluation) never imports the scene parser
directly; it asks here whether a dataset is ShapesWorld (`world_config_of`, from the
manifest that `write_dataset` writes) and, only then, uses what this module offers:
codec training renders that cover every colour-shape pair, and a parse-agreement
check for reconstructed images.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from utamoe.data.shapes.world import ShapesWorldConfig

BENCHMARK = "shapesworld"  # the name tasks key their ShapesWorld scorers by (utamoe.tasks)
GENERATOR = "utamoe.data.shapes"


def world_config_of(data_dir: str | os.PathLike) -> ShapesWorldConfig | None:
    """The ShapesWorld config a dataset was generated with (from its manifest), or None for
    any other data."""
    from utamoe.data.formats import read_manifest

    manifest = read_manifest(data_dir)
    config = manifest.get("config")
    if not str(manifest.get("generator", "")).startswith(GENERATOR) or not isinstance(config, dict):
        return None
    return ShapesWorldConfig.from_dict(config)


def renders(n: int, world: ShapesWorldConfig | None = None, seed: int = 0,
            all_combos: bool = True) -> list[np.ndarray]:
    """`n` random ShapesWorld renders. With `all_combos` the held-out colour-shape pairs
    are drawn too: the tokenizer is a codec, and a codec that never saw a red triangle
    cannot write one, which would cap compositional generation before the model is tried."""
    from utamoe.data.shapes.render import render
    from utamoe.data.shapes.world import sample_scene

    world = world or ShapesWorldConfig()
    combos = world.all_combos() if all_combos else world.allowed_combos()
    rng = np.random.default_rng(seed)
    return [render(sample_scene(rng, world, combos), world) for _ in range(n)]


def parse_agreement(world: ShapesWorldConfig) -> Callable[[np.ndarray, np.ndarray], bool]:
    """A check for codec evaluation: does a reconstruction parse to the original's scene?"""
    from utamoe.data.shapes.parse import parse_image

    def agree(original: np.ndarray, reconstruction: np.ndarray) -> bool:
        return parse_image(reconstruction, world) == parse_image(original, world)

    return agree
