"""The benchmark registry: what a benchmark's datasets offer beyond the samples themselves.

A dataset may be a benchmark's (its manifest, `dataset.json`, names the generator that wrote
it). Generic code (evaluation, training, the codec trainer) never imports a benchmark; it asks
here which benchmark a manifest belongs to and uses what that benchmark registered:

    scorers          task -> the benchmark's own scorer for its data (e.g. a scene parser that
                     reads generated images exactly), used instead of the task's generic one
    note             how its data is scored, in words (evaluation reports print it)
    codec_images     (config, n, seed) -> n images to train the VQ codec on (renders that cover
                     what the codec must be able to write)
    codec_agreement  (config) -> check(original, reconstruction) -> bool, for codec evaluation
    stream_sample    (config, task, index) -> a fresh training sample (`data.stream`)
    stream_tasks     (config) -> the tasks it can stream
    extra_questions  (sample, config, rng, k[, kinds]) -> up to k more (question, answer) pairs
                     about the sample's image (`train.extra_questions`); `kinds` weighs the
                     benchmark's own question kinds (`train.extra_question_kinds`)
    scene_text       (sample, config) -> the sample as a text-only question (its scene written
                     before the question, the image blank), None where it has no scene
                     (`train.text_scene_questions`)

Every hook is optional. ShapesWorld is the built-in benchmark (utamoe.shapes.benchmark),
loaded by name like a plug-in; another package adds one with `register_benchmark` or an entry
point of the group `utamoe.benchmarks` (utamoe.plugins).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from utamoe import plugins
from utamoe.config import ConfigError

ENTRY_POINT_GROUP = "utamoe.benchmarks"
BUILTIN = {"shapesworld": "utamoe.shapes.benchmark:SHAPESWORLD"}


@dataclass(frozen=True)
class Benchmark:
    name: str
    generators: tuple[str, ...]  # a manifest whose "generator" starts with one of these is ours
    read_config: Callable[[dict], Any]  # the manifest's "config" -> the generator's config
    scorers: Mapping[str, Callable | str] = field(default_factory=dict)
    note: str = ""
    codec_images: Callable | None = None
    codec_agreement: Callable | None = None
    stream_sample: Callable | None = None
    stream_tasks: Callable | None = None
    extra_questions: Callable | None = None
    scene_text: Callable | None = None

    def on(self, config) -> BenchmarkData:
        """This benchmark with the config its data was generated with."""
        return BenchmarkData(self, config)


@dataclass(frozen=True)
class BenchmarkData:
    """The benchmark a dataset belongs to and the config its generator wrote: the hooks bound to
    that config (see the module docstring)."""

    benchmark: Benchmark
    config: Any

    @property
    def name(self) -> str:
        return self.benchmark.name

    def offers(self, hook: str) -> bool:
        return getattr(self.benchmark, hook) is not None

    def codec_images(self, n: int, seed: int = 0) -> list:
        return self.benchmark.codec_images(self.config, n, seed)

    def codec_agreement(self) -> Callable:
        return self.benchmark.codec_agreement(self.config)

    def stream_sample(self, task: str, index: int):
        return self.benchmark.stream_sample(self.config, task, index)

    def stream_tasks(self) -> tuple[str, ...]:
        return tuple(self.benchmark.stream_tasks(self.config))

    def extra_questions(self, sample, rng, k: int, kinds: dict | None = None) -> list[tuple[str, str]]:
        if kinds:  # only passed when set, so a hook without the argument keeps working
            return self.benchmark.extra_questions(sample, self.config, rng, k, kinds)
        return self.benchmark.extra_questions(sample, self.config, rng, k)

    def scene_text(self, sample):
        return self.benchmark.scene_text(sample, self.config)


_REGISTRY: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark, replace: bool = False) -> Benchmark:
    if benchmark.name in _REGISTRY and not replace:
        raise ConfigError(f"benchmark {benchmark.name!r} is already registered; pass replace=True")
    _REGISTRY[benchmark.name] = benchmark
    return benchmark


def _discover() -> None:
    plugins.discover(ENTRY_POINT_GROUP, lambda name, b: register_benchmark(b), _REGISTRY, BUILTIN)


def benchmarks() -> list[Benchmark]:
    """Every registered benchmark (the built-in one and plug-ins' included)."""
    _discover()
    return list(_REGISTRY.values())


def get_benchmark(name: str) -> Benchmark:
    if name not in _REGISTRY:
        _discover()
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        raise ConfigError(f"unknown benchmark {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint
                                                           else "")
                          + f"; registered: {', '.join(_REGISTRY) or 'none'}")
    return _REGISTRY[name]


def benchmark_of_manifest(manifest: Mapping[str, Any]) -> BenchmarkData | None:
    """The benchmark whose generator wrote a dataset (from its manifest), with its config; None
    for any other data."""
    generator, config = str(manifest.get("generator", "")), manifest.get("config")
    if not generator or not isinstance(config, dict):
        return None
    for b in benchmarks():
        if any(generator.startswith(g) for g in b.generators):
            return b.on(b.read_config(config))
    return None
