"""ShapesWorld as a benchmark the rest of utamoe finds through the registry (utamoe.benchmarks),
never by importing this package: its datasets are recognised by their manifest, and it offers

    scorers          the scene-parser scorers of its tasks (utamoe.shapes.scorers)
    codec_images     renders covering every colour-shape pair, held-out ones included, for the
                     VQ codec (a codec that never saw a red triangle cannot write one, which
                     would cap compositional generation before the model is tried)
    codec_agreement  does a reconstruction parse back to the original's scene?
    stream_sample    fresh train-distribution samples from the generator (`data.stream`)
    extra_questions  more POPE / VQA questions about a sample's scene (`train.extra_questions`)
    scene_text       a POPE / VQA sample as a text-only question: the scene described before
                     the question, the image blank (`train.text_scene_questions`)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from utamoe.benchmarks import Benchmark
from utamoe.data.formats import Sample
from utamoe.shapes.parse import parse_image
from utamoe.shapes.questions import extra_questions, text_scene_sample
from utamoe.shapes.render import render
from utamoe.shapes.tasks import make_sample
from utamoe.shapes.world import BENCHMARK, GENERATOR, ShapesWorldConfig, sample_scene

_SCORERS = "utamoe.shapes.scorers"


def renders(n: int, world: ShapesWorldConfig | None = None, seed: int = 0,
            all_combos: bool = True) -> list[np.ndarray]:
    """`n` random ShapesWorld renders; with `all_combos` the held-out colour-shape pairs too."""
    world = world or ShapesWorldConfig()
    combos = world.all_combos() if all_combos else world.allowed_combos()
    rng = np.random.default_rng(seed)
    return [render(sample_scene(rng, world, combos), world) for _ in range(n)]


def parse_agreement(world: ShapesWorldConfig) -> Callable[[np.ndarray, np.ndarray], bool]:
    """A check for codec evaluation: does a reconstruction parse to the original's scene?"""

    def agree(original: np.ndarray, reconstruction: np.ndarray) -> bool:
        return parse_image(reconstruction, world) == parse_image(original, world)

    return agree


def stream_sample(world: ShapesWorldConfig, task: str, index: int) -> Sample:
    """Sample `index` of `task` from the generator's train distribution."""
    return make_sample(world, "train", task, index)


SHAPESWORLD = Benchmark(
    name=BENCHMARK,
    generators=(GENERATOR,),
    read_config=ShapesWorldConfig.from_dict,
    scorers={task: f"{_SCORERS}:{name}" for task, name in (
        ("caption", "caption_shapes"), ("t2i", "t2i_shapes"), ("edit", "edit_shapes"),
        ("reason_edit", "reason_edit_shapes"), ("layout", "layout_shapes"))},
    note="ShapesWorld data: its scene-parser scorers where a task has one",
    codec_images=lambda world, n, seed: renders(n, world, seed=seed),
    codec_agreement=parse_agreement,
    stream_sample=stream_sample,
    stream_tasks=lambda world: tuple(world.tasks),
    extra_questions=extra_questions,
    scene_text=text_scene_sample,
)
