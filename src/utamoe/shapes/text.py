"""The canonical ShapesWorld text grammar: how scenes, references, edits and boxes are
written, and the parsers that read prompts back into specs.

One grammar on both sides keeps the vocabulary tiny (a CPU model learns it in
minutes) and makes every generation prompt machine-checkable: a t2i prompt parses
back into the exact scene it asks for, an edit instruction into an `EditOp`.

    object      := SIZE COLOR SHAPE                      "small red circle"
    located     := "a" object "at" ROW COL               "a small red circle at top left"
    description := located (" and " located)*            objects in reading order
    reference   := "the" [SIZE] [COLOR] (SHAPE|"object") ["at" ROW COL]
    box         := "[x0,y0,x1,y1]"  utamoe.text.boxes (the one box grammar)

docs/shapesworld.md lists every prompt template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from utamoe.shapes.world import (
    COLS,
    ROWS,
    SIZES,
    Scene,
    SceneObject,
    ShapesWorldConfig,
)

T2I_PREFIX = "draw "
EDIT_KINDS = ("recolor", "remove", "move", "add")


class PromptError(ValueError):
    """A prompt or instruction does not follow the ShapesWorld grammar (or is ambiguous)."""


def clean(text: str) -> str:
    """Lowercase, single spaces, no trailing punctuation: the form the grammar parses."""
    return " ".join(text.lower().replace(",", " , ").split()).strip(" .!?").replace(" ,", ",")


def object_phrase(obj: SceneObject) -> str:
    return f"{obj.size} {obj.color} {obj.shape}"


def located_phrase(obj: SceneObject) -> str:
    return f"a {object_phrase(obj)} at {obj.position}"


def describe(scene: Scene) -> str:
    """The canonical description (caption target, t2i prompt body) of a scene."""
    return " and ".join(located_phrase(o) for o in scene)


def t2i_prompt(scene: Scene) -> str:
    return T2I_PREFIX + describe(scene)


def _alternation(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _located_re(config: ShapesWorldConfig) -> re.Pattern[str]:
    return re.compile(
        rf"^(?:an? )?({_alternation(SIZES)}) ({_alternation(config.color_names)}) "
        rf"({_alternation(config.shapes)}) at ({_alternation(ROWS)}) ({_alternation(COLS)})$"
    )


def parse_located(phrase: str, config: ShapesWorldConfig | None = None) -> SceneObject | None:
    """'a small red circle at top left' -> SceneObject, or None if it is not one."""
    m = _located_re(config or ShapesWorldConfig()).match(clean(phrase))
    if not m:
        return None
    size, color, shape, row, col = m.groups()
    return SceneObject(shape, color, size, ROWS.index(row), COLS.index(col))


def split_description(text: str) -> list[str]:
    """The object phrases of a description ('and' or commas between them)."""
    parts = re.split(r"\s*(?:,|\band\b)\s*", clean(text))
    return [p for p in parts if p]


def parse_description(text: str, config: ShapesWorldConfig | None = None) -> Scene:
    """A description (or a t2i prompt, with or without 'draw') -> the Scene it specifies."""
    config = config or ShapesWorldConfig()
    body = clean(text)
    if body.startswith(T2I_PREFIX):
        body = body[len(T2I_PREFIX):]
    objs = []
    for phrase in split_description(body):
        obj = parse_located(phrase, config)
        if obj is None:
            raise PromptError(f"cannot read '{phrase}' in '{text}': expected "
                              "'a <size> <color> <shape> at <row> <column>'")
        objs.append(obj)
    if not objs:
        raise PromptError(f"'{text}' describes no object")
    try:
        return Scene(tuple(objs))
    except ValueError as e:
        raise PromptError(f"'{text}' is not a valid scene: {e}") from e


# ---------------------------------------------------------------- references

# Attribute sets tried in order: the first that singles the object out is used.
REFERENCE_ORDER: tuple[tuple[str, ...], ...] = (
    ("color", "shape"),
    ("size", "color", "shape"),
    ("color", "shape", "position"),
    ("size", "color", "shape", "position"),
)


def _matches(obj: SceneObject, attrs: dict[str, object]) -> bool:
    return all(getattr(obj, k) == v for k, v in attrs.items())


def refer(scene: Scene, obj: SceneObject, exclude: str | None = None,
          allow_position: bool = True) -> str | None:
    """The shortest canonical reference ('the red circle') that picks `obj` alone out of
    `scene`, never using attribute `exclude` (the one a question asks about). None if
    no reference works (e.g. two identical objects and positions not allowed)."""
    for names in _reference_orders(exclude):
        if "position" in names and not allow_position:
            continue
        attrs = {n: getattr(obj, n) for n in names}
        if sum(_matches(o, attrs) for o in scene) == 1:
            return _reference_text(attrs)
    return None


def _reference_orders(exclude: str | None) -> list[tuple[str, ...]]:
    orders = []
    for names in REFERENCE_ORDER:
        kept = tuple(n for n in names if n != exclude)
        if kept not in orders:
            orders.append(kept)
    if exclude == "shape":  # "the object at top left" needs no colour either
        orders.insert(2, ("position",))
    return orders


def _reference_text(attrs: dict[str, object]) -> str:
    words = ["the"]
    for key in ("size", "color"):
        if key in attrs:
            words.append(str(attrs[key]))
    words.append(str(attrs.get("shape", "object")))
    if "position" in attrs:
        words += ["at", str(attrs["position"])]
    return " ".join(words)


def _reference_re(config: ShapesWorldConfig) -> re.Pattern[str]:
    return re.compile(
        rf"^(?:the )?(?:({_alternation(SIZES)}) )?(?:({_alternation(config.color_names)}) )?"
        rf"({_alternation(config.shapes)}|object)"
        rf"(?: at ({_alternation(ROWS)}) ({_alternation(COLS)}))?$"
    )


def resolve(reference: str, scene: Scene, config: ShapesWorldConfig | None = None,
            ) -> SceneObject:
    """The one object of `scene` that `reference` names; PromptError if none or several."""
    m = _reference_re(config or ShapesWorldConfig()).match(clean(reference))
    if not m:
        raise PromptError(f"cannot read reference '{reference}': expected "
                          "'the [size] [color] <shape|object> [at <row> <column>]'")
    size, color, shape, row, col = m.groups()
    attrs: dict[str, object] = {}
    if size:
        attrs["size"] = size
    if color:
        attrs["color"] = color
    if shape != "object":
        attrs["shape"] = shape
    if row:
        attrs["position"] = f"{row} {col}"
    found = [o for o in scene if _matches(o, attrs)]
    if len(found) != 1:
        raise PromptError(f"'{reference}' names {len(found)} objects in the scene, not one")
    return found[0]


# ---------------------------------------------------------------- edits


@dataclass(frozen=True)
class EditOp:
    """One edit. `obj` is the object acted on (for add: the new object); `color` is the new
    colour (recolor); `cell` the destination (move)."""

    kind: str
    obj: SceneObject
    color: str | None = None
    cell: tuple[int, int] | None = None


def apply_edit(scene: Scene, op: EditOp) -> Scene:
    """The scene after the edit; ValueError if the edit cannot apply to this scene."""
    others = tuple(o for o in scene if o != op.obj)
    o = op.obj
    if op.kind == "add":
        if scene.at(o.row, o.col) is not None:
            raise ValueError(f"cannot add at {o.position}: the cell is taken")
        return Scene((*scene.objects, o))
    if o not in scene.objects:
        raise ValueError(f"{o.key()} is not in the scene")
    if op.kind == "remove":
        return Scene(others)
    if op.kind == "recolor":
        return Scene((*others, SceneObject(o.shape, str(op.color), o.size, o.row, o.col)))
    if op.kind == "move":
        row, col = op.cell or (-1, -1)
        if scene.at(row, col) is not None:
            raise ValueError("cannot move onto an occupied cell")
        return Scene((*others, SceneObject(o.shape, o.color, o.size, row, col)))
    raise ValueError(f"unknown edit kind '{op.kind}'; use one of {EDIT_KINDS}")


def edit_instruction(scene: Scene, op: EditOp) -> str:
    """The canonical instruction for `op` on `scene` (references are minimal, unique)."""
    if op.kind == "add":
        return f"add {located_phrase(op.obj)}"
    ref = refer(scene, op.obj)
    if ref is None:  # cannot happen: a reference with position is always unique
        raise ValueError(f"no unique reference for {op.obj.key()}")
    return edit_text(ref, op)


def edit_text(phrase: str, op: EditOp) -> str:
    """The instruction of a remove / recolor / move edit of the object `phrase` names."""
    if op.kind == "remove":
        return f"remove {phrase}"
    if op.kind == "recolor":
        return f"make {phrase} {op.color}"
    row, col = op.cell or (0, 0)
    return f"move {phrase} to {ROWS[row]} {COLS[col]}"


def parse_edit(text: str, scene: Scene, config: ShapesWorldConfig | None = None) -> EditOp:
    """An instruction, read against the source scene it applies to -> EditOp."""
    config = config or ShapesWorldConfig()
    t = clean(text)
    colors, rows, cols = (_alternation(x) for x in (config.color_names, ROWS, COLS))
    if t.startswith("add "):
        obj = parse_located(t[4:], config)
        if obj is None:
            raise PromptError(f"cannot read '{text}': expected 'add a <size> <color> <shape> "
                              "at <row> <column>'")
        return EditOp("add", obj)
    if t.startswith("remove "):
        return EditOp("remove", resolve(t[7:], scene, config))
    m = re.match(rf"^make (.+) ({colors})$", t)
    if m:
        return EditOp("recolor", resolve(m.group(1), scene, config), color=m.group(2))
    m = re.match(rf"^move (.+) to ({rows}) ({cols})$", t)
    if m:
        cell = (ROWS.index(m.group(2)), COLS.index(m.group(3)))
        return EditOp("move", resolve(m.group(1), scene, config), cell=cell)
    raise PromptError(f"cannot read edit '{text}': expected 'add ...', 'remove the ...', "
                      "'make the ... <color>' or 'move the ... to <row> <column>'")
