"""ShapesWorld scenes: the configuration, the typed scene model, geometry and random scenes.

A scene is 1 to 3 objects on a plain dark background. Each object has a shape, a
colour, a size (small or large) and a cell of a 3x3 grid (rows top/middle/bottom,
columns left/center/right); at most one object per cell, centred in it, so objects
never overlap and a position word pins an object down exactly. Everything a task
asks about is therefore a discrete attribute that a renderer draws and a parser
reads back, which is what makes answers and generated images scorable exactly.

The configuration is data (no callables): `ShapesWorldConfig.from_dict` validates a
plain mapping (YAML/JSON) and rejects unknown keys, like every utamoe config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utamoe.config import ConfigError, from_dict, to_dict

SUPPORTED_SHAPES = ("square", "circle", "triangle")
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")

# Six colours far apart in RGB (closest pair, blue/cyan, is ~150 apart) and far from
# the dark background, so a blurry or noisy VQ reconstruction still lands nearest
# to the right one.
DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 70, 255),
    "yellow": (240, 220, 40),
    "magenta": (220, 60, 220),
    "cyan": (40, 220, 230),
}
# Colour-shape combinations kept out of train/val/test of every task (compositional
# generalisation): each colour and each shape still appears, only the pairing is new.
DEFAULT_HELDOUT = (("red", "triangle"), ("blue", "circle"), ("yellow", "square"))
DEFAULT_SIZES = {"train": 2000, "val": 200, "test": 200, "heldout": 200}
SPLITS = ("train", "val", "test", "heldout")
# The registry's built-in tasks that ShapesWorld generates (utamoe.tasks declares them).
SHAPES_TASKS = ("caption", "vqa", "pope", "grounding", "t2i", "edit")
# UnifiedMLLM's tasks (utamoe.shapes.unified): not in a config's default `tasks`, so the
# default datasets (the demo's, the tests') stay as they were; `utamoe data shapes` adds them.
UNIFIED_TASKS = ("reason_edit", "seg", "layout", "dialog")
ALL_TASKS = SHAPES_TASKS + UNIFIED_TASKS
BENCHMARK = "shapesworld"  # its name in the benchmark registry (utamoe.benchmarks)
# The `generator` its datasets' manifests carry (its historical module path, kept: datasets on
# disk carry it and are recognised by it).
GENERATOR = "utamoe.data.shapes"


@dataclass(frozen=True)
class ShapesWorldConfig:
    """Everything that defines a ShapesWorld dataset; the seed makes it reproducible.

    `sizes` counts samples *per task* in each split; `heldout` lists (colour, shape)
    pairs that only the `heldout` split contains.
    """

    image_size: int = 48
    background: tuple[int, int, int] = (20, 20, 20)
    # Plain `dict` hints (name -> [r, g, b], split -> count): utamoe.config's type check
    # cannot test parameterised dicts on every Python; __post_init__ validates them.
    colors: dict = field(default_factory=lambda: dict(DEFAULT_COLORS))
    shapes: tuple[str, ...] = SUPPORTED_SHAPES
    # Object side as a fraction of a cell: 8 px and 14 px in a 16 px cell at 48x48.
    small_frac: float = 0.5
    large_frac: float = 0.875
    min_objects: int = 1
    max_objects: int = 3
    heldout: tuple[tuple[str, str], ...] = DEFAULT_HELDOUT
    seed: int = 0
    sizes: dict = field(default_factory=lambda: dict(DEFAULT_SIZES))
    tasks: tuple[str, ...] = SHAPES_TASKS

    def __post_init__(self) -> None:
        if not isinstance(self.colors, dict) or not isinstance(self.sizes, dict):
            raise ConfigError("colors and sizes must be mappings (name: [r, g, b], split: n)")
        # Normalise YAML lists to tuples so configs compare equal however they were built.
        object.__setattr__(self, "background", _rgb(self.background, "background"))
        object.__setattr__(
            self, "colors", {str(k): _rgb(v, f"colors.{k}") for k, v in self.colors.items()}
        )
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "heldout", tuple(tuple(p) for p in self.heldout))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "sizes", {str(k): int(v) for k, v in self.sizes.items()})
        self._validate()

    def _validate(self) -> None:
        if self.image_size < 24:
            raise ConfigError(f"image_size must be >= 24 (8 px cells), got {self.image_size}")
        bad = [s for s in self.shapes if s not in SUPPORTED_SHAPES]
        if bad or not self.shapes:
            raise ConfigError(f"shapes must be a non-empty subset of {SUPPORTED_SHAPES}, got {bad}")
        if len(self.colors) < 2:
            raise ConfigError("colors needs at least 2 entries (name: [r, g, b])")
        for name in self.colors:
            if not name.isalpha() or name != name.lower():
                raise ConfigError(f"colour name '{name}' must be one lowercase word")
        if not 0.2 <= self.small_frac < self.large_frac <= 0.95:
            raise ConfigError("need 0.2 <= small_frac < large_frac <= 0.95 (fractions of a cell)")
        if not 1 <= self.min_objects <= self.max_objects <= 9:
            raise ConfigError("need 1 <= min_objects <= max_objects <= 9")
        for color, shape in self.heldout:
            if color not in self.colors or shape not in self.shapes:
                raise ConfigError(f"heldout pair ({color}, {shape}) names an unknown colour/shape")
        if len(self.allowed_combos()) == 0:
            raise ConfigError("heldout removes every colour-shape combination; keep some")
        unknown = [t for t in self.tasks if t not in ALL_TASKS]
        if unknown:
            raise ConfigError(f"ShapesWorld cannot generate tasks {unknown}; it makes "
                              f"{', '.join(ALL_TASKS)}")
        for split, n in self.sizes.items():
            if n < 0:
                raise ConfigError(f"sizes.{split} must be >= 0, got {n}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ShapesWorldConfig:
        return from_dict(cls, dict(data or {}), "shapes")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def replace(self, **changes: Any) -> ShapesWorldConfig:
        return dataclasses.replace(self, **changes)

    @property
    def color_names(self) -> tuple[str, ...]:
        return tuple(self.colors)

    def all_combos(self) -> list[tuple[str, str]]:
        return [(c, s) for c in self.colors for s in self.shapes]

    def allowed_combos(self) -> list[tuple[str, str]]:
        """(colour, shape) pairs that train/val/test may contain."""
        held = set(self.heldout)
        return [p for p in self.all_combos() if p not in held]


def _rgb(value: Sequence[int], key: str) -> tuple[int, int, int]:
    if len(value) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in value):
        raise ConfigError(f"{key} must be [r, g, b] with integers in 0..255, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


@dataclass(frozen=True)
class SceneObject:
    """One object. `box` (normalised x0, y0, x1, y1) is filled by the parser and is not
    part of equality: two objects are the same when their attributes and cell are."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    box: tuple[float, float, float, float] | None = field(default=None, compare=False)

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)

    @property
    def position(self) -> str:
        """Canonical position words, e.g. 'top left', 'middle center'."""
        return f"{ROWS[self.row]} {COLS[self.col]}"

    def key(self) -> tuple[str, str, str, int, int]:
        return (self.shape, self.color, self.size, self.row, self.col)

    def to_json(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "size": self.size,
                "row": self.row, "col": self.col}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SceneObject:
        return cls(str(d["shape"]), str(d["color"]), str(d["size"]), int(d["row"]), int(d["col"]))


@dataclass(frozen=True)
class Scene:
    """Objects in canonical reading order (row-major); at most one object per cell."""

    objects: tuple[SceneObject, ...] = ()

    def __post_init__(self) -> None:
        objs = tuple(sorted(self.objects, key=lambda o: o.cell))
        cells = [o.cell for o in objs]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell in {[o.key() for o in objs]}")
        for o in objs:
            if not (0 <= o.row < 3 and 0 <= o.col < 3):
                raise ValueError(f"cell ({o.row}, {o.col}) is outside the 3x3 grid")
        object.__setattr__(self, "objects", objs)

    def __len__(self) -> int:
        return len(self.objects)

    def __iter__(self):
        return iter(self.objects)

    def at(self, row: int, col: int) -> SceneObject | None:
        return next((o for o in self.objects if o.cell == (row, col)), None)

    def free_cells(self) -> list[tuple[int, int]]:
        used = {o.cell for o in self.objects}
        return [(r, c) for r in range(3) for c in range(3) if (r, c) not in used]

    def combos(self) -> set[tuple[str, str]]:
        return {(o.color, o.shape) for o in self.objects}

    def to_json(self) -> list[dict[str, Any]]:
        return [o.to_json() for o in self.objects]

    @classmethod
    def from_json(cls, items: Iterable[Mapping[str, Any]]) -> Scene:
        return cls(tuple(SceneObject.from_json(d) for d in items))


def validate_scene(scene: Scene, config: ShapesWorldConfig) -> None:
    """Raise ValueError if the scene uses anything the world does not define."""
    n = len(scene)
    if not config.min_objects <= n <= config.max_objects:
        raise ValueError(f"scene has {n} objects; the world allows "
                         f"{config.min_objects}..{config.max_objects}")
    for o in scene:
        if o.shape not in config.shapes or o.color not in config.colors or o.size not in SIZES:
            raise ValueError(f"object {o.key()} uses an attribute the world does not define")


# ---------------------------------------------------------------- geometry (pixels)


def cell_center(config: ShapesWorldConfig, row: int, col: int) -> tuple[float, float]:
    """(cx, cy) in pixels; cells are image_size / 3 wide (fractional when not divisible)."""
    cell = config.image_size / 3
    return ((col + 0.5) * cell, (row + 0.5) * cell)


def object_side(config: ShapesWorldConfig, size: str) -> float:
    frac = config.small_frac if size == "small" else config.large_frac
    return frac * config.image_size / 3


def object_box(obj: SceneObject, config: ShapesWorldConfig) -> tuple[float, float, float, float]:
    """The object's tight box (x0, y0, x1, y1) normalised to [0, 1] by the image size."""
    cx, cy = cell_center(config, obj.row, obj.col)
    half = object_side(config, obj.size) / 2
    s = config.image_size
    return ((cx - half) / s, (cy - half) / s, (cx + half) / s, (cy + half) / s)


# ---------------------------------------------------------------- random scenes


def sample_scene(
    rng: np.random.Generator,
    config: ShapesWorldConfig,
    combos: Sequence[tuple[str, str]],
    n_objects: int | None = None,
    must_include: Sequence[tuple[str, str]] | None = None,
) -> Scene:
    """A random scene whose (colour, shape) pairs come from `combos`; with `must_include`,
    one object (at a random cell) is drawn from those pairs instead."""
    n = n_objects or int(rng.integers(config.min_objects, config.max_objects + 1))
    cells = rng.choice(9, size=n, replace=False)
    forced = int(rng.integers(n)) if must_include else -1
    objs = []
    for i, cell in enumerate(cells):
        pool = must_include if i == forced else combos
        color, shape = pool[int(rng.integers(len(pool)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        objs.append(SceneObject(shape, color, size, int(cell) // 3, int(cell) % 3))
    return Scene(tuple(objs))
